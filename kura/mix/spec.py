"""Mix specification (`pipelines/mixes/*.yaml`), typed and validated at load time.

A mix is a list of named **phases** (Tanuki trained its 8B model in 15). Each phase has a sequence length, its
sources (asset keys with optional language selectors) with either **weights** (shares of `total_tokens`, summing
to 1) or **absolute token budgets**, an upsampling limit per source (`max_epochs`), an optional chat template and
loss mask for instruction sources, and a **replay fraction**: the share of the phase's tokens drawn from earlier
phases' training data (KARAKURI mixed ~20% pretraining data into fine-tuning against forgetting).

A file without `phases:` (top-level `sources:`) is one phase named after the mix. Errors name the file, the
phase and the field, e.g. "mix default.yaml: phase 'web': source 'synthtic' does not exist (known: ...)".
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator


class MixError(ValueError):
    """A mix that cannot be used, with a message saying what and where."""


class ChatTemplate(BaseModel):
    """How a conversation (list of {role, content} turns) becomes text. Tanuki used plain `user:`/`assistant:`."""

    user_prefix: str = Field("user: ", description="Text before each user turn.")
    assistant_prefix: str = Field("assistant: ", description="Text before each assistant turn.")
    system_prefix: str = Field("system: ", description="Text before a system turn.")
    turn_separator: str = Field("\n", description="Text after every turn.")


class MixSource(BaseModel):
    """One source of a phase."""

    source: str = Field(description="What to draw from: deduplicated (the corpus), synthetic/<dataset> (one named "
                                    "synthetic dataset), or synthetic (every dataset, or those the selectors "
                                    "recipe / teacher / tags / days pick).")
    recipe: list[str] | None = Field(None, description="source synthetic: only datasets of these recipe kinds.")
    teacher: list[str] | None = Field(None, description="source synthetic: only datasets written by these teachers.")
    tags: list[str] | None = Field(None, description="source synthetic: only datasets with one of these tags.")
    days: tuple[str, str] | None = Field(None, description="source synthetic or synthetic/<dataset>: only day shards "
                                                           "from the first to the last date given (inclusive, "
                                                           "YYYY-MM-DD).")
    weight: float | None = Field(None, ge=0, description="Share of the phase's source tokens (with total_tokens).")
    tokens: int | None = Field(None, gt=0, description="Absolute token budget (instead of a weight).")
    lang: str | None = Field(None, description="Only documents of this language (ja, en); all when omitted.")
    min_quality: float | None = Field(None, ge=0, le=1, description="Quality bucket: only documents the quality "
                                                                    "classifier scores at least this high.")
    max_quality: float | None = Field(None, ge=0, le=1, description="Quality bucket: only documents scored "
                                                                    "below this.")
    max_perplexity: float | None = Field(None, gt=0, description="Perplexity filter: only documents the "
                                                                   "reference character n-gram LM (reference_lm "
                                                                   "asset) scores at or below this (CCNet-style).")
    max_perplexity_quantile: float | None = Field(
        None, gt=0, le=1, description="Perplexity bucket by rank, as CCNet cuts (0.33 = its head, 0.66 = head and "
                                      "middle): only documents at or below this quantile of the source's "
                                      "perplexities within their language. Unlike max_perplexity it holds on any "
                                      "corpus: absolute perplexities depend on the reference LM and the text.")
    max_epochs: float = Field(1.0, ge=1.0, description="How often the source may be repeated to meet its budget.")
    chat_template: str | None = Field(None, description="Render the source's conversations with this template "
                                                        "(a key of the mix's chat_templates).")
    loss_mask: Literal["all", "assistant_only"] = Field(
        "all", description="assistant_only: prompt tokens carry no loss (needs a chat_template).")
    optional: bool = Field(False, description="When the source has no usable data (every shard blocked by its "
                                              "gate, or nothing matches its selectors), leave it out of the phase "
                                              "with a warning instead of failing: the other sources' weights are "
                                              "rescaled to the phase's total, absolute budgets stay as they are.")

    @property
    def label(self) -> str:
        q = ""
        if self.min_quality is not None or self.max_quality is not None:
            q = f"[q{self.min_quality if self.min_quality is not None else 0:g}-" \
                f"{self.max_quality if self.max_quality is not None else 1:g}]"
        if self.max_perplexity is not None:
            q += f"[ppl<={self.max_perplexity:g}]"
        if self.max_perplexity_quantile is not None:
            q += f"[ppl<=p{self.max_perplexity_quantile:g}]"
        return self.pool + (f"[{self.lang}]" if self.lang else "") + q

    @property
    def selector(self) -> dict:
        return {k: v for k in ("recipe", "teacher", "tags", "days") if (v := getattr(self, k)) is not None}

    @property
    def pool(self) -> str:
        """The documents this source draws from before language and quality cuts: the source plus its selector."""
        sel = ",".join(f"{k}={'..'.join(v) if k == 'days' else '|'.join(v)}" for k, v in self.selector.items())
        return self.source + (f"{{{sel}}}" if sel else "")

    @property
    def uses_quality(self) -> bool:
        return self.min_quality is not None or self.max_quality is not None

    @property
    def uses_perplexity(self) -> bool:
        return self.max_perplexity is not None or self.max_perplexity_quantile is not None

    @model_validator(mode="after")
    def _one_budget(self) -> "MixSource":
        if (self.weight is None) == (self.tokens is None):
            raise ValueError(f"source {self.label!r}: give exactly one of weight or tokens")
        if (self.min_quality is not None and self.max_quality is not None
                and self.min_quality >= self.max_quality):
            raise ValueError(f"source {self.label!r}: min_quality must be below max_quality")
        if self.loss_mask == "assistant_only" and not self.chat_template:
            raise ValueError(f"source {self.label!r}: loss_mask assistant_only needs a chat_template")
        if any(k != "days" for k in self.selector) and self.source != "synthetic":
            raise ValueError(f"source {self.source!r}: recipe / teacher / tags select among synthetic datasets; "
                             f"use them with source: synthetic")
        if self.days is not None and not self.source.startswith("synthetic"):
            raise ValueError(f"source {self.source!r}: days selects synthetic day shards")
        if self.days is not None and self.days[0] > self.days[1]:
            raise ValueError(f"source {self.label!r}: days {self.days[0]}..{self.days[1]} is an empty range")
        return self


class MixPhase(BaseModel):
    """One training phase of a mix."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="Phase name (asset key suffix).")
    sequence_length: int = Field(gt=0, description="Training sequence length in tokens.")
    total_tokens: int | None = Field(None, gt=0, description="Tokens of the phase when sources have weights.")
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5, description="Share of documents held out for evaluation, "
                                                                    "chosen by a hash of the document id.")
    seed: int = Field(0, description="Seed of the document order within each source.")
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the phase's tokens replayed from the "
                                                                "training data of earlier phases.")
    sources: list[MixSource] = Field(min_length=1, description="The sources and their budgets.")
    tokenizer: str | None = Field(None, description="What the phase packs with: kura's tokenizer asset (default) or "
                                                    "base_model/<name>, an imported base model's own tokenizer (a "
                                                    "run continuing that base trains on this phase).")

    @model_validator(mode="after")
    def _budgets(self) -> "MixPhase":
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"a source appears twice: {labels}")
        weighted = [s for s in self.sources if s.weight is not None]
        if weighted and len(weighted) != len(self.sources):
            raise ValueError("mix weights and absolute token budgets in one phase: use one kind")
        if weighted:
            if self.total_tokens is None:
                raise ValueError("sources have weights but the phase has no total_tokens")
            total = sum(s.weight for s in weighted)
            if total == 0:
                raise ValueError("all weights are zero")
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"weights sum to {total:g}, not 1 ("
                                 + ", ".join(f"{s.label}={s.weight:g}" for s in weighted) + ")")
        elif self.total_tokens is not None:
            raise ValueError("total_tokens is set but sources have absolute token budgets")
        return self

    def source_tokens(self) -> dict[str, int]:
        """Token budget of each source label (replay excluded)."""
        if self.sources[0].weight is not None:
            base = round(self.total_tokens * (1 - self.replay_fraction))
            return {s.label: round(s.weight * base) for s in self.sources}
        return {s.label: s.tokens for s in self.sources}

    def replay_tokens(self) -> int:
        if self.total_tokens is not None:
            return round(self.total_tokens * self.replay_fraction)
        src = sum(s.tokens for s in self.sources)
        return round(src * self.replay_fraction / (1 - self.replay_fraction))


