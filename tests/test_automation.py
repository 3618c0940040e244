"""Level 2: the corpus sensor adds a partition per new file and requests its ingest; the nightly schedule asks for
the day that just ended."""
from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest

from kura.corpus.default import DefaultCorpusConfig, write_default_corpus
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
    assert [r.partition_key for r in reqs] == ["2026-11-21"], "one run: that day of every synthetic dataset"
    assert synthetic_nightly.cron_schedule == "0 2 * * *"


def test_corpus_sensor_reingests_changed_files_and_removes_deleted_ones(tmp_path):
    """A file rewritten under the same name is ingested again (one run, keyed by its new fingerprint) and its new
    content version reaches `deduplicated`; a deleted file's partition is removed, the next corpus snapshot makes
    `deduplicated` due for automation, and its rebuild leaves the file's documents out, counting them."""
    from pipelines.definitions import build_definitions
    from pipelines.settings import PIPELINES_DIR, Settings

    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = {"a.jsonl": "東京は日本の首都であり、多くの人が住んでいます。", "b.jsonl": "京都には古い寺がたくさんあります。",
             "c.jsonl": "大阪は食べ物がおいしい町として知られています。"}
    for name, text in texts.items():
        (folder / name).write_text("".join(
            f'{{"id": "{name}-{i}", "text": "{text}{i}番目の文書で、内容は少しずつ違います。これは試験のための文章です。"}}\n'
            for i in range(3)), encoding="utf-8")
    s = Settings(env="local", home=tmp_path / "home", storage_root=str(tmp_path / "storage"), corpus_dir=str(folder),
                 mix_file=PIPELINES_DIR / "mixes" / "default.yaml", s3_endpoint=None,
                 teachers_dir=PIPELINES_DIR / "teachers", synthetic_dir=PIPELINES_DIR / "synthetic")
    defs = build_definitions(s)
    instance = dg.DagsterInstance.ephemeral()
    corpus = CorpusResource(path=str(folder))

    def tick(cursor):
        r = corpus_files_sensor(dg.build_sensor_context(instance=instance, resources={"corpus": corpus},
                                                        cursor=cursor))
        for req in r.dynamic_partitions_requests:
            if isinstance(req, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions("corpus_files", list(req.partition_keys))
            else:
                for k in req.partition_keys:
                    instance.delete_dynamic_partition("corpus_files", k)
        return r

    def ingest(key):
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, partition_key=key).success

    def dedup():
        run = defs.resolve_job_def("curate_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("deduplicated")])
        assert run.success
        return run.output_for_node("deduplicated")

    # the corpus stages alone (their downstream follows by the same eager conditions, as after a mix edit),
    # driven tick after tick with the sensor's conditions and the snapshot observed before each tick
    from pipelines.definitions import corpus_snapshot_job
    from tests.automation_driver import drive

    stages = {"raw_corpus", "cleaned", "corpus_snapshot", "deduplicated"}
    corpus_defs = dg.Definitions(assets=[a for a in defs.assets if getattr(a, "key", None)
                                         and a.key.to_user_string() in stages],
                                 resources=defs.resources, jobs=[corpus_snapshot_job])
    cursor = None

    def automated() -> dict:
        nonlocal cursor
        result = drive(corpus_defs, instance, cursor=cursor)
        cursor = result.cursor
        assert result.violations == []
        ev = instance.get_latest_materialization_event(dg.AssetKey("deduplicated"))
        return dict(result.counts), ev.asset_materialization.metadata

    first = tick(None)
    assert sorted(r.partition_key for r in first.run_requests) == sorted(texts)
    for k in texts:
        ingest(k)
    d0 = dedup()
    assert d0["documents_in"] == 9 and d0["removed_shards"] == 0
    assert automated()[0] == {}, "settled: nothing due"
    quiet = tick(first.cursor)
    assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []

    before = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization
    (folder / "a.jsonl").write_text('{"id": "a-new", "text": "書き換えられたファイルの新しい文書です。内容は前と違います。"}\n',
                                    encoding="utf-8")
    changed = tick(quiet.cursor)
    assert [(r.partition_key, r.run_key.split("@")[0]) for r in changed.run_requests] == [("a.jsonl", "a.jsonl")]
    assert changed.run_requests[0].run_key != "a.jsonl", "the re-ingest is keyed by the new fingerprint"
    assert tick(changed.cursor).run_requests == [], "one change, one run"
    ingest("a.jsonl")
    after = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus")).asset_materialization
    assert after.partition == "a.jsonl" and after.metadata["source_sha256"] != before.metadata["source_sha256"]
    counts, md = automated()
    assert counts == {("deduplicated", None): 1}, "the changed file: one rebuild"
    d1 = dedup()  # the same inputs again: reused, and its manifest to compare with
    assert d1["documents_in"] == 7 and d1["version"] != d0["version"] and md["documents_in"].value == 7
    assert automated()[0] == {}, "a reuse with the same version is no update"

    (folder / "b.jsonl").unlink()
    removed = tick(changed.cursor)
    assert [type(r).__name__ for r in removed.dynamic_partitions_requests] == ["DeleteDynamicPartitionsRequest"]
    assert list(removed.dynamic_partitions_requests[0].partition_keys) == ["b.jsonl"]
    assert removed.run_requests == [], "nothing to ingest: the snapshot, not the sensor, makes deduplicated stale"
    assert "b.jsonl" not in instance.get_dynamic_partitions("corpus_files")
    due = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert defs.resolve_job_def("corpus_snapshot_job").execute_in_process(instance=instance).success
    due = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=due.cursor)
    assert due.get_num_requested(dg.AssetKey("deduplicated")) == 1, "the observed removal makes it due"
    counts, md = automated()
    assert counts == {("deduplicated", None): 1}, "the deleted file: one rebuild"
    d2 = dedup()
    assert d2["documents_in"] == 4 and d2["removed_shards"] == 1
    assert d2["removed_documents"] == d1["kept_by_shard"]["b.jsonl"] and d2["kept"] == d1["kept"] - d2["removed_documents"]
    assert tick(removed.cursor).run_requests == []
    assert automated()[0] == {}, "settled again"

    (folder / "d.jsonl").write_text("".join(
        f'{{"id": "d-{i}", "text": "名古屋は城と味噌かつで知られる町です。{i}番目の文書で、内容は少しずつ違います。これは試験のための文章です。"}}\n'
        for i in range(3)), encoding="utf-8")
    added = tick(removed.cursor)
    assert [r.partition_key for r in added.run_requests] == ["d.jsonl"]
    ingest("d.jsonl")
    counts, md = automated()
    assert counts == {("deduplicated", None): 1} and md["documents_in"].value == 7, "the new file: one rebuild"


