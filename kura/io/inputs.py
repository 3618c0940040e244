"""Input versions: what an output is keyed by, which fields count, and why an output changed, in words.

An output's input version hashes its *components*: the derived code version (kura.io.codeversion), the config
fields that can change a result, the upstream data versions, the identities of the resources that can change it
(teacher / judge model and revision, backend, image) and the partition. A field that cannot change a result
(batch sizes used only for throughput, concurrency, timeouts, `keep_work_dir`) is declared once where it is
defined, with `result_neutral(...)` instead of `Field(...)`, and `versioned_fields` leaves it out everywhere; no
call site keeps its own exclude list. Secrets are declared neutral too, so they are never hashed or shown.

`describe_change` compares the components of two materializations and says what changed in short lines
("config.max_tokens: 96 → 64", "kura.text.filters changed", "judge.model: judge-a → judge-b").
"""
from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

NEUTRAL_MARK = "kura_result_neutral"


def result_neutral(default: Any = ..., **kwargs: Any) -> Any:
    """`pydantic.Field` for a setting that cannot change an output (throughput, concurrency, timeouts, secrets):
    it is left out of every input version."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[NEUTRAL_MARK] = True
    return Field(default, json_schema_extra=extra, **kwargs)


def neutral_fields(model: type[BaseModel] | BaseModel) -> frozenset[str]:
    cls = model if isinstance(model, type) else type(model)
    return frozenset(name for name, f in cls.model_fields.items()
                     if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(NEUTRAL_MARK))


def versioned_fields(obj: Any) -> Any:
    """The result-relevant part of a config (pydantic model, at any nesting), as plain data."""
    if isinstance(obj, BaseModel):
        skip = neutral_fields(obj)
        return {name: versioned_fields(getattr(obj, name)) for name in type(obj).model_fields if name not in skip}
    if isinstance(obj, dict):
        return {k: versioned_fields(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [versioned_fields(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {k: versioned_fields(getattr(obj, k)) for k in obj.__dataclass_fields__}
    return obj


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _short(v: Any, width: int = 40) -> str:
    s = "∅" if v is None else str(v)
    return s if len(s) <= width else s[:width - 1] + "…"


def describe_change(previous: dict | None, current: dict, limit: int = 12) -> list[str]:
    """Readable lines saying how `current` input components differ from `previous` (None: first build)."""
    if not previous:
        return ["first materialization"]
    lines: list[str] = []
    pc, cc = previous.get("code", {}), current.get("code", {})
    for mod in sorted(set(pc.get("modules", {})) | set(cc.get("modules", {}))):
        a, b = pc.get("modules", {}).get(mod), cc.get("modules", {}).get(mod)
        if a != b:
            lines.append(f"{mod} {'changed' if a and b else 'now reached' if b else 'no longer reached'}")
    for pkg in sorted(set(pc.get("packages", {})) | set(cc.get("packages", {}))):
        a, b = pc.get("packages", {}).get(pkg), cc.get("packages", {}).get(pkg)
        if a != b:
            lines.append(f"package {pkg}: {_short(a)} → {_short(b)}")
    if pc.get("extra") != cc.get("extra"):
        lines.append("definition spec changed")
    for part in ("config", "resources", "upstream"):
        pf, cf = _flatten(previous.get(part) or {}), _flatten(current.get(part) or {})
        for k in sorted(set(pf) | set(cf)):
            if pf.get(k) != cf.get(k):
                lines.append(f"{part}.{k}: {_short(pf.get(k))} → {_short(cf.get(k))}" if part != "upstream"
                             else f"upstream {k} has a new version")
    if previous.get("partition") != current.get("partition"):
        lines.append(f"partition {previous.get('partition')} → {current.get('partition')}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"… and {len(lines) - limit} more"]
    return lines or ["nothing (same inputs)"]


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit is None:
            return None, None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=20).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def provenance(packages: dict[str, str] | None = None) -> dict[str, Any]:
    """What built an output: the git commit (None outside a checkout, e.g. in an image) and whether the tree had
    uncommitted changes, the kura version, and the package versions its code version covers."""
    commit, dirty = _git_state()
    try:
        kura_version = importlib.metadata.version("kura")
    except importlib.metadata.PackageNotFoundError:
        kura_version = None
    return {"git_commit": commit, "git_dirty": dirty, "kura_version": kura_version,
            "packages": dict(packages or {})}
