"""Generation through Dagster Pipes: the worker's progress lines land in the run's log and its summary comes back
as a Pipes message, locally (PipesSubprocessClient) exactly as from a GPU pod (PipesK8sClient)."""

import tempfile
from pathlib import Path

import dagster as dg

from kura.synth.generators import VllmGenerator, vllm_env


class PipesVllmGenerator(VllmGenerator):
    """The local vLLM backend with its worker launched by PipesSubprocessClient."""

    def __init__(self, model_dir: str, context: dg.AssetExecutionContext, **kw):
        super().__init__(model_dir, **kw)
        self.context = context
        self.messages: list = []

    def run_worker(self, command: list[str]) -> None:
        with tempfile.NamedTemporaryFile(prefix="kura-vllm-worker-", suffix=".log", delete=False) as f:
            log = Path(f.name)
        try:
            invocation = dg.PipesSubprocessClient().run(context=self.context, command=command,
                                                        env={**vllm_env(), "KURA_WORKER_LOG": str(log)})
        except Exception as e:  # the client raises when the worker exits non-zero: say why, with its log
            raise RuntimeError(f"vLLM worker failed: {e}\n{log.read_text(errors='replace')[-4000:]}") from e
        finally:
            self.worker_log_tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            log.unlink(missing_ok=True)
        self.messages = invocation.get_custom_messages()
