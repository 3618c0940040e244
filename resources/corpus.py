"""Corpus resource: the folder or S3 prefix of raw input files. Empty `path` means the bundled default corpus,
generated (seeded, deterministic) into `default_dir` on first use. On S3 each file is streamed to a local cache
copy (keyed by its ETag) before it is read, so readers stay plain-file streaming readers and a 2 GB shard never
has to fit in memory; credentials come from the environment (dagster.EnvVar)."""

from pathlib import Path
from typing import Optional

import dagster as dg

from kura.corpus.default import DefaultCorpusConfig, write_default_corpus
import kura.corpus.readers as readers
from kura.corpus.readers import is_supported
from kura.io import Storage


class CorpusResource(dg.ConfigurableResource):
    """The raw corpus folder or S3 prefix; one dynamic partition of `raw_corpus` per supported file in it."""

    path: str = ""
    """Folder or s3://bucket/prefix of .jsonl(.gz), .parquet, .txt, .html or .warc(.gz) files. Empty: the
    generated default corpus."""
    default_dir: str = "/tmp/kura-default-corpus"
    """Where the default corpus is generated when `path` is empty."""
    seed: int = 20241122
    """Seed of the default corpus generator."""
    n_docs: int = 3000
    """Documents in the default corpus."""
    endpoint_url: Optional[str] = None
    """S3 endpoint when `path` is on S3 (None: AWS's default)."""
    access_key_id: Optional[str] = None
    """S3 key id; pass dagster.EnvVar("AWS_ACCESS_KEY_ID"), never a literal."""
    secret_access_key: Optional[str] = None
    """S3 secret; pass dagster.EnvVar("AWS_SECRET_ACCESS_KEY"), never a literal."""
    cache_dir: Optional[str] = None
    """Local folder for the cached copies of S3 input files."""
    max_runs_in_flight: int = 200
    """corpus_files_sensor requests ingest runs until this many are queued or running (backpressure)."""

    def is_remote(self) -> bool:
        return "://" in self.path and not self.path.startswith("file://")

    def storage(self) -> Storage:
        return Storage(self.path, endpoint_url=self.endpoint_url, key=self.access_key_id,
                       secret=self.secret_access_key, cache_dir=self.cache_dir)

    def folder(self) -> Path:
        if self.is_remote():
            raise ValueError(f"corpus {self.path} is remote: use list_files() and file()")
        if self.path:
            p = Path(self.path.removeprefix("file://"))
            if not p.is_dir():
                raise FileNotFoundError(f"corpus folder {p} does not exist")
            return p
        d = Path(self.default_dir) / f"seed{self.seed}-n{self.n_docs}"
        if not (d / "_COMPLETE").exists():
            write_default_corpus(d, DefaultCorpusConfig(seed=self.seed, n_docs=self.n_docs))
            (d / "_COMPLETE").write_text("ok\n")
        return d

    def list_files(self) -> list[str]:
        """Partition keys: paths relative to the folder or prefix, sorted. Entries that cannot be read (a dangling
        link, no permission) are listed too, so that they are quarantined and counted rather than silently
        skipped."""
        if self.is_remote():
            return [k for k in self.storage().list_files() if is_supported(k.rsplit("/", 1)[-1])]
        root = self.folder()
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if not p.is_dir() and is_supported(p.name))

    def fingerprints(self) -> dict[str, str]:
        """{partition key: fingerprint} (size + mtime on a folder, ETag + size on S3): what the corpus sensor
        compares to notice a file that changed under the same name."""
        if self.is_remote():
            return {k: v for k, v in self.storage().fingerprints().items() if is_supported(k.rsplit("/", 1)[-1])}
        root = self.folder()
        out = {}
        for key in self.list_files():
            try:
                st = (root / key).stat()
                out[key] = f"{st.st_size}-{st.st_mtime_ns}"
            except OSError:  # a dangling link or no permission: quarantined at read, fingerprinted as such
                out[key] = "unreadable"
        return out

    def fingerprint(self, key: str) -> str:
        """The fingerprint of one file, as `fingerprints()` gives it."""
        if self.is_remote():
            st = self.storage()
            from kura.io import stable_hash

            info = st.fs.info(st.path(key))
            return stable_hash({"etag": str(info.get("ETag", "")), "size": info.get("size")})
        try:
            s = (self.folder() / key).stat()
            return f"{s.st_size}-{s.st_mtime_ns}"
        except OSError:
            return "unreadable"

    def uri(self, key: str) -> str:
        """Where the file lives (recorded in the raw shard's stats)."""
        return f"{self.path.rstrip('/')}/{key}" if self.is_remote() else str(self.folder() / key)

    def root(self) -> Optional[Path]:
        """The folder files must stay inside (None on an object store, where keys are checked instead)."""
        return None if self.is_remote() else self.folder()

    def outside_root(self, key: str) -> Optional[str]:
        """Why the file behind a partition key is outside the corpus root (a symlink out of the folder, a `..`
        segment, an absolute key), or None."""
        if why := readers.unsafe_key(key):
            return why
        return None if self.is_remote() else readers.outside_root(self.folder() / key, self.folder())

    def file(self, key: str) -> Path:
        """A local path to read the file from (a cached copy for S3)."""
        if why := self.outside_root(key):
            raise ValueError(f"corpus file {key}: {why}; it is quarantined as outside_root, not read")
        if self.is_remote():
            return self.storage().local_file(key)
        return self.folder() / key
