"""vLLM's OpenAI-compatible server as a child process on 127.0.0.1: what `make arena` runs for each kura model
it serves (and what the tests start). The server gets its own process group so stopping it stops vLLM's workers
too; `serve` yields once `/v1/models` answers (the port opens before the model is loaded)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from kura.synth.generators import vllm_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group, SIGKILL after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def serve(model_dir: str, name: str, log_path: Path, max_model_len: int = 512, chat_template: Optional[Path] = None,
          port: Optional[int] = None, timeout_s: float = 480) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL …/v1, process) of a vLLM server for `model_dir` under the served name `name`."""
    port = port or free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--max-model-len", str(max_model_len), "--gpu-memory-utilization", "0.5", "--enforce-eager"]
            + (["--chat-template", str(chat_template)] if chat_template else []),
            env=vllm_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the vLLM server for {name} exited with {proc.returncode}; see {log_path}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()  # noqa: S310
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the vLLM server for {name} did not answer within {timeout_s:.0f} s; "
                                           f"see {log_path}") from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1", proc
        finally:
            stop(proc)
