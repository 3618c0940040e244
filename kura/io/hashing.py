"""Content hashes. Versions in kura are hashes of bytes or of canonical JSON, never of timestamps or paths,
so the same inputs give the same version on any machine and any storage root."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object with sorted keys (dict order and whitespace do not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def hash_dir(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> tuple[str, dict[str, dict]]:
    """(version, files): the version hashes every file's relative path and content; `files` maps each
    relative path to its sha256 and size, for the manifest."""
    root = Path(root)
    files: dict[str, dict] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel in exclude:
                continue
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return stable_hash({k: v["sha256"] for k, v in files.items()}), files
