"""Web-corpus stages: raw_corpus (one partition per input file) → cleaned (rule filters + blocking GX suite)
→ deduplicated (exact, across all shards)."""

import shutil
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

import kura.corpus.readers as readers
import kura.dedup.incremental as incremental
import kura.dedup.minhash as minhash
import kura.quality.expectations as expectations
import kura.text.filters as filters
from assets._common import (kura_asset, DOC_SCHEMA, ParquetRowWriter, bar_chart_md, output, read_parquet, run_versioned,
                            write_json, write_parquet)
from kura.io import sha256_file, stable_hash
from resources import CorpusResource, StorageResource
from resources.io_manager import latest_manifest

corpus_partitions = dg.DynamicPartitionsDefinition(name="corpus_files")

RAW_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("position", pa.int64()),
                        ("orig_id", pa.string()), ("text", pa.string())])
RAW_QUARANTINE = pa.schema([("source", pa.string()), ("position", pa.int64()), ("reason", pa.string()),
                            ("detail", pa.string()), ("raw", pa.binary())])
CLEAN_QUARANTINE = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                              ("text", pa.string())])


class RawCorpusConfig(dg.Config):
    text_field: str = "text"
    """JSON key / parquet column holding the document text."""
    id_field: str = "id"
    """JSON key / parquet column with the input's own document id (kept as orig_id)."""
    max_document_bytes: int = readers.MAX_DOCUMENT_BYTES
    """A single document (page, JSON line, WARC record, parquet cell) larger than this is quarantined as
    document_too_large without being decoded or extracted."""
    extract_timeout_s: float = 2.0
    """Time bound of one page's HTML extraction; a page past it is quarantined as extract_timeout and the file
    goes on (kura.corpus.guard)."""
    extract_memory_mb: int = 1024
    """Memory allowance of the extraction helper; a page needing more is quarantined as extract_memory."""


@kura_asset(partitions_def=corpus_partitions, group_name="corpus")
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, corpus: CorpusResource,
               storage: StorageResource) -> dg.Output:
    """Documents of one input file, as parquet. Unreadable files, bad UTF-8, malformed JSON lines and empty files
    are quarantined with their reason; nothing raises."""
    pk = context.partition_key
    fingerprint = corpus.fingerprint(pk)  # before reading: a file changed while it is read is seen next tick
    escape = corpus.outside_root(pk)  # a link or key out of the corpus root: quarantined, never read or hashed
    path = corpus.file(pk) if not escape else None
    try:
        file_hash = sha256_file(path) if path else "outside_root"
    except OSError as e:
        file_hash = f"unreadable:{type(e).__name__}"
    counts: Counter = Counter()

    def build(stage):  # streamed: documents go to parquet in row groups as they are read
        with ParquetRowWriter(stage / "documents.parquet", RAW_SCHEMA) as docs, \
                ParquetRowWriter(stage / "quarantine.parquet", RAW_QUARANTINE, batch=256) as rejected:
            items = [readers.Rejected(pk, 0, "outside_root", escape, b"")] if escape else readers.read_corpus_file(
                path, pk, config.text_field, config.id_field, config.max_document_bytes, root=corpus.root(),
                extract_timeout_s=config.extract_timeout_s, extract_memory_mb=config.extract_memory_mb)
            for item in items:
                if isinstance(item, readers.Document):
                    docs.add({"doc_id": item.doc_id, "source": item.source, "position": item.position,
                              "orig_id": item.orig_id, "text": item.text})
                else:
                    rejected.add(item.__dict__)
                    counts[item.reason] += 1
        info = {"documents": docs.n, "rejected": rejected.n, "rejected_by_reason": dict(counts),
                "source_file": corpus.uri(pk), "source_sha256": file_hash}
        write_json(stage / "stats.json", info)  # hashed: write_json leaves the (volatile) source_file out
        return info

    m, reused = run_versioned(context, storage.get(), config=config, upstream={"file": file_hash}, build=build)
    return output(m, reused, documents=m["documents"], rejected=m["rejected"],
                  rejected_by_reason=m["rejected_by_reason"], source_sha256=m["source_sha256"],
                  source_fingerprint=fingerprint)