class MixSpec(BaseModel):
    """A data mix: phases trained in order."""

    name: str = Field(description="Mix name, shown in lineage.")
    chat_templates: dict[str, ChatTemplate] = Field(default_factory=lambda: {"plain": ChatTemplate()},
                                                    description="Named chat templates phases may use.")
    phases: list[MixPhase] = Field(min_length=1, description="Training phases, in order.")

    @model_validator(mode="before")
    @classmethod
    def _single_phase_form(cls, raw):
        if isinstance(raw, dict) and "phases" not in raw and "sources" in raw:
            phase = {k: v for k, v in raw.items() if k not in ("name", "chat_templates")}
            return {"name": raw.get("name"), "chat_templates": raw.get("chat_templates", {"plain": {}}),
                    "phases": [{"name": raw.get("name"), **phase}]}
        return raw

    @model_validator(mode="after")
    def _phases(self) -> "MixSpec":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"a phase name appears twice: {names}")
        if self.phases[0].replay_fraction > 0:
            raise ValueError(f"phase {names[0]!r} is the first phase: there is nothing to replay")
        for p in self.phases:
            for s in p.sources:
                if s.chat_template and s.chat_template not in self.chat_templates:
                    raise ValueError(f"phase {p.name!r}: chat_template {s.chat_template!r} is not defined "
                                     f"(defined: {', '.join(self.chat_templates)})")
        return self

    def phase(self, name: str) -> MixPhase:
        return next(p for p in self.phases if p.name == name)


