"""Every path convention inside the storage root, in one place. Paths are relative to the root (a folder or an
s3:// prefix) unless a method says otherwise; the folders that start with `_` hold kura's bookkeeping, never an
asset's output (outputs live under `<asset key>/<content version>/`).

- `_manifests/<asset key>/<partition>.json`: the latest materialization's manifest (what downstream assets load);
- `<asset key>/_inputs/<input version>.json`: which output a given input version produced (reruns are no-ops);
- `_work/<asset>/<name>/<input version>/`: resume points of long steps (training checkpoints) between attempts;
- `_requests/synthetic/<partition>-<teacher version>.jsonl`: the durable log of finished generation requests;
- `_generation/<hash>/`, `_posttrain/<hash>/`: the request and result files of cluster generation / trial jobs;
- `_cluster_weights/<run>/<input version>/`: the final weights a cluster run's pod 0 converts and uploads;
- `data/frozen/<asset key with / as _>`: DVC-tracked frozen copies (in the repository, not the storage root).
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Sequence


class StorageLayout:
    """The one owner of kura's storage paths (see the module docstring); stateless."""

    MANIFESTS = "_manifests"
    UNPARTITIONED = "__all__"
    WORK = "_work"
    FROZEN = "data/frozen"

    def manifest(self, key_path: Sequence[str], partition: str | None = None) -> str:
        part = (partition or self.UNPARTITIONED).replace("/", "__")
        return f"{self.manifests(key_path)}/{part}.json"

    def manifests(self, key_path: Sequence[str] | str) -> str:
        key = key_path if isinstance(key_path, str) else "/".join(key_path)
        return f"{self.MANIFESTS}/{key}"

    def input_pointer(self, key: str, input_version: str) -> str:
        return f"{key}/_inputs/{input_version}.json"

    def work(self, *parts: str) -> PurePosixPath:
        """Relative to the local base the caller picks (the root when it is local, else the cache)."""
        return PurePosixPath(self.WORK, *parts)

    def request_log(self, partition: str, teacher_version: str) -> PurePosixPath:
        """Relative to the local base (append needs a file system)."""
        return PurePosixPath("_requests", "synthetic", f"{partition}-{teacher_version}.jsonl")

    def generation(self, request_hash: str) -> tuple[str, str]:
        return f"_generation/{request_hash}/request.json", f"_generation/{request_hash}/result.json"

    def posttrain(self, job_hash: str) -> str:
        return f"_posttrain/{job_hash}"

    def cluster_weights(self, run: str, input_version: str) -> str:
        return f"_cluster_weights/{run}/{input_version}"

    def frozen(self, asset_key: str) -> str:
        return f"{self.FROZEN}/{asset_key.replace('/', '_')}"


LAYOUT = StorageLayout()