class CleanedConfig(dg.Config, filters.CleanConfig):
    """Rule-filter thresholds (see kura.text.filters.CleanConfig)."""


@kura_asset(partitions_def=corpus_partitions, group_name="corpus",
          check_specs=[dg.AssetCheckSpec("gx_documents_suite", asset="cleaned", blocking=True,
                                         description="great-expectations suite: schema, unique ids, lengths, "
                                                     "languages, no U+FFFD, no NUL. Blocks downstream stages."),
                       dg.AssetCheckSpec("every_document_accounted_for", asset="cleaned", blocking=True,
                                         description="Input documents = kept + Σ dropped by reason, counted in the "
                                                     "written files (documents.parquet, quarantine.parquet).")])
def cleaned(context: dg.AssetExecutionContext, config: CleanedConfig, raw_corpus: dict, storage: StorageResource):
    """Normalized documents that pass the rule filters; dropped ones go to quarantine.parquet with a reason.

    No automation condition here on purpose: new files arrive as ingest runs (raw_corpus + cleaned) from
    corpus_files_sensor, and an eager condition over N partitions is evaluated on every automation tick
    (benchmarks/partitions.py, 100k partitions: 26.5 s per evaluation with it, 7.4 s without)."""
    st = storage.get()

    def build(stage):  # streamed in batches: memory is bounded by the batch, not by the shard
        n_in, drops, stats, langs = 0, Counter(), Counter(), Counter()
        src = pq.ParquetFile(st.local_dir(raw_corpus["dir"]) / "documents.parquet")
        with ParquetRowWriter(stage / "documents.parquet", DOC_SCHEMA) as kept, \
                ParquetRowWriter(stage / "quarantine.parquet", CLEAN_QUARANTINE) as rejected:
            for batch in src.iter_batches(batch_size=2048, columns=["doc_id", "source", "text"]):
                raw = batch.to_pylist()
                res = filters.clean_documents(raw, config)
                assert len(res.kept) + len(res.rejected) == len(raw), "every document is kept or quarantined"
                kept.extend(res.kept)
                rejected.extend(res.rejected)
                n_in += len(raw)
                drops.update(res.drops)
                stats.update(res.stats)
                langs.update(d["lang"] for d in res.kept)
        info = {"documents_in": n_in, "kept": kept.n, "dropped": rejected.n,
                "dropped_by_reason": dict(drops), "stats": dict(stats), "kept_by_lang": dict(langs),
                "input_rejected_by_reason": raw_corpus.get("rejected_by_reason", {})}
        write_json(stage / "stats.json", info)
        return info

    m, reused = run_versioned(context, st, config=config, upstream={"raw_corpus": raw_corpus}, build=build)
    yield output(m, reused, documents_in=m["documents_in"], kept=m["kept"], dropped=m["dropped"],
                 dropped_by_reason=m["dropped_by_reason"], kept_by_lang=m["kept_by_lang"], stats=m["stats"],
                 drop_reasons=bar_chart_md({**{f"read: {k}": v for k, v in m["input_rejected_by_reason"].items()},
                                            **m["dropped_by_reason"], "kept": m["kept"]},
                                           f"documents of {context.partition_key}"))
    yield accounting_check(st, raw_corpus, m)
    df = read_parquet(st, m, "documents.parquet").to_pandas()
    res = expectations.validate_documents(df, min_chars=config.min_chars, languages=config.languages)
    yield dg.AssetCheckResult(check_name="gx_documents_suite", passed=res.success,
                              severity=dg.AssetCheckSeverity.ERROR,
                              metadata={"rows": res.n_rows, "failed_expectations": dg.MetadataValue.json(res.failed),
                                        "content_version": m["version"]})


class DedupConfig(dg.Config, minhash.MinHashConfig):
    """Near-duplicate settings (see kura.dedup.minhash.MinHashConfig)."""

    near_duplicates: bool = True
    """Also remove near duplicates (MinHash-LSH); exact duplicates are always removed."""


DUP_SCHEMA = DOC_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("duplicate_of", pa.string())) \
    .append(pa.field("similarity", pa.float64()))
