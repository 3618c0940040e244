"""Whole-corpus curation in one call, outside Dagster: read → extract → normalize → language id → rule filters →
exact + MinHash dedup, over many input files on several cores. The benchmark runs it against datatrove; the
Dagster assets run the same library functions stage by stage (raw_corpus → cleaned → deduplicated).

Parallelism: each worker process takes whole input files (read + extract + clean + MinHash signatures) and writes
the surviving documents of a file to its own parquet shard; the parent process only sees ids, exact-dedup keys and
signatures, which it checks in file order with the asset's dedup (kura.dedup.incremental.dedup_signed, so the
first copy wins), then filters each shard by the kept ids. Memory: one file's documents per worker plus the index
(~1 KB per kept document) — not the corpus.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kura.corpus.readers import MAX_DOCUMENT_BYTES, Document, read_corpus_file
from kura.dedup.exact import dedup_key
from kura.dedup.incremental import DedupState, dedup_signed
from kura.dedup.minhash import MinHashConfig, MinHasher
from kura.text.filters import CleanConfig, clean_documents

SHARD_SCHEMA = pa.schema([("doc_id", pa.string()), ("url", pa.string()), ("lang", pa.string()),
                          ("text", pa.string())])


@dataclass
class CurationResult:
    documents_in: int = 0                                   # input records (pages, lines, rows)
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)       # reason -> count (read, filter and dedup reasons)
    kept_urls: set = field(default_factory=set)             # orig ids (URIs for WARC) of the kept documents
    duplicate_urls: set = field(default_factory=set)        # orig ids removed as exact or near duplicates
    output_files: list = field(default_factory=list)
    input_bytes: int = 0


def _clean_file(args: tuple) -> dict:
    path, out_path, clean_cfg, mh_cfg, max_bytes = args
    drops, urls, docs = Counter(), {}, []
    n_in = 0
    for item in read_corpus_file(path, Path(path).name, max_bytes=max_bytes):
        n_in += 1
        if isinstance(item, Document):
            docs.append({"doc_id": item.doc_id, "source": item.source, "text": item.text})
            urls[item.doc_id] = item.orig_id
        else:
            drops[f"read:{item.reason}"] += 1
    res = clean_documents(docs, CleanConfig(**clean_cfg))
    drops.update(res.drops)
    kept = res.kept
    sigs = MinHasher(MinHashConfig(**mh_cfg)).signatures([d["text"] for d in kept]) if mh_cfg else None
    pq.write_table(pa.Table.from_pylist([{"doc_id": d["doc_id"], "url": urls[d["doc_id"]], "lang": d["lang"],
                                          "text": d["text"]} for d in kept], schema=SHARD_SCHEMA),
                   out_path, compression="zstd")
    return {"n_in": n_in, "drops": drops, "ids": [d["doc_id"] for d in kept],
            "urls": [urls[d["doc_id"]] for d in kept], "keys": [dedup_key(d["text"]) for d in kept], "sigs": sigs}


def curate_files(paths: list[Path], out_dir: Path, clean_cfg: CleanConfig | None = None,
                 mh_cfg: MinHashConfig | None = MinHashConfig(), workers: int = 2,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES) -> CurationResult:
    """Curate `paths` into `out_dir/<n>.parquet` (kept documents of input file n). `mh_cfg=None` skips near-dup."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = (clean_cfg or CleanConfig()).model_dump()
    mh = mh_cfg.model_dump() if mh_cfg else None
    jobs = [(str(p), str(out_dir / f".{i:05d}.stage.parquet"), clean, mh, max_document_bytes)
            for i, p in enumerate(paths)]
    res = CurationResult(input_bytes=sum(Path(p).stat().st_size for p in paths))
    state = DedupState(mh_cfg or MinHashConfig(), near=mh_cfg is not None)
    hasher = MinHasher(state.cfg)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for i, r in enumerate(pool.imap(_clean_file, jobs)):  # in file order: the first copy wins
            res.documents_in += r["n_in"]
            res.dropped.update(r["drops"])
            rows = [{"doc_id": i, "url": u} for i, u in zip(r["ids"], r["urls"])]
            kept, dups = dedup_signed(state, hasher, rows, r["keys"],
                                      r["sigs"] if r["sigs"] is not None else [None] * len(rows))
            res.dropped.update(d["reason"] for d in dups)
            res.duplicate_urls.update(d["url"] for d in dups)
            res.kept_urls.update(d["url"] for d in kept)
            keep_ids = {d["doc_id"] for d in kept}
            res.kept += len(keep_ids)
            stage = Path(jobs[i][1])
            t = pq.read_table(stage)
            mask = np.isin(np.asarray(t.column("doc_id").to_pylist(), dtype=object), list(keep_ids))
            final = out_dir / f"{i:05d}.parquet"
            pq.write_table(t.filter(pa.array(mask)), final.with_suffix(".tmp"), compression="zstd")
            final.with_suffix(".tmp").rename(final)
            stage.unlink()
            res.output_files.append(final)
    assert res.documents_in == res.kept + sum(res.dropped.values()), "every input record is accounted for"
    return res
