"""Storage: one root URI (folder or s3://bucket/prefix), atomic writes, content-addressed outputs."""
from kura.io.hashing import hash_dir, sha256_file, stable_hash
from kura.io.storage import Storage, StorageError
from kura.io.versioned import MANIFEST_NAME, materialize_versioned

__all__ = ["Storage", "StorageError", "hash_dir", "sha256_file", "stable_hash", "materialize_versioned",
           "MANIFEST_NAME"]