INDEX_SCHEMA = pa.schema([("doc_id", pa.string()), ("exact_key", pa.string()), ("signature", pa.list_(pa.uint32()))])


def accounting_check(st, raw_corpus: dict, m: dict) -> dg.AssetCheckResult:
    n_in = pq.ParquetFile(st.local_dir(raw_corpus["dir"]) / "documents.parquet").metadata.num_rows
    d = st.local_dir(m["dir"])
    kept = pq.ParquetFile(d / "documents.parquet").metadata.num_rows
    reasons = Counter(pq.read_table(d / "quarantine.parquet", columns=["reason"]).column("reason").to_pylist())
    ok = n_in == kept + sum(reasons.values()) and dict(reasons) == m["dropped_by_reason"]
    return dg.AssetCheckResult(check_name="every_document_accounted_for", passed=ok,
                               severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"documents_in": n_in, "kept": kept,
                                         "dropped_by_reason": dg.MetadataValue.json(dict(reasons))})


def cleaned_shard_versions(instance) -> dict[str, str]:
    """{partition: data version} of the latest materialization of every current `cleaned` partition, read in two
    queries (latest storage id per partition, then those events), not one per partition."""
    key = dg.AssetKey("cleaned")
    current = set(instance.get_dynamic_partitions(corpus_partitions.name))
    ids = {pk: sid for pk, sid in instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION).items() if pk in current}
    out: dict[str, str] = {}
    sids = sorted(ids.values())
    for i in range(0, len(sids), 10_000):
        flt = dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=key,
                                    storage_ids=sids[i:i + 10_000])
        for rec in instance.get_event_records(flt, limit=len(sids[i:i + 10_000])):
            mat = rec.asset_materialization
            if mat is not None and mat.partition in current:
                out[mat.partition] = mat.tags.get("dagster/data_version", str(rec.storage_id))
    return dict(sorted(out.items()))


@dg.observable_source_asset(key="corpus_snapshot", group_name="corpus",
                            automation_condition=dg.AutomationCondition.on_cron("* * * * *"),
                            description="The data versions of every cleaned shard, as one version. Dagster stops "
                                        "computing staleness through an edge that fans in more than 100 partitions "
                                        "(SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD), so deduplicated also "
                                        "depends on this one-partition summary: a changed, added or removed shard "
                                        "makes it stale in the UI once the snapshot is observed (each minute by the "
                                        "automation sensor, and after ingest in the demo).")
def corpus_snapshot(context) -> dg.DataVersion:
    versions = cleaned_shard_versions(context.instance)
    context.log.info(f"{len(versions)} cleaned shard(s)")
    return dg.DataVersion(stable_hash(versions))


# Rebuilt when the snapshot of shard versions changes, not on each `cleaned` partition's update: the snapshot is
# what says "the set of shards is different", and reacting to both would build twice per changed file (once when the
# shard lands, once when the minute observation sees it). A deleted file only shows in the snapshot. Still waits
# while any shard is being ingested and while a blocking check on one failed.
DEDUP_AUTOMATION = (dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
                    .replace("any_deps_updated", dg.AutomationCondition.any_deps_updated()
                             .ignore(dg.AssetSelection.assets("cleaned")))
                    & dg.AutomationCondition.all_deps_blocking_checks_passed())


