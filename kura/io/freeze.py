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


def dvc_md5(repo: str | Path, out_path: str) -> str | None:
    """The md5 DVC recorded for a tracked output (`<out>.dvc` from `dvc add`, or `dvc.lock` for a stage output);
    None when it is not tracked yet. For a folder it is the md5 of DVC's directory listing (`….dir`), so any
    changed file gives a new value — the data version of the frozen dataset."""
    import yaml

    repo = Path(repo)
    dvc_file = repo / f"{out_path}.dvc"
    if dvc_file.exists():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        return outs[0].get("md5") if outs else None
    lock = repo / "dvc.lock"
    if lock.exists():
        for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
            for o in stage.get("outs", []):
                if o.get("path") == out_path:
                    return o.get("md5")
    return None
