"""Arena contestants: anything behind an OpenAI-compatible endpoint. A kura run's or trial's Hugging Face export
is served by vLLM (`make arena` starts the server; the model version is the export's content version); an external
model (a frontier API, another team's server) is a base URL, a served model name and the environment variable that
holds its key. Answers are streamed token by token, through the chat API (the server's chat template) or the
completions API (kura's chat template, stopping where the model starts the next user turn).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Literal, Optional

import yaml
from pydantic import BaseModel, Field, model_validator

from kura.mix.spec import ChatTemplate
from kura.pack.chat import conversation_text


class ContestantSpec(BaseModel):
    """One contestant of `pipelines/arena/arena.yaml`."""

    name: str = Field(description="Name on the leaderboard (a kura run's name joins its judge votes).")
    serve: Optional[str] = Field(None, description="A kura model to serve with vLLM: `hf_model/<run>` or "
                                                   "`merged_model/<trial>` (the latest materialization).")
    base_url: Optional[str] = Field(None, description="An OpenAI-compatible endpoint (…/v1) instead of `serve`.")
    model: Optional[str] = Field(None, description="Served model name at the endpoint (default: `name`).")
    api: Literal["chat", "completions"] = Field("chat", description="chat: the server's chat template; "
                                                                    "completions: kura's template.")
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the endpoint's key.")
    version: str = Field("", description="Model version recorded with each vote (served kura models: the "
                                         "export's content version, filled in).")
    max_tokens: int = Field(256, gt=0, description="Answer length limit per turn.")

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.serve) == bool(self.base_url):
            raise ValueError(f"contestant {self.name!r}: give either `serve` (a kura model) or `base_url`")
        return self


class ArenaSpec(BaseModel):
    contestants: list[ContestantSpec] = Field(min_length=2, description="At least two models.")
    prompts: Optional[str] = Field(None, description="A question file (FastChat question.jsonl) raters may draw "
                                                     "from; relative to the spec file.")
    chat_template: ChatTemplate = Field(default_factory=ChatTemplate,
                                        description="Template for completions contestants and served kura models.")
    battles_per_minute: int = Field(6, gt=0, description="Per-rater limit on new battles and turns.")
    max_prompt_chars: int = Field(4000, gt=0, description="Longest prompt accepted.")
    max_turns: int = Field(4, gt=0, description="Turns per battle (follow-ups within one battle).")

    @model_validator(mode="after")
    def _unique(self):
        names = [c.name for c in self.contestants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"contestant names must be unique: {', '.join(dup)}")
        return self


def load_spec(path: Path) -> ArenaSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ArenaSpec.model_validate(raw)
    except (yaml.YAMLError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


class Contestant:
    """A contestant ready to answer: where it is served and how to ask it."""

    def __init__(self, spec: ContestantSpec, base_url: str, template: ChatTemplate, timeout_s: float = 120.0):
        self.spec, self.base_url, self.template, self.timeout_s = spec, base_url, template, timeout_s

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version or self.spec.model or self.spec.name

    def stream(self, history: list[dict]) -> Iterator[str]:
        """The answer to the last user message of `history` ([{role, content}]), piece by piece."""
        from openai import OpenAI

        key = os.environ.get(self.spec.api_key_env, "") if self.spec.api_key_env else ""
        client = OpenAI(base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout_s, max_retries=1)
        model = self.spec.model or self.spec.name
        if self.spec.api == "chat":
            for chunk in client.chat.completions.create(model=model, messages=history, stream=True,
                                                        max_tokens=self.spec.max_tokens, temperature=0.7):
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
            return
        t = self.template
        prompt = conversation_text(history, t) + t.assistant_prefix
        stop = [t.user_prefix.strip()] if t.user_prefix.strip() else None
        for chunk in client.completions.create(model=model, prompt=prompt, stream=True, stop=stop,
                                               max_tokens=self.spec.max_tokens, temperature=0.7):
            if chunk.choices and chunk.choices[0].text:
                yield chunk.choices[0].text