@kura_asset(group_name="corpus", ins={"cleaned": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
            deps=[corpus_snapshot],  # staleness through the >100-partition fan-in (see corpus_snapshot)
            automation_condition=DEDUP_AUTOMATION)
def deduplicated(context: dg.AssetExecutionContext, config: DedupConfig, cleaned: dict,
                 storage: StorageResource) -> dg.Output:
    """Exact and near duplicates removed across every cleaned shard, incrementally: shards already processed by
    the previous materialization are not read or hashed again; new shards are checked against their index."""
    st = storage.get()
    if not cleaned:
        raise ValueError("no cleaned shard is materialized yet: materialize raw_corpus and cleaned first")
    mh_cfg = minhash.MinHashConfig(**config.model_dump(exclude={"near_duplicates"}))
    versions = {pk: m["version"] for pk, m in cleaned.items()}
    previous = latest_manifest(st, context.asset_key)

    def build(stage):
        state, reused = None, []
        if previous is not None and "shard_versions" in previous:
            prev_dir = st.local_dir(previous["dir"])
            cand = incremental.DedupState(mh_cfg, config.near_duplicates, previous["shard_versions"],
                                          previous.get("minhash_algorithm", "unknown"))
            if cand.compatible(mh_cfg, config.near_duplicates, versions):
                state = incremental.DedupState.from_rows(mh_cfg, config.near_duplicates, previous["shard_versions"],
                                                         pq.read_table(prev_dir / "index.parquet").to_pylist())
                reused = list(previous["shard_order"])
        if state is None:
            state = incremental.DedupState(mh_cfg, config.near_duplicates)
        hasher = minhash.MinHasher(mh_cfg)
        (stage / "shards").mkdir()
        order = reused + sorted(pk for pk in cleaned if pk not in reused)
        kept_by_shard, dups_by_reason = {}, Counter()
        for n, pk in enumerate(order):
            name = f"{n:06d}"
            if pk in reused:  # earlier shard: its results are copied, its documents not read
                for kind in ("kept", "dups"):
                    shutil.copy(prev_dir / "shards" / f"{previous['shard_files'][pk]}.{kind}.parquet",
                                stage / "shards" / f"{name}.{kind}.parquet")
                kept_by_shard[pk] = previous["kept_by_shard"][pk]
                continue
            rows = read_parquet(st, cleaned[pk], "documents.parquet").to_pylist()
            kept, dups = incremental.dedup_shard(state, hasher, rows)
            write_parquet(stage / "shards" / f"{name}.kept.parquet", kept, DOC_SCHEMA)
            write_parquet(stage / "shards" / f"{name}.dups.parquet", dups, DUP_SCHEMA)
            kept_by_shard[pk] = len(kept)
        files = {pk: f"{n:06d}" for n, pk in enumerate(order)}
        docs = pa.concat_tables([pq.read_table(stage / "shards" / f"{files[pk]}.kept.parquet") for pk in order])
        dups = pa.concat_tables([pq.read_table(stage / "shards" / f"{files[pk]}.dups.parquet") for pk in order])
        pq.write_table(docs, stage / "documents.parquet", compression="zstd")
        pq.write_table(dups, stage / "duplicates.parquet", compression="zstd")
        write_parquet(stage / "index.parquet", state.to_rows(), INDEX_SCHEMA)
        dups_by_reason.update(dups.column("reason").to_pylist())
        documents_in = docs.num_rows + dups.num_rows
        info = {"shards": len(order), "shards_reused": len(reused), "shards_processed": len(order) - len(reused),
                "documents_in": documents_in, "kept": docs.num_rows, "duplicates": dups.num_rows,
                "duplicates_by_reason": dict(dups_by_reason), "kept_by_shard": kept_by_shard,
                "kept_by_lang": dict(Counter(docs.column("lang").to_pylist())),
                "chars": int(pa.compute.sum(docs.column("n_chars")).as_py() or 0),
                "shard_versions": {pk: versions[pk] for pk in order}, "shard_order": order, "shard_files": files,
                "minhash_algorithm": state.algorithm}
        write_json(stage / "stats.json", info)
        # shards of deleted input files: their documents are gone from this output (counted in the manifest only,
        # since the count depends on what was built before, not on these inputs)
        gone = sorted(set(previous.get("shard_versions", {})) - set(cleaned)) if previous else []
        info["removed_shards"] = len(gone)
        info["removed_documents"] = sum(previous.get("kept_by_shard", {}).get(pk, 0) for pk in gone)
        return info

    m, reused = run_versioned(context, st, config=config, upstream={"cleaned": cleaned}, build=build)
    return output(m, reused, shards=m["shards"], shards_reused=m["shards_reused"], documents_in=m["documents_in"],
                  kept=m["kept"], duplicates=m["duplicates"], duplicates_by_reason=m["duplicates_by_reason"],
                  kept_by_lang=m["kept_by_lang"], removed_shards=m.get("removed_shards", 0),
                  removed_documents=m.get("removed_documents", 0))
