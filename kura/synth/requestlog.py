"""Request-level resume for generation: a durable append-only log of finished generations per shard.

Every request has a content hash (prompt + sampling + model + recipe template); each finished batch is appended
to `<shard>.requests.jsonl` and fsynced before the next batch starts. A killed or pre-empted generation restarts,
reads the log, and sends only the prompts whose hash is not in it. A torn last line (the process died while
writing it) is ignored — its requests are simply generated again. Every backend seeds each request from the
sampling seed and the prompt itself (never from its position in a batch), so completions do not depend on how the
work was split into batches or runs, and the final shard — assembled from the log in prompt order — is identical
whether or not the run was interrupted.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from kura.synth.generators import GenerationResult, Generator, SamplingConfig


def request_key(prompt: str, sampling: SamplingConfig, model: str, recipe: str) -> str:
    blob = json.dumps({"prompt": prompt, "sampling": sampling.__dict__, "model": model, "recipe": recipe},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestLog:
    """key → {completion, prompt_tokens, completion_tokens}, persisted as JSON lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        self.torn_lines = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.done[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                        self.torn_lines += 1  # a write cut short by a kill: generated again

    def append(self, recs: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() and self.torn_lines:
                f.write(b"\n")  # never glue a new record onto a torn line
                self.torn_lines = 0
            f.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in recs))
            f.flush()
            os.fsync(f.fileno())
        for r in recs:
            self.done[r["key"]] = r


@dataclass
class ResumableResult:
    generation: GenerationResult   # completions for all prompts, in order; token counts and seconds of new work
    generated: int                 # prompts sent to the generator in this run
    resumed: int                   # prompts answered from the log


def generate_resumable(generator: Generator, prompts: list[str], sampling: SamplingConfig, log: RequestLog,
                       model: str, recipe: str, batch_size: int = 64) -> ResumableResult:
    keys = [request_key(p, sampling, model, recipe) for p in prompts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in log.done}.values())  # first position per key
    resumed = len(prompts) - len(todo)
    p_tok = c_tok = 0
    seconds = 0.0
    backend, extra = generator.name, {}
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        res = generator.generate([prompts[i] for i in idx], sampling)
        backend, extra = res.backend, res.extra
        p_tok += res.prompt_tokens
        c_tok += res.completion_tokens
        seconds += res.seconds
        finish = res.finish_reasons or ["stop"] * len(idx)
        log.append([{"key": keys[i], "completion": c, "finish_reason": f}
                    for i, c, f in zip(idx, res.completions, finish)])
    completions = [log.done[k]["completion"] for k in keys]
    finish = [log.done[k].get("finish_reason", "stop") for k in keys]
    return ResumableResult(GenerationResult(completions, p_tok, c_tok, seconds, backend, extra, finish),
                           generated=len(todo), resumed=resumed)
