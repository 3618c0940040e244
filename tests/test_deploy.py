"""Level 2: the production storage section (rendered from the same settings as the Helm values) against a real
PostgreSQL server; the checked-in Helm values are the rendered ones."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from kura.k8s.helm import DeploySettings, PostgresSettings, helm_values, instance_config

ROOT = Path(__file__).resolve().parents[1]


def test_materialization_with_run_and_event_storage_in_postgres(postgres_server, tmp_path, monkeypatch):
    import psycopg2

    from assets.corpus import cleaned, corpus_partitions, raw_corpus
    from kura.corpus.default import DefaultCorpusConfig, write_default_corpus
    from resources import CorpusResource, ManifestIOManager, StorageResource

    pg = PostgresSettings(host=postgres_server.host, port=postgres_server.port)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(pg)))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres_server.password)
    write_default_corpus(tmp_path / "corpus", DefaultCorpusConfig(n_docs=60))
    storage = StorageResource(root=str(tmp_path / "storage"))
    res = {"storage": storage, "io_manager": ManifestIOManager(storage=storage),
           "corpus": CorpusResource(path=str(tmp_path / "corpus"))}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions(corpus_partitions.name, ["web-00.jsonl"])
        r = dg.materialize([raw_corpus, cleaned], partition_key="web-00.jsonl", instance=instance, resources=res)
        assert r.success
    with dg.DagsterInstance.from_config(str(home)) as again:  # a second process sees the same history
        ev = again.get_latest_materialization_event(dg.AssetKey("cleaned"))
        assert ev is not None and ev.asset_materialization.partition == "web-00.jsonl"
    with psycopg2.connect(host=postgres_server.host, port=postgres_server.port, user=postgres_server.user,
                          password=postgres_server.password, dbname=postgres_server.database) as conn:
        cur = conn.cursor()
        cur.execute("select status from runs where run_id = %s", (r.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("select count(*) from event_logs where run_id = %s", (r.run_id,))
        assert cur.fetchone()[0] > 10
    assert postgres_server.password not in (home / "dagster.yaml").read_text(), "the password stays in the env"


def test_checked_in_helm_values_are_the_rendered_ones():
    want = helm_values(DeploySettings())
    got = yaml.safe_load((ROOT / "k8s" / "values.yaml").read_text())
    assert got == want, "k8s/values.yaml drifted: regenerate with `python -m pipelines.cli k8s`"
    storage = instance_config(DeploySettings().postgres)["storage"]["postgres"]["postgres_db"]
    pg = want["postgresql"]
    assert (storage["hostname"], storage["username"], storage["db_name"], storage["port"], storage["scheme"]) == \
        (pg["postgresqlHost"], pg["postgresqlUsername"], pg["postgresqlDatabase"], pg["service"]["port"],
         pg["postgresqlScheme"])
    assert storage["password"] == {"env": "DAGSTER_PG_PASSWORD"} and want["telemetry"] == {"enabled": False}
    assert want["runLauncher"]["type"] == "K8sRunLauncher"
