"""Storage resource: one root URI for every artifact. Local folder by default; `s3://bucket/prefix` with an
endpoint URL, credentials from the environment (`dagster.EnvVar`), never written to metadata or logs."""

from typing import Optional

import dagster as dg

from kura.io import Storage


class StorageResource(dg.ConfigurableResource):
    """Where kura writes shards, checkpoints and manifests."""

    root: str = "/tmp/kura-storage"
    """Folder path or s3://bucket/prefix."""
    endpoint_url: Optional[str] = None
    """S3 endpoint (SeaweedFS, MinIO, a cloud region). None means AWS's default."""
    access_key_id: Optional[str] = None
    """S3 key id; pass dagster.EnvVar("AWS_ACCESS_KEY_ID"), never a literal."""
    secret_access_key: Optional[str] = None
    """S3 secret; pass dagster.EnvVar("AWS_SECRET_ACCESS_KEY"), never a literal."""
    cache_dir: Optional[str] = None
    """Local folder for staging and downloaded copies when the root is remote."""

    def get(self) -> Storage:
        return Storage(self.root, endpoint_url=self.endpoint_url, key=self.access_key_id,
                       secret=self.secret_access_key, cache_dir=self.cache_dir)
