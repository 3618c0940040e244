"""Kubernetes objects for kura's GPU work, rendered from typed config (one source of truth; no YAML templates to
drift): the vLLM generation Job, the Megatron multi-node Indexed Job with its headless rendezvous Service, and
the Secrets they read. Plain dicts, validated against the official Kubernetes JSON schemas in tests
(kubernetes-validate, strict: unknown fields are errors).

GPU node-pool convention: GPU pods select `kura.dev/pool: <pool>` and tolerate the `nvidia.com/gpu` NoSchedule
taint that GPU node pools carry; they request `nvidia.com/gpu` as both request and limit (extended resources
cannot overcommit). /dev/shm is a memory-backed emptyDir (NCCL and PyTorch data loaders need far more than the
container default of 64 MB). Credentials come from Secrets via `envFrom`; nothing secret is in a spec.
"""
from __future__ import annotations

import shlex

from pydantic import BaseModel, Field
from kura.io.layout import LAYOUT


class GpuPool(BaseModel):
    """Where GPU pods run."""

    pool: str = Field("gpu", description="Value of the kura.dev/pool node label of the GPU node pool.")
    gpus_per_node: int = Field(8, ge=1, description="nvidia.com/gpu requested per pod.")
    gpu_product: str | None = Field(None, description="Optional nvidia.com/gpu.product label (e.g. "
                                                      "NVIDIA-H100-80GB-HBM3) to pin the GPU model.")

    def node_selector(self) -> dict:
        sel = {"kura.dev/pool": self.pool}
        if self.gpu_product:
            sel["nvidia.com/gpu.product"] = self.gpu_product
        return sel

    def tolerations(self) -> list[dict]:
        return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class JobCommon(BaseModel):
    namespace: str = Field("kura", description="Namespace of the jobs.")
    image: str = Field(description="Container image.")
    s3_secret: str = Field("kura-s3", description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra non-secret environment variables.")
    shm_size: str = Field("64Gi", description="Size limit of the memory-backed /dev/shm.")
    cpu: str = Field("16", description="CPU request per pod.")
    memory: str = Field("200Gi", description="Memory request and limit per pod.")
    backoff_limit: int = Field(3, ge=0, description="Pod failures tolerated (pre-emption) before the Job fails.")
    ttl_seconds_after_finished: int = Field(86_400, description="Finished Jobs are garbage-collected after this.")


def _labels(name: str, component: str) -> dict:
    return {"app.kubernetes.io/name": "kura", "app.kubernetes.io/component": component,
            "kura.dev/job": name}


def _env(common: JobCommon, extra: dict[str, str] | None = None) -> list[dict]:
    merged = {**common.env, **(extra or {})}
    return [{"name": k, "value": str(v)} for k, v in sorted(merged.items())]


class VllmJobConfig(JobCommon):
    """The generation pod: kura's vLLM entry point over one request file (prompts + sampling), results to S3."""

    image: str = "ghcr.io/your-org/kura-gpu-vllm:0.1.0"
    gpu: GpuPool = Field(default_factory=lambda: GpuPool(gpus_per_node=1))
    model_pvc: str | None = Field("kura-models", description="PersistentVolumeClaim holding teacher model weights "
                                                            "(None: the worker fetches the model from S3).")
    model_mount: str = Field("/models", description="Where the model volume is mounted.")


def vllm_generation_job(name: str, cfg: VllmJobConfig, request_uri: str, result_uri: str) -> dict:
    """A Job running `python -m kura.synth.vllm_worker <request> <result>` on one GPU node."""
    labels = _labels(name, "synthetic-generation")
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "backoffLimit": cfg.backoff_limit, "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": cfg.gpu.node_selector(), "tolerations": cfg.gpu.tolerations(),
                    "containers": [{
                        "name": "vllm",
                        "image": cfg.image,
                        "command": ["python", "-m", "kura.synth.vllm_worker", request_uri, result_uri],
                        "env": _env(cfg, {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                                          "HF_HUB_OFFLINE": "1"}),
                        "envFrom": [{"secretRef": {"name": cfg.s3_secret}}],
                        "resources": {
                            "requests": {"cpu": cfg.cpu, "memory": cfg.memory,
                                         "nvidia.com/gpu": str(cfg.gpu.gpus_per_node)},
                            "limits": {"memory": cfg.memory, "nvidia.com/gpu": str(cfg.gpu.gpus_per_node)}},
                        "volumeMounts": ([{"name": "models", "mountPath": cfg.model_mount, "readOnly": True}]
                                         if cfg.model_pvc else []) + [{"name": "dshm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": ([{"name": "models", "persistentVolumeClaim": {"claimName": cfg.model_pvc,
                                                                              "readOnly": True}}]
                                if cfg.model_pvc else [])
                    + [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}],
                },
            },
        },
    }


class MegatronJobConfig(JobCommon):
    """A multi-node Megatron-LM run: one pod per node, torchrun rendezvous through a headless Service."""

    image: str = "ghcr.io/your-org/kura-gpu-megatron:0.1.0"
    gpu: GpuPool = Field(default_factory=GpuPool)
    nodes: int = Field(2, ge=1, description="Pods (nodes); pod i gets JOB_COMPLETION_INDEX=i as its node rank.")
    rdzv_port: int = Field(29500, description="torchrun rendezvous port on pod 0.")
    dataset_dvc_path: str = Field(LAYOUT.frozen("packed_dataset/web"), description="DVC-tracked folder pulled by "
                                                                                 "the init container.")
    git_repo: str = Field("https://github.com/your-org/kura.git", description="Repository with the .dvc files.")
    git_rev: str = Field("main", description="Tag or commit of the frozen dataset.")
    checkpoint_pvc: str = Field("kura-checkpoints", description="Shared volume for checkpoints (ReadWriteMany).")
    nccl_env: dict[str, str] = Field(default_factory=lambda: {"NCCL_DEBUG": "WARN", "NCCL_IB_DISABLE": "0",
                                                              "NCCL_SOCKET_IFNAME": "eth0",
                                                              "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"},
                                     description="NCCL settings for the fabric.")


