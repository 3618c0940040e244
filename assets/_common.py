"""Shared plumbing for assets: content-addressed materialization and Dagster outputs."""

import inspect
import json
from pathlib import Path
from typing import Any, Callable

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from assets.models_in_use import OBSERVED_RESOURCES, resource_key
from kura.io import Storage, materialize_versioned, stable_hash
from kura.io.codeversion import CodeVersion, code_version
from kura.io.hashing import content_only
from kura.io.inputs import describe_change, provenance, versioned_fields
from kura.io.layout import LAYOUT


# asset key → what its derived code version covers (read by `python -m pipelines.cli versions`)
CODE_VERSIONS: dict[str, CodeVersion] = {}


def kura_asset(*, code_version_extra: str = "", **kwargs: Any) -> Callable[[Callable], dg.AssetsDefinition]:
    """`dg.asset` with a derived code version (kura.io.codeversion): the asset function's normalized source plus
    every project definition and output-determining package it reaches. `code_version_extra` is data a factory
    bakes into the definition (a run spec, a mix phase), so editing it marks the asset changed. An asset that takes
    an observed resource (`generator`, `judge`: assets/models_in_use.py) depends on that resource's observation, so
    another model behind it makes the asset stale and automation rebuilds it."""
    def decorate(fn: Callable) -> dg.AssetsDefinition:
        cv = code_version(fn, extra=code_version_extra)
        uses = [n for n in inspect.signature(fn).parameters if n in OBSERVED_RESOURCES]
        if uses:
            kwargs["deps"] = [*kwargs.get("deps", []), *(resource_key(n) for n in uses)]
        assets_def = dg.asset(code_version=cv.hash, **kwargs)(fn)
        for key in assets_def.keys:
            CODE_VERSIONS[key.to_user_string()] = cv
        return assets_def
    return decorate


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


def resource_identities(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """Identities of the resources this asset uses that can change its output (each resource's `identity()`:
    backend, served model and revision, judge, image; never secrets). Storage and corpus locations have none:
    outputs are content-addressed wherever they live."""
    out: dict[str, Any] = {}
    for key in sorted(context.assets_def.required_resource_keys):
        ident = getattr(getattr(context.resources, key, None), "identity", None)
        if callable(ident):
            out[key] = ident()
    return out


def input_components(context: dg.AssetExecutionContext, config: Any, upstream: dict[str, Any]) -> dict[str, Any]:
    """What an output's input version covers: the derived code version (and what it reaches), the config fields
    that can change a result (kura.io.inputs.versioned_fields), upstream data versions, resource identities and
    the partition."""
    cv = CODE_VERSIONS.get(context.asset_key.to_user_string())
    code = cv.describe() if cv else {"hash": context.assets_def.code_versions_by_key.get(context.asset_key) or ""}
    return {"code": code, "config": versioned_fields(config), "upstream": upstream_versions(upstream),
            "resources": resource_identities(context),
            "partition": context.partition_key if context.has_partition_key else None}


def input_version_of(context: dg.AssetExecutionContext, config: Any, upstream: dict[str, Any]) -> str:
    """Hash of the input components (code version, config, upstream versions, resources, partition): what an
    output is keyed by."""
    return _input_hash(input_components(context, config, upstream))


def _input_hash(components: dict[str, Any]) -> str:
    return stable_hash({**components, "code": components["code"]["hash"]})


def previous_components(context: dg.AssetExecutionContext) -> dict | None:
    """The input components recorded on this asset's (partition's) latest materialization, if any."""
    flt = dg.AssetRecordsFilter(asset_key=context.asset_key,
                                asset_partitions=[context.partition_key] if context.has_partition_key else None)
    records = context.instance.fetch_materializations(flt, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    md = records[0].asset_materialization.metadata.get("input_components")
    return getattr(md, "data", None) if md is not None else None


def work_dir(st: Storage, *parts: str) -> Path:
    """Where a long step keeps its resume points (training checkpoints) between attempts, keyed by the caller with
    its input version: beside the outputs on a local root, in the local cache when the root is remote."""
    return (Path(st.path("")) if st.is_local else st.cache_dir / "work") / LAYOUT.work(*parts)


def run_versioned(context: dg.AssetExecutionContext, storage: Storage, *, config: Any, upstream: dict[str, Any],
                  build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Build (or reuse) the output for these inputs. The input version covers code version, config, upstream
    data versions and resource identities; the output folder is named by the content hash of what was built.
    The manifest records provenance (commit, dirty tree, package versions); the returned one also carries the
    input components and, against the previous materialization, what changed (shown in the UI by `output`)."""
    components = input_components(context, config, upstream)

    def build_with_provenance(stage: Path) -> dict:
        return {**build(stage), "provenance": provenance(components["code"].get("packages"))}

    manifest, reused = materialize_versioned(storage, asset_storage_key(context), _input_hash(components),
                                             build_with_provenance)
    if reused:
        context.log.info(f"reusing {manifest['uri']} (same inputs as an earlier run)")
    try:
        changes = describe_change(previous_components(context), components)
    except Exception as e:  # noqa: BLE001 - an explanation must never fail the build it explains
        context.log.warning(f"could not compare with the previous materialization: {e}")
        changes = []
    return {**manifest, "input_components": components, "changes": changes}, reused


def output(manifest: dict, reused: bool, **metadata: Any) -> dg.Output:
    md: dict[str, Any] = {"uri": dg.MetadataValue.path(manifest["uri"]), "content_version": manifest["version"],
                          "reused_existing_output": reused}
    if "input_components" in manifest:  # why this output is what it is: see run_versioned
        md["input_version"] = manifest.get("input_version", "")
        md["input_components"] = dg.MetadataValue.json(manifest["input_components"])
        md["changes"] = dg.MetadataValue.md("\n".join(f"- {line}" for line in manifest["changes"]) or "-")
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
