"""Reviewing what the rules dropped: per-reason counts and reproducible samples from the `cleaned` stage's
quarantine files, so a rule's drops can be read before its threshold is trusted (`python -m pipelines.cli drops`).

A rule matches a reason by name or family prefix: `ja_` selects every Japanese rule, `lang_` every language drop.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class DropSample:
    partition: str
    doc_id: str
    source: str
    reason: str
    text: str


@dataclass
class DropReview:
    counts: Counter = field(default_factory=Counter)
    samples: dict[str, list[DropSample]] = field(default_factory=dict)
    partitions: int = 0


def matches(reason: str, rule: str | None) -> bool:
    return rule is None or reason == rule or (rule.endswith("_") and reason.startswith(rule))


def review_drops(shards: Iterable[tuple[str, list[dict]]], rule: str | None = None, sample: int = 20,
                 seed: int = 0) -> DropReview:
    """`shards`: (partition, quarantine rows with doc_id, source, reason, text). Samples `sample` drops per reason
    by reservoir sampling (one pass, memory bounded by the samples), the same ones for the same seed and input."""
    out = DropReview()
    rng = random.Random(seed)
    for part, rows in shards:
        out.partitions += 1
        for r in rows:
            reason = r["reason"]
            if not matches(reason, rule):
                continue
            out.counts[reason] += 1
            kept = out.samples.setdefault(reason, [])
            s = DropSample(part, r["doc_id"], r["source"], reason, r["text"])
            if len(kept) < sample:
                kept.append(s)
            else:
                j = rng.randrange(out.counts[reason])
                if j < sample:
                    kept[j] = s
    return out


def format_review(review: DropReview, width: int = 400) -> str:
    lines = [f"{sum(review.counts.values())} dropped document(s) in {review.partitions} cleaned partition(s)"]
    for reason, n in review.counts.most_common():
        lines.append(f"\n== {reason}: {n} dropped, {len(review.samples[reason])} shown")
        for s in review.samples[reason]:
            text = s.text[:width].replace("\n", " ⏎ ")
            more = "…" if len(s.text) > width else ""
            lines.append(f"-- {s.partition} / {s.doc_id} ({s.source})\n   {text}{more}")
    return "\n".join(lines)
