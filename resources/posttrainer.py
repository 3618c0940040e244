"""Post-trainer resource: where a LoRA SFT/DPO trial trains. `local`: in the step's process (CPU for the tiny
models of tests and the demo, or a local GPU). `kubernetes`: one GPU Job per trial running `kura.train.lora`
(rendered by kura.k8s.manifests.posttrain_job, schema-validated in tests): the job file (spec, tokenized examples,
base model URI) goes to `<storage>/_posttrain/<hash>/`, the pod writes the adapter and the result next to it, and a
retried step whose pod already finished reuses them."""
import json
import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

from kura.io import stable_hash
from kura.k8s.manifests import GpuPool, PostTrainJobConfig, posttrain_job
from kura.train import lora
from kura.train.trials import TrialSpec
from kura.io.layout import LAYOUT


class PostTrainerResource(dg.ConfigurableResource):
    """Runs post-training trials: `local` or `kubernetes` (one GPU Job per trial)."""

    backend: str = Field("local", description="local | kubernetes")
    namespace: str = Field("kura", description="Namespace of the trial Jobs.")
    image: str = Field("ghcr.io/your-org/kura-gpu-megatron:0.1.0", description="Training image (torch, peft).")
    gpu_pool: str = Field("gpu", description="kura.dev/pool label of the GPU nodes.")
    s3_endpoint: str = Field("", description="KURA_S3_ENDPOINT handed to the pods.")
    timeout_s: int = Field(24 * 3600, description="Longest a trial Job may take.")
    checkpoint_seconds: float = Field(60.0, description="Local trials write a resume point this often (seconds), "
                                      "so a killed trial loses at most this much; results do not depend on it.")

    def identity(self) -> dict:
        """What can change a trained result: where it trains (local CPU/GPU vs the cluster) and, on the cluster,
        the image that holds the training stack. Namespaces, buckets, claims and timeouts are left out."""
        return {"backend": self.backend, **({"image": self.image} if self.backend == "kubernetes" else {})}

    def job_object(self, name: str, job_uri: str, result_uri: str) -> dict:
        cfg = PostTrainJobConfig(namespace=self.namespace, image=self.image, gpu=GpuPool(pool=self.gpu_pool,
                                                                                          gpus_per_node=1),
                                 env={"KURA_S3_ENDPOINT": self.s3_endpoint} if self.s3_endpoint else {})
        return posttrain_job(name, cfg, job_uri, result_uri)

    def train(self, context, storage, spec: TrialSpec, base_rel: str, stage: Path, *, examples: list, pad_id: int,
              manifest: dict, work_dir: Path | None = None) -> dict:
        """Train one trial. Locally, `work_dir` holds the trial's resume point: a killed trial continues from it
        (on the cluster a restarted pod starts the trial again)."""
        if self.backend == "local":
            def progress(r):
                if r["step"] % 5 == 0 or r["step"] == r["steps"] - 1:
                    context.log.info(f"step {r['step'] + 1}/{r['steps']} loss {r['loss']}")

            stats = lora.train(spec, storage.local_dir(base_rel), stage, examples=examples, pad_id=pad_id,
                               manifest=manifest, progress=progress, work_dir=work_dir,
                               checkpoint_seconds=self.checkpoint_seconds)
            if stats.get("resumed_from") is not None:
                context.log.info(f"trial {context.partition_key}: resumed at step {stats['resumed_from']} of "
                                 f"{stats['steps']}")
            return stats
        if self.backend != "kubernetes":
            raise ValueError(f"unknown post-trainer backend {self.backend!r} (local | kubernetes)")
        from resources.kubernetes import create_or_attach, k8s_client

        job = {"spec": spec.model_dump(), "base_dir": storage.uri(base_rel), "examples": examples,
               "pad_id": pad_id, "manifest": manifest}
        h = stable_hash(job)
        rel = LAYOUT.posttrain(h)
        job["out_uri"] = storage.uri(f"{rel}/adapter")
        if not storage.exists(f"{rel}/result.json"):
            storage.write_json(f"{rel}/job.json", job)
            name = f"kura-trial-{h[:12]}"
            client = k8s_client()
            create_or_attach(client.batch_api.create_namespaced_job, self.namespace,
                             self.job_object(name, storage.uri(f"{rel}/job.json"), storage.uri(f"{rel}/result.json")))
            client.wait_for_job_success(name, self.namespace, wait_timeout=self.timeout_s)
        shutil.copytree(storage.local_dir(f"{rel}/adapter"), stage / "adapter")
        return json.loads(storage.read_bytes(f"{rel}/result.json"))
