"""Content-addressed, immutable outputs (the marin executor's rule: output path = key + version).

`materialize_versioned` runs a build function at most once per *input version* (hash of code version, config
and upstream versions). The output folder is named by the hash of what was built (its *content version*, which
becomes the Dagster DataVersion), so identical inputs reproduce the identical path and a changed input yields a
new folder; nothing is overwritten. A pointer file `_inputs/<input_version>.json` makes reruns no-ops and lets a
killed run resume: a stage whose pointer exists is skipped, one without it is rebuilt from scratch (its staging
folder was never visible to readers).
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

from kura.io.hashing import hash_dir
from kura.io.layout import LAYOUT
from kura.io.storage import Storage, StorageError

MANIFEST_NAME = "_MANIFEST.json"


def load_manifest(storage: Storage, rel_dir: str) -> dict:
    return storage.read_json(f"{rel_dir}/{MANIFEST_NAME}")


def materialize_versioned(storage: Storage, key: str, input_version: str,
                          build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Return (manifest, reused). `build(stage_dir)` writes files into `stage_dir` and returns extra manifest
    fields (counts, lineage, ...); they must be JSON-serialisable."""
    pointer = LAYOUT.input_pointer(key, input_version)
    if storage.exists(pointer):
        rel = storage.read_json(pointer)["dir"]
        if storage.exists(f"{rel}/{MANIFEST_NAME}"):
            return load_manifest(storage, rel), True
    try:
        with storage.staging_dir() as stage:
            info = build(stage)
            version, files = hash_dir(stage, exclude=(MANIFEST_NAME,))
            rel = f"{key}/{version}"
            manifest = {"key": key, "version": version, "input_version": input_version, "dir": rel,
                        "uri": storage.uri(rel), "files": files, **info}
            storage.publish_dir(stage, rel, MANIFEST_NAME, manifest)
        storage.write_json(pointer, {"dir": rel, "version": version})
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = storage.cache_dir if not storage.is_local else storage.root
        raise StorageError(f"no space left on the device of {where} while building {key}: nothing was published "
                           f"and the staging folder was removed; free space there (or point KURA_STORAGE_ROOT / "
                           f"the cache elsewhere) and rerun: finished outputs are kept") from e
    return load_manifest(storage, rel), False
