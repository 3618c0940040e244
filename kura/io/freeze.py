"""Freeze a committed output into a plain folder for DVC (`data/frozen/<asset>`), verified byte for byte.

Training pods do `dvc pull` of that folder; the manifest copied beside the files names the asset, its content
version and every file's sha256, so a pulled dataset can be checked against the lineage that produced it.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from kura.io.hashing import sha256_file
from kura.io.storage import Storage
from kura.io.versioned import MANIFEST_NAME, load_manifest


def freeze(storage: Storage, rel_dir: str, out_dir: str | Path) -> dict:
    src = storage.local_dir(rel_dir)
    manifest = load_manifest(storage, rel_dir)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    shutil.copytree(src, tmp)
    for rel, info in manifest["files"].items():
        got = sha256_file(tmp / rel)
        if got != info["sha256"]:
            shutil.rmtree(tmp)
            raise ValueError(f"{storage.uri(rel_dir)}/{rel}: sha256 {got} does not match the manifest")
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    assert (out / MANIFEST_NAME).exists()
    return manifest
