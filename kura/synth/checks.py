"""Checks on generated records, after a recipe has parsed and validated them: every rejected record gets a reason
and is counted; a shard whose reject rate exceeds `max_reject_rate` fails its blocking asset check.

Reasons: `truncated` (the generation hit max_tokens), `refusal` (the teacher declined: 申し訳ありませんが… /
"I'm sorry, but…"), `degenerate_repetition` (a loop: most of the text lies in repeated character n-grams),
`wrong_language` (the answer is not in the source's language), `copies_source` (MinHash similarity of the answer with the
source document at or above `max_source_similarity`: a rewrite that rewrote nothing) and `near_duplicate` (an answer close to an earlier
answer of the same shard).
"""
from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from kura.dedup.minhash import LSHIndex, MinHashConfig, MinHasher
from kura.text.filters import duplicate_ngram_char_fraction
from kura.text.normalize import detect_language

DEFAULT_REFUSALS = ["申し訳ありません", "お答えできません", "回答できません", "AIアシスタントとして",
                    "i'm sorry, but", "i cannot help", "i can't help", "as an ai"]


class OutputChecks(BaseModel):
    """Thresholds of the checks on generated records."""

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


def check_records(records: list[dict], sources: list[str], finish_reasons: list[str], answers: list[str],
                  cfg: OutputChecks) -> tuple[list[int], list[tuple[int, str]]]:
    """records[i] has `text` and `lang`; sources[i] is its source document, answers[i] the assistant text.
    Returns (indices kept, [(index, reason)] rejected), in order."""
    refusals = [p.lower() for p in cfg.refusal_phrases]
    mh = MinHashConfig(threshold=cfg.near_duplicate_threshold)
    hasher = MinHasher(mh)
    src_sigs = hasher.signatures(sources) if records else []
    ans_sigs = hasher.signatures(answers) if records else []
    index = LSHIndex(mh)
    kept, rejected = [], []
    for i, r in enumerate(records):
        text, answer = r["text"], answers[i]
        low = answer.lower()
        reason = None
        if cfg.reject_truncated and i < len(finish_reasons) and finish_reasons[i] == "length":
            reason = "truncated"
        elif any(p in low for p in refusals):
            reason = "refusal"
        elif duplicate_ngram_char_fraction(text, cfg.repeated_ngram_chars) > cfg.max_repeated_ngram_fraction:
            reason = "degenerate_repetition"
        elif cfg.check_language and r.get("lang") in ("ja", "en") and detect_language(answer)[0] != r["lang"]:
            reason = "wrong_language"
        elif float((ans_sigs[i] == src_sigs[i]).mean()) >= cfg.max_source_similarity:
            reason = "copies_source"
        else:  # answers, not whole records: the question part often comes from the recipe's fixed wording
            keys = hasher.band_keys(ans_sigs[i])
            if index.query(keys, ans_sigs[i]) is not None:
                reason = "near_duplicate"
            else:
                index.add(str(i), keys, ans_sigs[i])
        if reason:
            rejected.append((i, reason))
        else:
            kept.append(i)
    return kept, rejected


def reject_rate(n_prompts: int, reasons: Counter) -> float:
    return sum(reasons.values()) / n_prompts if n_prompts else 0.0
