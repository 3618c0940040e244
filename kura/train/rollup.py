"""Rollups along an `init_from` chain: tokens seen by source, the synthetic share and GPU-hours, as a team's run
table reports them (Tanuki-8B: 1,301 B tokens in all, ~225 B of them synthetic, over 15 restarted runs).

A run's tokens by source are the tokens it trained on, split by the blend weights Megatron samples its sources with
(`BlendedMegatronDataset` draws sample i from source j with probability w_j); a chain's are its parent's plus its
own. `replay` (earlier phases' data replayed in a later phase) is its own source: its tokens were drawn from the
previous phase's mix, and counting them there again would double them. GPU-hours add up the same way; a CPU run
adds 0, a cluster run what its pods reported over Dagster Pipes.
"""
from __future__ import annotations

from typing import Optional


def is_synthetic(label: str) -> bool:
    """A mix source label of synthetic data: `synthetic`, `synthetic/<dataset>`, `synthetic{selector}`, …"""
    return label.startswith("synthetic")


def run_tokens_by_source(train_tokens: int, blend: list, prefix_labels: dict[str, str]) -> dict[str, int]:
    """This run's tokens per source label. `blend`: Megatron's [w1, prefix1, w2, prefix2, …]; `prefix_labels`:
    {prefix: source label} from the packed dataset's manifest."""
    pairs = [(float(w), str(p)) for w, p in zip(blend[0::2], blend[1::2])]
    total = sum(w for w, _ in pairs) or 1.0
    out: dict[str, int] = {}
    for w, prefix in pairs:
        label = prefix_labels.get(prefix, prefix)
        out[label] = out.get(label, 0) + round(train_tokens * w / total)
    return out


def chain_rollup(parent: Optional[dict], own: dict[str, int]) -> dict:
    """{tokens_by_source, tokens, synthetic_tokens, synthetic_share} over the whole chain up to this run."""
    tokens = dict((parent or {}).get("tokens_by_source", {}))
    for label, n in own.items():
        tokens[label] = tokens.get(label, 0) + n
    total = sum(tokens.values())
    syn = sum(n for label, n in tokens.items() if is_synthetic(label))
    return {"tokens_by_source": dict(sorted(tokens.items())), "tokens": total, "synthetic_tokens": syn,
            "synthetic_share": round(syn / total, 4) if total else 0.0}


def chain_gpu_hours(parent_hours: Optional[float], own: Optional[float]) -> float:
    return round((parent_hours or 0.0) + (own or 0.0), 4)
