"""Generator resource: picks the kura generator backend. `local` runs vLLM's offline engine (CPU build here,
the same `vllm.LLM` code the GPU pods run) with transformers as the fallback; `openai` talks to any
OpenAI-compatible endpoint such as a `vllm serve` deployment (the API key comes from the environment)."""

import functools
from typing import Literal, Optional

import dagster as dg

from kura.synth.generators import (Generator, OpenAICompatibleGenerator, TransformersGenerator, VllmGenerator,
                                   served_model_identity, vllm_available)


@functools.lru_cache(maxsize=32)
def _served(base_url: str, model: str, api_key: str) -> dict:
    """One `/v1/models` query per endpoint and process (input versions are computed at every step)."""
    return served_model_identity(base_url, model, api_key)


class GeneratorResource(dg.ConfigurableResource):
    """Which backend generates synthetic data."""

    backend: Literal["auto", "vllm", "transformers", "openai", "kubernetes"] = "auto"
    """auto: vLLM if it is installed, else transformers; kubernetes: a vLLM GPU Job per shard (cluster)."""
    base_url: Optional[str] = None
    """OpenAI-compatible endpoint (backend=openai), e.g. http://vllm.kura.svc:8000/v1."""
    served_model: Optional[str] = None
    """Model name at the endpoint (backend=openai)."""
    api_key: Optional[str] = None
    """Endpoint key; pass dagster.EnvVar(...)."""
    api: Literal["completions", "chat"] = "completions"
    """How the judge speaks to the endpoint (backend=openai): completions (a prompt rendered with kura's chat
    template) or chat (messages; the server applies the model's own chat template: GPT-4-class or instruct judges)."""
    max_concurrency: int = 8
    """Parallel requests to the endpoint."""
    namespace: str = "kura"
    """Namespace of the generation Jobs (backend=kubernetes)."""
    image: str = "ghcr.io/your-org/kura-gpu-vllm:0.1.0"
    """Image of the generation pods (backend=kubernetes)."""
    gpu_pool: str = "gpu"
    """kura.dev/pool label of the GPU nodes (backend=kubernetes)."""
    gpus: int = 1
    """GPUs per generation pod (backend=kubernetes)."""
    s3_endpoint: str = ""
    """KURA_S3_ENDPOINT handed to the pods (backend=kubernetes)."""

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.backend

    def identity(self) -> dict:
        """What about this resource can change an output (in every input version of the assets that use it):
        the backend; for an endpoint its URL, served model name and what `/v1/models` says it serves; for GPU
        pods the image and GPU count. Concurrency, namespaces and the API key are left out."""
        backend = self.resolved_backend()
        ident: dict = {"backend": backend}
        if backend == "openai":
            ident.update(endpoint=self.base_url, model=self.served_model,
                         served=_served(self.base_url or "", self.served_model or "", self.api_key or "EMPTY"))
            if self.api != "completions":  # the judge's prompts reach the model through the server's template
                ident["api"] = self.api
        elif backend == "kubernetes":
            ident.update(image=self.image, gpus=self.gpus)
        return ident

    def model_label(self, local_version: str) -> str:
        """The name lineage shows for the model this resource runs: the endpoint's served model name for an
        OpenAI-compatible backend (where it is served and from which weights is in the input version, not in
        hashed content), else the version of the local model asset it is handed."""
        if self.resolved_backend() == "openai":
            return f"endpoint:{self.served_model}"
        return local_version

    def job_config(self):
        from kura.k8s.manifests import GpuPool, VllmJobConfig

        return VllmJobConfig(namespace=self.namespace, image=self.image, model_pvc=None,
                             gpu=GpuPool(pool=self.gpu_pool, gpus_per_node=self.gpus),
                             env={"KURA_S3_ENDPOINT": self.s3_endpoint} if self.s3_endpoint else {})

    def build_for(self, storage, model_rel: str, context=None) -> Generator:
        """A generator for the teacher stored at `model_rel` under `storage` (a kura Storage): the cluster backend
        hands the pods its URI; the local backends read a local copy. With an asset `context`, the vLLM worker
        (local process or GPU pod) is launched through Dagster Pipes."""
        if self.backend == "kubernetes":
            from resources.kubernetes import KubernetesVllmGenerator

            return KubernetesVllmGenerator(storage, storage.uri(model_rel), self.job_config(), context=context)
        gen = self.build(str(storage.local_dir(model_rel)))
        if context is not None and type(gen) is VllmGenerator:
            from resources.pipes import PipesVllmGenerator

            return PipesVllmGenerator(gen.model_dir, context)
        return gen

    def build_for_teacher(self, storage, model_rel: str, spec, context=None) -> Generator:
        """A generator for a local teacher (`teacher/<name>` of kind trained, hf_folder or kura_run; its spec a
        kura.synth.spec.TeacherSpec): on the cluster a GPU Job that splits the model over tensor × pipeline
        parallel GPUs; here the local backend."""
        if self.backend == "kubernetes":
            from resources.kubernetes import KubernetesVllmGenerator

            return KubernetesVllmGenerator(storage, storage.uri(model_rel), self.job_config(), context=context,
                                           tensor_parallel_size=spec.tensor_parallel_size,
                                           pipeline_parallel_size=spec.pipeline_parallel_size)
        return self.build_for(storage, model_rel, context=context)

    def build(self, model_dir: str) -> Generator:
        backend = self.resolved_backend()
        if backend == "vllm":
            return VllmGenerator(model_dir)
        if backend == "transformers":
            return TransformersGenerator(model_dir)
        if not (self.base_url and self.served_model):
            raise ValueError("backend=openai needs base_url and served_model")
        return OpenAICompatibleGenerator(self.base_url, self.served_model, self.api_key or "EMPTY",
                                         self.max_concurrency, api=self.api)