def megatron_training(name: str, cfg: MegatronJobConfig, train_args: list[str],
                      launcher_args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> list[dict]:
    """[headless Service, Indexed Job]. `train_args`: the pretrain_gpt.py arguments (rendered from a run spec).
    `launcher_args`: wrap torchrun in kura's launcher (`kura.train.megatron_lm`: resume / init_from / upcycle
    load flags, log parsing, Dagster Pipes reporting from pod 0); `extra_env`: e.g. the Pipes bootstrap vars."""
    labels = _labels(name, "pretraining")
    svc = name  # pod i is reachable as <name>-<i>.<svc>
    master = f"{name}-0.{svc}.{cfg.namespace}.svc.cluster.local"
    torchrun = ["torchrun", f"--nnodes={cfg.nodes}", f"--nproc-per-node={cfg.gpu.gpus_per_node}",
                "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={master}", f"--master-port={cfg.rdzv_port}",
                "/opt/Megatron-LM/pretrain_gpt.py", *train_args]
    command = (["python", "-m", "kura.train.megatron_lm", *launcher_args, "--", *torchrun]
               if launcher_args is not None else torchrun)
    data_dir = "/data"
    pull = (f"git clone --depth 1 --branch {shlex.quote(cfg.git_rev)} {shlex.quote(cfg.git_repo)} /work/repo && "
            f"cd /work/repo && dvc pull {shlex.quote(cfg.dataset_dvc_path)} && "
            f"cp -r {shlex.quote(cfg.dataset_dvc_path)}/. {data_dir}/")
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc, "namespace": cfg.namespace, "labels": labels},
        "spec": {"clusterIP": "None", "selector": {"kura.dev/job": name}, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rdzv", "port": cfg.rdzv_port, "targetPort": cfg.rdzv_port}]},
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed", "completions": cfg.nodes, "parallelism": cfg.nodes,
            "backoffLimit": cfg.backoff_limit, "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": svc, "restartPolicy": "Never",
                    "nodeSelector": cfg.gpu.node_selector(), "tolerations": cfg.gpu.tolerations(),
                    "initContainers": [{
                        "name": "dvc-pull", "image": cfg.image, "command": ["bash", "-c", pull],
                        "env": _env(cfg, {"DVC_NO_ANALYTICS": "1"}),
                        "envFrom": [{"secretRef": {"name": cfg.s3_secret}}],
                        "volumeMounts": [{"name": "data", "mountPath": data_dir}],
                    }],
                    "containers": [{
                        "name": "megatron", "image": cfg.image, "command": command,
                        "ports": [{"containerPort": cfg.rdzv_port, "name": "rdzv"}],
                        "env": _env(cfg, {**cfg.nccl_env, **(extra_env or {})}),
                        "envFrom": [{"secretRef": {"name": cfg.s3_secret}}],
                        "resources": {
                            "requests": {"cpu": cfg.cpu, "memory": cfg.memory,
                                         "nvidia.com/gpu": str(cfg.gpu.gpus_per_node)},
                            "limits": {"memory": cfg.memory, "nvidia.com/gpu": str(cfg.gpu.gpus_per_node)}},
                        "volumeMounts": [{"name": "data", "mountPath": data_dir, "readOnly": True},
                                         {"name": "checkpoints", "mountPath": "/checkpoints"},
                                         {"name": "dshm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}},
                                {"name": "checkpoints", "persistentVolumeClaim": {"claimName": cfg.checkpoint_pvc}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}}],
                },
            },
        },
    }
    return [service, job]


class PostTrainJobConfig(JobCommon):
    """One post-training trial (LoRA SFT/DPO) on one GPU node: `python -m kura.train.lora <job> <result>`."""

    image: str = "ghcr.io/your-org/kura-gpu-megatron:0.1.0"
    gpu: GpuPool = Field(default_factory=lambda: GpuPool(gpus_per_node=1))
    memory: str = Field("64Gi", description="Memory request and limit per pod.")


def posttrain_job(name: str, cfg: PostTrainJobConfig, job_uri: str, result_uri: str) -> dict:
    """A Job training one trial from a job file on S3 (spec, base model and data URIs); the adapter goes back to
    S3 beside the result."""
    job = vllm_generation_job(name, VllmJobConfig(**{k: getattr(cfg, k) for k in JobCommon.model_fields},
                                                  gpu=cfg.gpu, model_pvc=None), job_uri, result_uri)
    labels = _labels(name, "post-training")
    job["metadata"]["labels"] = job["spec"]["template"]["metadata"]["labels"] = labels
    c = job["spec"]["template"]["spec"]["containers"][0]
    c.update(name="trainer", image=cfg.image, command=["python", "-m", "kura.train.lora", job_uri, result_uri],
             env=_env(cfg, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}))
    return job


def secret(name: str, namespace: str, string_data: dict[str, str]) -> dict:
    """An Opaque Secret. Values are given at render time (from the environment of whoever applies it); kura never
    writes them to the repository or to metadata."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "kura"}},
            "stringData": dict(string_data)}


def validate(obj: dict, version: str = "1.30.0") -> None:
    """Raise kubernetes_validate.ValidationError if `obj` does not match the Kubernetes schema (strict: unknown
    fields are errors too)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)
