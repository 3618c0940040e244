"""Shared plumbing for assets: content-addressed materialization and Dagster outputs."""

import hashlib
import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from kura.io import Storage, materialize_versioned, stable_hash
from kura.io.hashing import content_only


def source_version(*modules: ModuleType, extra: str = "") -> str:
    """Code version = hash of the source of the kura modules an asset runs (plus its own module), so any code
    change marks the asset stale and a pure refactor elsewhere does not."""
    h = hashlib.sha256(extra.encode())
    for m in modules:
        h.update(inspect.getsource(m).encode())
    return h.hexdigest()[:12]


def upstream_versions(upstream: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, m in upstream.items():
        if isinstance(m, dict) and "version" in m:
            out[name] = m["version"]
        elif isinstance(m, dict):  # {partition: manifest}
            out[name] = {pk: v["version"] for pk, v in sorted(m.items())}
        else:
            out[name] = m
    return out


def asset_storage_key(context: dg.AssetExecutionContext) -> str:
    key = "/".join(context.asset_key.path)
    return f"{key}/{context.partition_key}" if context.has_partition_key else key


def input_version_of(context: dg.AssetExecutionContext, config: Any, upstream: dict[str, Any]) -> str:
    """Hash of code version, config, upstream data versions and partition: what an output is keyed by."""
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    cfg = config.model_dump() if hasattr(config, "model_dump") else config
    return stable_hash({"code": code_version, "config": cfg, "upstream": upstream_versions(upstream),
                        "partition": context.partition_key if context.has_partition_key else None})


def run_versioned(context: dg.AssetExecutionContext, storage: Storage, *, config: Any, upstream: dict[str, Any],
                  build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Build (or reuse) the output for these inputs. The input version covers code version, config and upstream
    data versions; the output folder is named by the content hash of what was built."""
    manifest, reused = materialize_versioned(storage, asset_storage_key(context),
                                             input_version_of(context, config, upstream), build)
    if reused:
        context.log.info(f"reusing {manifest['uri']} (same inputs as an earlier run)")
    return manifest, reused


def output(manifest: dict, reused: bool, **metadata: Any) -> dg.Output:
    md: dict[str, Any] = {"uri": dg.MetadataValue.path(manifest["uri"]), "content_version": manifest["version"],
                          "reused_existing_output": reused}
    for k, v in metadata.items():
        md[k] = dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v
    return dg.Output(manifest, data_version=dg.DataVersion(manifest["version"]), metadata=md)


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> int:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
    return len(rows)


class ParquetRowWriter:
    """Rows appended one at a time, written as row groups of `batch` rows: a shard of any size streams through in
    bounded memory. Always produces a file (with the schema) even when no row is added."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = 2048):
        self.schema, self.batch, self.rows, self.n = schema, batch, [], 0
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def extend(self, rows: list[dict]) -> None:
        for r in rows:
            self.add(r)

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.n += len(self.rows)
            self.rows = []

    def __enter__(self) -> "ParquetRowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
        self.writer.close()


def read_parquet(storage: Storage, manifest: dict, name: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(storage.local_dir(manifest["dir"]) / name, columns=columns)


def write_json(path: Path, obj: Any) -> None:
    """A sidecar in a stage folder, hashed into the content version: volatile facts (kura.io.hashing.VOLATILE_KEYS:
    timings, throughput, URIs, resume counts) are left out; the manifest and the metadata keep them."""
    path.write_text(json.dumps(content_only(obj), indent=1, sort_keys=True, ensure_ascii=False))


DOC_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("lang", pa.string()), ("lang_score", pa.float64()), ("n_chars", pa.int64())])


def bar_chart_md(counts: dict[str, int], title: str) -> dg.MetadataValue:
    """A horizontal bar chart as a markdown image (the UI shows it on the materialization)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(items) + 0.9), dpi=90)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    return png_md(fig, title)


def curves_md(curve: list[dict], title: str) -> dg.MetadataValue:
    """Loss and learning-rate curves (two panels, shared step axis) as a markdown image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curve]
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 4.0), dpi=90, sharex=True)
    a.plot(steps, [r["loss"] for r in curve], color="#4c72b0")
    a.set_ylabel("loss", fontsize=8)
    a.set_title(title, fontsize=9)
    b.plot(steps, [r["lr"] for r in curve], color="#dd8452")
    b.set_ylabel("learning rate", fontsize=8)
    b.set_xlabel("step", fontsize=8)
    for ax in (a, b):
        ax.tick_params(labelsize=7)
    return png_md(fig, title)


def png_md(fig, title: str) -> dg.MetadataValue:
    """A matplotlib figure as an inline markdown image (the UI shows it on the materialization); closes it."""
    import base64
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")