@pytest.mark.slow
def test_staleness_reaches_through_a_fan_in_of_150_shards(tmp_path):
    """Dagster computes no staleness through an edge that fans in more than 100 partitions; kura's one-partition
    `corpus_snapshot` carries it: after one of 150 shards changes, deduplicated is STALE in Dagster's own
    stale-status API (and FRESH without the snapshot observation: the gap it closes), automation requests it and its
    downstream, and once it is rebuilt its downstream (teacher/demo) is STALE in turn."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from pipelines.definitions import build_definitions
    from pipelines.settings import PIPELINES_DIR, Settings

    folder = tmp_path / "crawl"
    folder.mkdir()
    for i in range(150):
        (folder / f"page-{i:03d}.jsonl").write_text(
            f'{{"text": "第{i}号の記事です。この町の{i * 7 % 13}番目の通りには古い店が{i % 9 + 2}軒並んでいます。"}}\n',
            encoding="utf-8")
    teachers = tmp_path / "teachers"  # the default mix's datasets, by teachers that train in a moment
    shutil.copytree(PIPELINES_DIR / "synthetic", tmp_path / "synthetic", ignore=shutil.ignore_patterns("examples"))
    teachers.mkdir()
    for name in ("demo", "demo_small"):
        (teachers / f"{name}.yaml").write_text("kind: trained\ntrain: {steps: 2}\nmax_examples: 20\n")
    s = Settings(env="local", home=tmp_path / "home", storage_root=str(tmp_path / "storage"), corpus_dir=str(folder),
                 mix_file=PIPELINES_DIR / "mixes" / "default.yaml", s3_endpoint=None, teachers_dir=teachers,
                 synthetic_dir=tmp_path / "synthetic")
    defs = build_definitions(s)
    instance = dg.DagsterInstance.ephemeral()
    keys = sorted(p.name for p in folder.iterdir())
    instance.add_dynamic_partitions("corpus_files", keys)
    ingest = defs.resolve_job_def("ingest_job")
    for k in keys:
        assert ingest.execute_in_process(instance=instance, partition_key=k).success
    observe = defs.resolve_job_def("corpus_snapshot_job")
    assert observe.execute_in_process(instance=instance).success
    curate = defs.resolve_job_def("curate_job")
    assert curate.execute_in_process(instance=instance, asset_selection=[
        dg.AssetKey("deduplicated"), dg.AssetKey(["teacher", "demo"])]).success
    graph = defs.resolve_asset_graph()

    def status(key):
        r = get_stale_status_resolver(instance, list(graph.assets_defs))
        return r.get_status(dg.AssetKey.from_user_string(key)), [(c.reason, c.dependency and c.dependency.asset_key.to_user_string())
                                                for c in r.get_stale_causes(dg.AssetKey.from_user_string(key))]

    assert status("deduplicated")[0] == status("teacher/demo")[0] == StaleStatus.FRESH
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    (folder / "page-042.jsonl").write_text('{"text": "書き換えられた記事です。内容は前とまったく違います。"}\n',
                                           encoding="utf-8")
    assert ingest.execute_in_process(instance=instance, partition_key="page-042.jsonl").success
    assert status("deduplicated")[0] == StaleStatus.FRESH, "Dagster's own edge: >100 partitions, no staleness"
    assert observe.execute_in_process(instance=instance).success
    st, causes = status("deduplicated")
    assert st == StaleStatus.STALE and ("has a new dependency data version", "corpus_snapshot") in causes
    due = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert due.get_num_requested(dg.AssetKey("deduplicated")) == 1
    assert due.get_num_requested(dg.AssetKey(["teacher", "demo"])) == 1, "the eager cascade, in the same tick"
    assert curate.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("deduplicated")]).success
    assert status("deduplicated")[0] == StaleStatus.FRESH
    assert status("teacher/demo")[0] == StaleStatus.STALE


def test_model_resources_are_observed_with_their_identity(tmp_path, monkeypatch):
    """`observe_models_job` records one observation per model resource (the teacher behind `generator`, the judge)
    whose data version is the hash of the resource's identity; an endpoint that does not answer fails the
    observation with one sentence naming it, and the API key appears nowhere."""
    from kura.io import stable_hash
    from pipelines.definitions import build_definitions
    from pipelines.settings import PIPELINES_DIR, Settings
    from tests.conftest import free_port

    def settings(**kw):
        return Settings(env="local", home=tmp_path / "home", storage_root=str(tmp_path / "storage"),
                        corpus_dir=str(tmp_path), mix_file=PIPELINES_DIR / "mixes" / "default.yaml",
                        s3_endpoint=None, teachers_dir=PIPELINES_DIR / "teachers",
                        synthetic_dir=PIPELINES_DIR / "synthetic", **kw)

    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(settings())
    assert defs.resolve_job_def("observe_models_job").execute_in_process(instance=instance).success
    for name in ("generator", "judge"):
        rec = instance.fetch_observations(dg.AssetKey(["resource", name]), limit=1).records[0].asset_observation
        ident = defs.resources[name].identity()
        assert rec.metadata["identity"].value == ident and rec.data_version == stable_hash(ident)
    monkeypatch.setenv("KURA_JUDGE_API_KEY", "sk-secret-judge-key")
    url = f"http://127.0.0.1:{free_port()}/v1"
    run = build_definitions(settings(judge_url=url)).resolve_job_def("observe_models_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure).event_specific_data.error
    assert f"the endpoint {url} did not answer" in failure.to_string()
    assert "sk-secret-judge-key" not in failure.to_string()