def load_mix(path: str | Path, known_sources: set[str] | None = None,
             max_sequence_length: int | None = None) -> MixSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise MixError(f"mix {path.name}: cannot read: {e}") from e
    try:
        spec = MixSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_where(raw, err["loc"]) + err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise MixError(f"mix {path.name}: {problems}") from None
    for p in spec.phases:
        for s in p.sources:
            if known_sources is not None and s.source not in known_sources:
                raise MixError(f"mix {path.name}: phase {p.name!r}: source {s.source!r} does not exist "
                               f"(known: {', '.join(sorted(known_sources))})")
        if max_sequence_length is not None:
            check_sequence_length(path.name, p, max_sequence_length)
    return spec


def check_sequence_length(where: str, phase: MixPhase, max_sequence_length: int) -> None:
    """A phase may not ask for longer sequences than the tokenizer (and the models using it) declare."""
    if phase.sequence_length > max_sequence_length:
        raise MixError(f"mix {where}: phase {phase.name!r}: sequence_length {phase.sequence_length} exceeds the "
                       f"tokenizer's model_max_length {max_sequence_length}")


def _where(raw, loc) -> str:
    """'phase 'web': sources.0.weight: ' from a pydantic error location."""
    loc = list(loc)
    prefix = ""
    if len(loc) >= 2 and loc[0] == "phases" and isinstance(loc[1], int):
        try:
            prefix = f"phase {raw['phases'][loc[1]].get('name')!r}: "
        except (KeyError, IndexError, TypeError, AttributeError):
            prefix = f"phase #{loc[1]}: "
        loc = loc[2:]
    field = ".".join(str(x) for x in loc if not str(x).startswith("function-"))
    return prefix + (f"{field}: " if field else "")
