"""Checks on generated records, after a recipe has parsed and validated them: an ordered list of small checks
(`OutputChecks.checks`), each one function `(candidate, shard, cfg) -> reason | None` registered with `@check`; the
first reason rejects the record, which is counted; a shard whose reject rate exceeds `max_reject_rate` fails its
blocking asset check.

Reasons (the check names): `truncated` (the generation hit max_tokens), `refusal` (the teacher declined:
申し訳ありませんが… / "I'm sorry, but…"), `degenerate_repetition` (a loop: most of the text lies in repeated
character n-grams), `wrong_language` (the answer is not in the source's language), `copies_source` (MinHash
similarity of the answer with the source document at or above `max_source_similarity`: a rewrite that rewrote
nothing) and `near_duplicate` (an answer close to an earlier kept answer of the same shard).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import BaseModel, Field, model_validator

from kura.dedup.minhash import LSHIndex, MinHashConfig, MinHasher
from kura.registry import Registry
from kura.text.filters import duplicate_ngram_char_fraction
from kura.text.normalize import detect_language

DEFAULT_REFUSALS = ["申し訳ありません", "お答えできません", "回答できません", "AIアシスタントとして",
                    "i'm sorry, but", "i cannot help", "i can't help", "as an ai"]


class OutputChecks(BaseModel):
    """The ordered checks on generated records and their thresholds."""

    checks: list[str] = Field(default_factory=lambda: list(DEFAULT_CHECKS),
                              description="Checks applied in this order (names registered in kura.synth.checks); "
                                          "the first that returns a reason rejects the record.")
    refusal_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS),
                                       description="Case-insensitive phrases that mark a refusal.")
    reject_truncated: bool = Field(True, description="Reject generations that stopped at max_tokens.")
    repeated_ngram_chars: int = Field(20, ge=5, description="n of the repetition check (characters).")
    max_repeated_ngram_fraction: float = Field(0.5, ge=0, le=1, description="Reject when more than this share of "
                                                                            "the characters lie in repeated n-grams.")
    check_language: bool = Field(True, description="Reject answers whose language differs from the source's.")
    max_source_similarity: float = Field(0.9, gt=0, le=1, description="Reject when the MinHash similarity with the "
                                                                      "source document reaches this.")
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="Records at least this similar to an "
                                                                          "earlier record of the shard are dropped.")
    max_reject_rate: float = Field(0.5, ge=0, le=1, description="The shard's blocking check fails above this share "
                                                                "of rejected prompts.")

    @model_validator(mode="after")
    def _known(self) -> "OutputChecks":
        unknown = CHECKS.unknown(self.checks)
        if unknown:
            raise ValueError(f"unknown output check(s) {unknown}: known checks are {sorted(CHECKS)}")
        return self


@dataclass
class Candidate:
    """One parsed record with what the checks look at."""

    index: int
    record: dict
    answer: str
    finish_reason: str
    answer_sig: np.ndarray
    source_sig: np.ndarray


class ShardState:
    """What the checks of one shard share: the MinHash hasher and the index of answers kept so far."""

    def __init__(self, cfg: "OutputChecks"):
        mh = MinHashConfig(threshold=cfg.near_duplicate_threshold)
        self.hasher = MinHasher(mh)
        self.index = LSHIndex(mh)
        self.refusals = [p.lower() for p in cfg.refusal_phrases]

    def keep(self, c: Candidate) -> None:
        self.index.add(str(c.index), self.hasher.band_keys(c.answer_sig), c.answer_sig)


CheckFn = Callable[[Candidate, ShardState, "OutputChecks"], "str | None"]
CHECKS: Registry[CheckFn] = Registry("output check")


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register an output check under `name` (also the reason it gives)."""
    return CHECKS.register(name)


@check("truncated")
def truncated(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    return "truncated" if cfg.reject_truncated and c.finish_reason == "length" else None


@check("refusal")
def refusal(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    low = c.answer.lower()
    return "refusal" if any(p in low for p in shard.refusals) else None


@check("degenerate_repetition")
def degenerate_repetition(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    frac = duplicate_ngram_char_fraction(c.record["text"], cfg.repeated_ngram_chars)
    return "degenerate_repetition" if frac > cfg.max_repeated_ngram_fraction else None


@check("wrong_language")
def wrong_language(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    lang = c.record.get("lang")
    bad = cfg.check_language and lang in ("ja", "en") and detect_language(c.answer)[0] != lang
    return "wrong_language" if bad else None


@check("copies_source")
def copies_source(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    return "copies_source" if float((c.answer_sig == c.source_sig).mean()) >= cfg.max_source_similarity else None


@check("near_duplicate")
def near_duplicate(c: Candidate, shard: ShardState, cfg: "OutputChecks") -> str | None:
    """Answers, not whole records: the question part often comes from the recipe's fixed wording. Only kept
    answers are in the index (check_records adds a record once every check has passed)."""
    hit = shard.index.query(shard.hasher.band_keys(c.answer_sig), c.answer_sig)
    return "near_duplicate" if hit is not None else None


DEFAULT_CHECKS = ["truncated", "refusal", "degenerate_repetition", "wrong_language", "copies_source",
                  "near_duplicate"]


def check_records(records: list[dict], sources: list[str], finish_reasons: list[str], answers: list[str],
                  cfg: OutputChecks) -> tuple[list[int], list[tuple[int, str]]]:
    """records[i] has `text` and `lang`; sources[i] is its source document, answers[i] the assistant text.
    Returns (indices kept, [(index, reason)] rejected), in order."""
    shard = ShardState(cfg)
    src_sigs = shard.hasher.signatures(sources) if records else []
    ans_sigs = shard.hasher.signatures(answers) if records else []
    fns = [CHECKS[name] for name in cfg.checks]
    kept, rejected = [], []
    for i, r in enumerate(records):
        c = Candidate(i, r, answers[i], finish_reasons[i] if i < len(finish_reasons) else "stop", ans_sigs[i],
                      src_sigs[i])
        reason = next((x for x in (fn(c, shard, cfg) for fn in fns) if x), None)
        if reason:
            rejected.append((i, reason))
        else:
            shard.keep(c)
            kept.append(i)
    return kept, rejected


def reject_rate(n_prompts: int, reasons: Counter) -> float:
    return sum(reasons.values()) / n_prompts if n_prompts else 0.0
