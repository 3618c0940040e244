"""Level 2: single assets through Dagster on a folder of bad input; the GX check blocks downstream work."""
from __future__ import annotations

import gzip
import json
import os

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.corpus import cleaned, corpus_partitions, raw_corpus
from resources import CorpusResource, ManifestIOManager, StorageResource

JA = "今日は東京で歴史について学びました。多くの人が鉄道に興味を持っていますが、その文化はあまり知られていません。"


@pytest.fixture
def bad_corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "good.jsonl").write_text("".join(json.dumps({"text": JA + str(i)}, ensure_ascii=False) + "\n"
                                          for i in range(5)))
    (d / "mixed.jsonl").write_bytes(
        (json.dumps({"text": JA}, ensure_ascii=False) + "\n").encode()
        + b'{"text": "unterminated\n' + b'\xc3\x28 invalid utf8\n' + b'{"no_text": 1}\n'
        + (json.dumps({"text": "送料無料\nカートに入れる"}, ensure_ascii=False) + "\n").encode())
    (d / "empty.jsonl").write_bytes(b"")
    blob = gzip.compress(b"".join(json.dumps({"text": JA * 3}, ensure_ascii=False).encode() + b"\n"
                                  for _ in range(300)))
    (d / "truncated.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    (d / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    os.symlink(d / "gone", d / "unreadable.jsonl")
    (d / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    (d / "replacement.jsonl").write_text(json.dumps({"text": JA[:20] + "\ufffd" + JA[20:]}) + "\n")
    return d


def resources(tmp_path, corpus_dir):
    storage = StorageResource(root=str(tmp_path / "storage"))
    return {"storage": storage, "io_manager": ManifestIOManager(storage=storage),
            "corpus": CorpusResource(path=str(corpus_dir))}


def test_bad_input_is_quarantined_counted_and_never_crashes(tmp_path, bad_corpus):
    instance = dg.DagsterInstance.ephemeral()
    (tmp_path / "secret.jsonl").write_text(json.dumps({"text": "outside secret"}) + "\n")
    os.symlink(tmp_path / "secret.jsonl", bad_corpus / "escape.jsonl")  # a link out of the corpus root
    res = resources(tmp_path, bad_corpus)
    keys = res["corpus"].list_files()
    assert "unreadable.jsonl" in keys and "escape.jsonl" in keys and len(keys) == 9
    instance.add_dynamic_partitions(corpus_partitions.name, keys)
    reasons = {}
    for k in keys:
        r = dg.materialize([raw_corpus, cleaned], partition_key=k, instance=instance, resources=res)
        assert r.success, k
        raw = r.output_for_node("raw_corpus")
        reasons[k] = raw["rejected_by_reason"]
        q = pq.read_table(tmp_path / "storage" / raw["dir"] / "quarantine.parquet").to_pylist()
        assert len(q) == raw["rejected"] and all(x["reason"] for x in q)
        md = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization.metadata
        assert md["rejected_by_reason"].value == raw["rejected_by_reason"]
    assert reasons["mixed.jsonl"] == {"malformed_json": 1, "invalid_utf8": 1, "missing_text_field": 1}
    assert reasons["empty.jsonl"] == {"empty_file": 1}
    assert reasons["truncated.jsonl.gz"] == {"truncated_file": 1}
    assert reasons["broken.parquet"] == {"unreadable_parquet": 1}
    assert reasons["unreadable.jsonl"] == {"unreadable_file": 1}
    assert reasons["bad.txt"] == {"invalid_utf8": 1}
    assert reasons["good.jsonl"] == {}
    assert reasons["escape.jsonl"] == {"outside_root": 1}
    assert not [f for f in (tmp_path / "storage").rglob("*") if f.is_file() and b"outside secret" in f.read_bytes()]


def test_failing_gx_check_blocks_downstream_in_the_same_run(tmp_path, bad_corpus):
    """With the U+FFFD filter switched off, a broken document reaches `cleaned`; the blocking GX check fails and
    the downstream asset in the same run does not execute."""
    ran = []

    @dg.asset(partitions_def=corpus_partitions)
    def probe(cleaned: dict):
        ran.append(cleaned["version"])
        return {"version": "x"}

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(corpus_partitions.name, ["replacement.jsonl", "good.jsonl"])
    res = resources(tmp_path, bad_corpus)
    loose = {"ops": {"cleaned": {"config": {"max_replacement_char_fraction": 1.0}}}}
    r = dg.materialize([raw_corpus, cleaned, probe], partition_key="replacement.jsonl", instance=instance,
                       resources=res, run_config=loose, raise_on_error=False)
    checks = {c.check_name: c for c in r.get_asset_check_evaluations()}
    assert checks["every_document_accounted_for"].passed and not checks["gx_documents_suite"].passed
    assert "expect_column_values_to_not_match_regex" in checks["gx_documents_suite"].metadata[
        "failed_expectations"].value
    assert ran == [], "blocked by the failing check"
    r = dg.materialize([raw_corpus, cleaned, probe], partition_key="good.jsonl", instance=instance, resources=res)
    assert r.success and [c.passed for c in r.get_asset_check_evaluations()] == [True, True] and len(ran) == 1
