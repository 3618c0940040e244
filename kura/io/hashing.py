"""Content hashes. Versions in kura are hashes of bytes or of canonical JSON, never of timestamps or paths,
so the same inputs give the same version on any machine and any storage root."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# Facts that differ between two builds of the same inputs: timings, throughput, where things are, how much of the
# work was resumed. They belong in manifests and Dagster metadata, never in files hashed into a content version.
VOLATILE_KEYS = frozenset({
    "seconds", "generation_seconds", "startup_seconds", "tokens_per_second", "ms_per_iter", "tflops_per_gpu",
    "mfu", "gpu_hours", "chain_gpu_hours", "uri", "teacher_uri", "weights_uri", "source_file", "generated", "resumed",
    "resumed_from", "host", "hostname", "run_id", "timestamp", "created_at",
})


def is_volatile(key: str) -> bool:
    """A key in VOLATILE_KEYS, or any timing by its name (`backend_startup_seconds`, `samples_per_second`, ...)."""
    return key in VOLATILE_KEYS or key.endswith(("seconds", "per_second"))


def content_only(obj: Any) -> Any:
    """`obj` without volatile keys at any depth: what a sidecar that is hashed into a content version may hold."""
    if isinstance(obj, dict):
        return {k: content_only(v) for k, v in obj.items() if not is_volatile(k)}
    if isinstance(obj, list):
        return [content_only(v) for v in obj]
    return obj


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
