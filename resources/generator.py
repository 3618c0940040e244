"""Generator resource: picks the kura generator backend. `local` runs vLLM's offline engine (CPU build here,
the same `vllm.LLM` code the GPU pods run) with transformers as the fallback; `openai` talks to any
OpenAI-compatible endpoint such as a `vllm serve` deployment (the API key comes from the environment)."""

from typing import Literal, Optional

import dagster as dg

from kura.synth.generators import (Generator, OpenAICompatibleGenerator, TransformersGenerator, VllmGenerator,
                                   vllm_available)


class GeneratorResource(dg.ConfigurableResource):
    """Which backend generates synthetic data."""

    backend: Literal["auto", "vllm", "transformers", "openai"] = "auto"
    """auto: vLLM if it is installed, else transformers."""
    base_url: Optional[str] = None
    """OpenAI-compatible endpoint (backend=openai), e.g. http://vllm.kura.svc:8000/v1."""
    served_model: Optional[str] = None
    """Model name at the endpoint (backend=openai)."""
    api_key: Optional[str] = None
    """Endpoint key; pass dagster.EnvVar(...)."""
    max_concurrency: int = 8
    """Parallel requests to the endpoint."""

    def build(self, model_dir: str) -> Generator:
        backend = self.backend
        if backend == "auto":
            backend = "vllm" if vllm_available() else "transformers"
        if backend == "vllm":
            return VllmGenerator(model_dir)
        if backend == "transformers":
            return TransformersGenerator(model_dir)
        if not (self.base_url and self.served_model):
            raise ValueError("backend=openai needs base_url and served_model")
        return OpenAICompatibleGenerator(self.base_url, self.served_model, self.api_key or "EMPTY",
                                         self.max_concurrency)
