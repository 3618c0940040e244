"""Level 1–2: MinHash-LSH near-duplicate detection (precision/recall on planted near duplicates) and
incremental dedup across runs."""
from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from kura.corpus.default import DefaultCorpusConfig, generate_labelled
from kura.dedup.incremental import DedupState, dedup_shard
from kura.dedup.minhash import LSHIndex, MinHashConfig, MinHasher, near_dedup, normalize_for_shingles


def planted(n_docs=4000):
    """Documents that survive cleaning (clean text, 200–20,000 chars) and the near duplicates planted from them."""
    L = generate_labelled(DefaultCorpusConfig(n_docs=n_docs))
    ok = lambda i: L[i][1]["kind"] in ("clean", "mixed_language") and 200 <= len(L[i][0]) <= 20000  # noqa: E731
    docs = [{"doc_id": str(i), "text": t} for i, (t, lab) in enumerate(L)
            if ok(i) or (lab["kind"] == "near_dup" and ok(lab["of"]))]
    truth = {d["doc_id"] for d in docs if L[int(d["doc_id"])][1]["kind"] == "near_dup"}
    return docs, truth


def test_near_duplicates_precision_and_recall():
    docs, truth = planted()
    cfg = MinHashConfig()
    kept, dups = near_dedup(docs, LSHIndex(cfg), MinHasher(cfg))
    pred = {d["doc_id"] for d in dups}
    precision, recall = len(pred & truth) / len(pred), len(pred & truth) / len(truth)
    assert len(truth) > 50
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)
    assert len(kept) + len(dups) == len(docs)


def test_shingles_keep_kana_voicing_and_ignore_case_and_spacing():
    h = MinHasher(MinHashConfig())
    assert normalize_for_shingles("ティップ Ａｂ c") == "ティップabc"
    assert not np.array_equal(h.signature("ティップを買いました"), h.signature("ティッフを買いました"))
    assert np.array_equal(h.signature("Hello  World"), h.signature("hello world"))
    assert h.signature("").shape == (128,) and h.signature("x" * 100000).shape == (128,)


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        MinHashConfig(num_perm=100, bands=16)


def test_incremental_equals_one_pass_and_state_round_trips():
    docs, _ = planted(1500)
    shards = [docs[i::3] for i in range(3)]
    cfg = MinHashConfig()
    h = MinHasher(cfg)
    one = DedupState(cfg, True)
    one_kept = [dedup_shard(one, h, [dict(r) for r in s])[0] for s in shards]
    first = DedupState(cfg, True)
    part_kept = [dedup_shard(first, h, [dict(r) for r in s])[0] for s in shards[:2]]
    rows = json.loads(json.dumps(first.to_rows()))  # as stored in index.parquet
    resumed = DedupState.from_rows(cfg, True, {}, rows)
    part_kept.append(dedup_shard(resumed, h, [dict(r) for r in shards[2]])[0])
    assert [[r["doc_id"] for r in k] for k in part_kept] == [[r["doc_id"] for r in k] for k in one_kept]
    assert not resumed.compatible(MinHashConfig(threshold=0.8), True, {})
    assert not DedupState(cfg, True, {"a": "v1"}).compatible(cfg, True, {"a": "v2"})


def test_dedup_asset_processes_only_new_shards(tmp_path):
    from assets.corpus import cleaned, corpus_partitions, deduplicated, raw_corpus
    from kura.corpus.default import write_default_corpus
    from resources import CorpusResource, ManifestIOManager, StorageResource

    corpus = tmp_path / "corpus"
    write_default_corpus(corpus, DefaultCorpusConfig(n_docs=300))
    storage = StorageResource(root=str(tmp_path / "storage"))
    res = {"storage": storage, "io_manager": ManifestIOManager(storage=storage),
           "corpus": CorpusResource(path=str(corpus))}
    inst = dg.DagsterInstance.ephemeral()
    files = ["web-00.jsonl", "web-01.jsonl", "web-02.jsonl.gz"]
    inst.add_dynamic_partitions(corpus_partitions.name, files)
    for f in files[:2]:
        assert dg.materialize([raw_corpus, cleaned], partition_key=f, instance=inst, resources=res).success
    first = dg.materialize([deduplicated, raw_corpus, cleaned], selection=["deduplicated"], instance=inst,
                           resources=res).output_for_node("deduplicated")
    assert (first["shards"], first["shards_reused"]) == (2, 0)
    assert first["duplicates_by_reason"].get("exact_duplicate", 0) > 0
    assert dg.materialize([raw_corpus, cleaned], partition_key=files[2], instance=inst, resources=res).success
    second = dg.materialize([deduplicated, raw_corpus, cleaned], selection=["deduplicated"], instance=inst,
                            resources=res).output_for_node("deduplicated")
    assert (second["shards"], second["shards_reused"], second["shards_processed"]) == (3, 2, 1)
    assert second["kept_by_shard"]["web-00.jsonl"] == first["kept_by_shard"]["web-00.jsonl"]
    assert second["documents_in"] == second["kept"] + second["duplicates"]


def test_batch_shingling_equals_per_document_shingling():
    h = MinHasher(MinHashConfig())
    texts = ["東京の歴史について学びました。", "", "abc", "Hello, World! " * 30, "ティップ"]
    flat, offsets = h.shingle_batch(texts)
    for i, t in enumerate(texts):
        got = np.unique(flat[int(offsets[i]): int(offsets[i + 1])])
        want = h.shingles(t) if normalize_for_shingles(t) else np.zeros(1, np.uint64)
        assert np.array_equal(got, want), t
    assert np.array_equal(h.signatures(texts)[3], h.signature(texts[3]))
    # no short document: the masked fast path
    long = ["東京の歴史について学びました。", "Hello, World! " * 30, "ＡＢＣ　ｄｅｆ—ghi、ジャパン"]
    flat, offsets = h.shingle_batch(long)
    for i, t in enumerate(long):
        assert np.array_equal(np.unique(flat[int(offsets[i]): int(offsets[i + 1])]), h.shingles(t)), t


def test_curate_files_on_a_labelled_crawl_accounts_for_every_page(tmp_path):
    from kura.corpus.webcrawl import JUNK_KINDS, read_labels, write_web_crawl
    from kura.curate import curate_files

    paths = write_web_crawl(tmp_path / "crawl", target_mb=1.5, pages_per_file=60)
    res = curate_files(paths, tmp_path / "out", workers=2)
    labels = read_labels(tmp_path / "crawl")
    assert res.documents_in == len(labels) == res.kept + sum(res.dropped.values())
    clean_ja = [u for u, lab in labels.items() if lab["kind"] == "clean" and lab["lang"] == "ja"]
    junk = [u for u, lab in labels.items() if lab["kind"] in JUNK_KINDS and lab["kind"] != "mojibake"]
    assert sum(u in res.kept_urls for u in clean_ja) / len(clean_ja) >= 0.9
    assert sum(u not in res.kept_urls for u in junk) / len(junk) >= 0.9
    assert res.duplicate_urls and res.duplicate_urls.isdisjoint(res.kept_urls)
    assert sum(pq.read_metadata(f).num_rows for f in res.output_files) == res.kept
