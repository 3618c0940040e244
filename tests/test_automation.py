"""Level 2: the corpus sensor adds a partition per new file and requests its ingest; the nightly schedule asks for
the day that just ended."""
from __future__ import annotations

import datetime as dt

import dagster as dg

from kura.corpus.default import DefaultCorpusConfig, write_default_corpus
from assets.synthetic import RECIPE_KINDS
from pipelines.definitions import corpus_files_sensor, synthetic_nightly
from resources import CorpusResource


def test_corpus_sensor_registers_each_new_file_once(tmp_path):
    write_default_corpus(tmp_path / "corpus", DefaultCorpusConfig(n_docs=50))
    corpus = CorpusResource(path=str(tmp_path / "corpus"))
    instance = dg.DagsterInstance.ephemeral()
    ctx = dg.build_sensor_context(instance=instance, resources={"corpus": corpus})
    first = corpus_files_sensor(ctx)
    files = corpus.list_files()
    assert sorted(r.partition_key for r in first.run_requests) == files
    assert first.dynamic_partitions_requests[0].partition_keys == files
    instance.add_dynamic_partitions("corpus_files", files)
    (tmp_path / "corpus" / "new.jsonl").write_text('{"text": "新しいファイルの文書です。"}\n')
    second = corpus_files_sensor(dg.build_sensor_context(instance=instance, resources={"corpus": corpus},
                                                         cursor=first.cursor))
    assert [r.partition_key for r in second.run_requests] == ["new.jsonl"]
    assert second.run_requests[0].run_key == "new.jsonl"


def test_corpus_sensor_backpressure_and_already_ingested_files(tmp_path):
    """A big crawl is registered at once but ingested a few runs at a time; materialized files are skipped."""
    folder = tmp_path / "crawl"
    folder.mkdir()
    for i in range(10):
        (folder / f"part-{i:02d}.jsonl").write_text('{"text": "x"}\n')
    corpus = CorpusResource(path=str(folder), max_runs_in_flight=4)
    instance = dg.DagsterInstance.ephemeral()
    tick = lambda cursor: corpus_files_sensor(dg.build_sensor_context(  # noqa: E731
        instance=instance, resources={"corpus": corpus}, cursor=cursor))
    first = tick(None)
    assert len(first.dynamic_partitions_requests[0].partition_keys) == 10
    assert [r.partition_key for r in first.run_requests] == [f"part-{i:02d}.jsonl" for i in range(4)]
    instance.add_dynamic_partitions("corpus_files", first.dynamic_partitions_requests[0].partition_keys)
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_corpus", partition="part-04.jsonl"))
    from dagster._core.test_utils import create_run_for_test

    for _ in range(2):  # two ingest runs still running: only two more may start
        create_run_for_test(instance, job_name="ingest_job", status=dg.DagsterRunStatus.STARTED)
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["part-05.jsonl", "part-06.jsonl"], \
        "part-04 is already ingested"
    third = tick(second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["part-07.jsonl", "part-08.jsonl"]
    fourth = tick(third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == ["part-09.jsonl"]
    assert not fourth.dynamic_partitions_requests and tick(fourth.cursor).run_requests == []


def test_nightly_schedule_generates_the_day_that_ended():
    ctx = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 22, 2, 0, tzinfo=dt.timezone.utc))
    reqs = list(synthetic_nightly.evaluate_tick(ctx).run_requests)
    assert sorted(r.partition_key for r in reqs) == sorted(f"2026-11-21|{k}" for k in RECIPE_KINDS)
    assert synthetic_nightly.cron_schedule == "0 2 * * *"
