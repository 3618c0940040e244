"""Trainer resource: where a pretraining run executes. Two implementations behind one call, `train(...)`.

- `local`: kura's megatron-core trainer in the step's process (CPU fp32, or one GPU), resumable from its work
  folder on the storage root's local side; progress lines go to the Dagster run log.
- `kubernetes`: Megatron-LM's pretrain_gpt.py on a multi-node Indexed Job (headless Service for torchrun
  rendezvous, `dvc pull` of the frozen packed dataset in an init container, checkpoints on a shared volume),
  rendered from the same RunSpec. It is launched inside a Dagster Pipes session: the bootstrap variables go into the
  pods' environment, pod 0's launcher (kura.train.megatron_lm) reports iterations and the final figures, and the
  messages come back through S3 (PipesS3MessageReader) into the run's log and the materialization metadata. Pod 0
  then converts the final torch_dist checkpoint to kura's format and uploads it to `export_uri`, so `hf_model` and
  everything after it work the same for cluster runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from kura.k8s.manifests import GpuPool, MegatronJobConfig, megatron_training
from kura.train.megatron_lm import pretrain_gpt_args
from kura.train.spec import RunSpec


class TrainerResource(dg.ConfigurableResource):
    """Runs pretraining: `local` (megatron-core in-process) or `kubernetes` (Megatron-LM Indexed Job via Pipes)."""

    backend: str = Field("local", description="local | kubernetes")
    namespace: str = Field("kura", description="Kubernetes namespace of training Jobs.")
    image: str = Field("ghcr.io/your-org/kura-gpu-megatron:0.1.0", description="Megatron-LM image (k8s/docker).")
    gpu_pool: str = Field("gpu", description="kura.dev/pool label of the GPU node pool.")
    checkpoint_pvc: str = Field("kura-checkpoints", description="ReadWriteMany claim holding checkpoints.")
    git_repo: str = Field("https://github.com/your-org/kura.git", description="Repository with the DVC files.")
    git_rev: str = Field("main", description="Tag or commit whose frozen dataset the pods pull.")
    pipes_bucket: str = Field("", description="S3 bucket for Pipes messages (cluster backend).")
    s3_endpoint: str = Field("", description="S3 endpoint for Pipes messages; empty = AWS.")
    timeout_s: int = Field(14 * 24 * 3600, description="Longest a cluster run may take.")

    def identity(self) -> dict:
        """What can change a trained result: where it trains (local CPU/GPU vs the cluster) and, on the cluster,
        the image that holds the training stack. Namespaces, buckets, claims and timeouts are left out."""
        return {"backend": self.backend, **({"image": self.image} if self.backend == "kubernetes" else {})}

    def job_objects(self, spec: RunSpec, *, seq_length: int, blend: list, dataset_dvc_path: str,
                    parent: Optional[str], extra_env: Optional[dict] = None, export_uri: Optional[str] = None,
                    vocab_size: Optional[int] = None) -> list[dict]:
        """[Service, Indexed Job] of a run (validated in tests against the Kubernetes schemas)."""
        name = f"kura-pretrain-{spec.name.replace('_', '-')}"
        cfg = MegatronJobConfig(namespace=self.namespace, image=self.image, nodes=spec.resources.nodes,
                                gpu=GpuPool(pool=self.gpu_pool, gpus_per_node=spec.resources.gpus_per_node),
                                checkpoint_pvc=self.checkpoint_pvc, git_repo=self.git_repo, git_rev=self.git_rev,
                                dataset_dvc_path=dataset_dvc_path)
        save = f"/checkpoints/{spec.name}"
        args = pretrain_gpt_args(spec, seq_length=seq_length, blend=blend, data_dir="/data",
                                 tokenizer_model="/data/tokenizer.model", save_dir=save)
        launcher = ["--save", save, *(["--parent", f"/checkpoints/{parent}"] if parent else []),
                    *(["--upcycle"] if spec.upcycle else []), "--align-packed"]
        if export_uri:  # pod 0 converts the final torch_dist checkpoint to kura's format and uploads it there
            launcher += ["--export", export_uri, "--export-config", json.dumps(
                {"spec": spec.model_dump(), "vocab_size": vocab_size, "seq_length": seq_length}, sort_keys=True)]
        env = {**({"KURA_S3_ENDPOINT": self.s3_endpoint} if self.s3_endpoint else {}), **(extra_env or {})}
        return megatron_training(name, cfg, args, launcher_args=launcher, extra_env=env)

    def train(self, context: dg.AssetExecutionContext, spec: RunSpec, *, packed_dir: Path, work_dir: Path,
              out_dir: Path, vocab_size: int, seq_length: int, init_weights: Optional[Path], lineage: dict,
              train_iters: Optional[int] = None, blend: Optional[list] = None, parent: Optional[str] = None,
              dataset_dvc_path: str = "", export_uri: Optional[str] = None,
              init_optimizer: Optional[Path] = None) -> dict[str, Any]:
        """Train; the local backend writes the checkpoint into `out_dir`, the cluster one leaves Megatron's
        checkpoints on the volume and uploads the converted final weights to `export_uri`."""
        if self.backend == "local":
            from kura.train.pretrain import pretrain

            def progress(r):
                context.log.info(f"{spec.name} step {r['step'] + 1}/{r['iters']} loss {r['loss']} lr {r['lr']:.2e} "
                                 f"{r['tokens_per_second']:.0f} tok/s")

            return pretrain(spec, packed_dir, work_dir, out_dir, vocab_size=vocab_size, seq_length=seq_length,
                            init_weights=init_weights, lineage=lineage, train_iters=train_iters, progress=progress,
                            init_optimizer=init_optimizer)
        if self.backend == "kubernetes":
            if not export_uri:
                raise ValueError("the kubernetes trainer needs export_uri (where pod 0 uploads the final weights)")
            if spec.resume_optimizer:
                raise ValueError(f"run {spec.name}: resume_optimizer works with the local trainer only so far (the "
                                 f"launcher loads a parent with --finetune, a fresh optimizer); remove it from "
                                 f"pipelines/runs/{spec.name}.yaml for cluster runs")
            if parent and parent.startswith("base_model/"):
                raise ValueError(f"run {spec.name}: a cluster run cannot start from {parent} yet (its pods load a "
                                 f"Megatron torch_dist parent; the import writes kura's checkpoint only); train it "
                                 f"with the local trainer, or start it from a kura run")
            if spec.rollback_on_spike:
                raise ValueError(f"run {spec.name}: rollback_on_spike works with the local trainer only (Megatron-LM "
                                 f"has no rollback); remove it from pipelines/runs/{spec.name}.yaml for cluster runs "
                                 f"— the checkpoint's no_loss_spikes check still reports the spikes")
            return self._train_k8s(context, spec, seq_length=seq_length, blend=blend or [],
                                   dataset_dvc_path=dataset_dvc_path, parent=parent, export_uri=export_uri,
                                   vocab_size=vocab_size)
        raise ValueError(f"unknown trainer backend {self.backend!r} (local | kubernetes)")

    def _train_k8s(self, context, spec: RunSpec, *, seq_length: int, blend: list, dataset_dvc_path: str,
                   parent: Optional[str], export_uri: str, vocab_size: int) -> dict:
        import boto3
        from dagster import open_pipes_session
        from dagster._core.pipes.utils import PipesEnvContextInjector
        from dagster_aws.pipes import PipesS3MessageReader

        from resources.kubernetes import create_or_attach, k8s_client

        if not self.pipes_bucket:
            raise ValueError("the kubernetes trainer needs pipes_bucket (S3 bucket for Dagster Pipes messages)")
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint or None)
        with open_pipes_session(context=context, context_injector=PipesEnvContextInjector(),
                                message_reader=PipesS3MessageReader(bucket=self.pipes_bucket, client=s3)) as session:
            service, job = self.job_objects(spec, seq_length=seq_length, blend=blend,
                                            dataset_dvc_path=dataset_dvc_path, parent=parent,
                                            extra_env=session.get_bootstrap_env_vars(), export_uri=export_uri,
                                            vocab_size=vocab_size)
            client = k8s_client()
            create_or_attach(client.core_api.create_namespaced_service, self.namespace, service)
            create_or_attach(client.batch_api.create_namespaced_job, self.namespace, job)
            client.wait_for_job_success(job["metadata"]["name"], self.namespace, wait_timeout=self.timeout_s)
        md = {}
        for ev in session.get_results():
            md.update({k: v.value for k, v in (ev.metadata or {}).items()})
        return {"run": spec.name, "backend": "kubernetes", "checkpoint": f"/checkpoints/{spec.name}",
                "final_loss": md.get("final_loss"), "iterations": md.get("iterations"),
                "tflops_per_gpu": md.get("tflops_per_gpu"), "loss_curve": md.get("loss_curve") or [],
                # every pod's GPUs for the job's wall time, as the launcher reported it over Pipes
                "gpu_hours": None if md.get("train_seconds") is None else round(
                    md["train_seconds"] * spec.resources.nodes * spec.resources.gpus_per_node / 3600, 4),
                "train_seconds": md.get("train_seconds"), "weights_uri": export_uri,
                "converted_from": md.get("converted_from")}
