"""Which metric to trust: rank correlations between the evaluations of every model on the leaderboard.

Tanuki's team found Japanese MT-Bench tracked their human arena well and jaster less so; this table lets a team see
the same for its own models. Spearman's ρ (Pearson on average ranks, so ties are handled and the scale of each
metric does not matter) and Pearson's r for every pair of metrics, over the models that have both. A pair with
fewer than three models, or a metric that does not vary over them, has no correlation (None): with n = 3 a ρ
says little, so `n` is in every row.
"""
from __future__ import annotations

import math
from typing import Optional

COLUMNS = ["metric_a", "metric_b", "n", "spearman", "pearson"]  # one row of `correlations`


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(x: list[float], y: list[float]) -> Optional[float]:
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> Optional[float]:
    return pearson(_ranks(x), _ranks(y)) if len(x) >= 3 else None


def correlations(rows: list[dict], metrics: list[str]) -> list[dict]:
    """[{metric_a, metric_b, n, spearman, pearson}] for every pair of `metrics` over the rows having both."""
    out = []
    for i, a in enumerate(metrics):
        for b in metrics[i + 1:]:
            both = [(r[a], r[b]) for r in rows if isinstance(r.get(a), (int, float)) and
                    isinstance(r.get(b), (int, float))]
            x, y = [float(p[0]) for p in both], [float(p[1]) for p in both]
            s, p = spearman(x, y), pearson(x, y)
            out.append({"metric_a": a, "metric_b": b, "n": len(both),
                        "spearman": None if s is None else round(s, 3),
                        "pearson": None if p is None else round(p, 3)})
    return out
