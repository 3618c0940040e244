"""Arena ratings from pairwise votes: Bradley–Terry strengths on the Elo scale with bootstrap confidence intervals.

Votes come from the judge (kura.eval.judge.pairwise) and from files of human votes (JSONL lines
`{"model_a", "model_b", "winner": "a" | "b" | "tie"}`), the blind arena that Tanuki's team trusted most.
Bradley–Terry: P(i beats j) = p_i / (p_i + p_j); fitted by Hunter's MM iterations (a tie counts half a win each
way), with a weak prior of one tie against every other model so a model that never won still gets a finite
rating. Ratings are 400·log10(p) shifted to a mean of 1000 (the Elo scale, where +400 = 10:1 odds). The order
of the votes does not matter (unlike online Elo); 95% intervals from resampling the votes with replacement.
"""
from __future__ import annotations

import json

import numpy as np


def load_votes(text: str, where: str) -> list[dict]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
            ok = v["winner"] in ("a", "b", "tie") and v["model_a"] != v["model_b"]
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{where}:{n}: a vote needs model_a, model_b (different) and winner a|b|tie")
        out.append({**v, "source": v.get("source", "human")})
    return out


def _wins(votes: list[dict], index: dict[str, int]) -> np.ndarray:
    w = np.zeros((len(index), len(index)))
    for v in votes:
        a, b = index[v["model_a"]], index[v["model_b"]]
        if v["winner"] == "a":
            w[a, b] += 1
        elif v["winner"] == "b":
            w[b, a] += 1
        else:
            w[a, b] += 0.5
            w[b, a] += 0.5
    return w


def bradley_terry(w: np.ndarray, prior: float = 0.5, iters: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Strengths from a win matrix w[i, j] = wins of i over j (Hunter 2004 MM updates)."""
    k = len(w)
    w = w + prior * (1 - np.eye(k))  # prior: one tie (half a win each way) between every pair
    n = w + w.T
    p = np.ones(k)
    for _ in range(iters):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = w.sum(axis=1) / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return p


def elo(p: np.ndarray) -> np.ndarray:
    r = 400 * np.log10(p)
    return r - r.mean() + 1000


def ratings(votes: list[dict], models: list[str] | None = None, bootstrap: int = 200, seed: int = 0) -> dict:
    models = sorted(models or {m for v in votes for m in (v["model_a"], v["model_b"])})
    index = {m: i for i, m in enumerate(models)}
    point = elo(bradley_terry(_wins(votes, index)))
    rng = np.random.default_rng(seed)
    samples = np.array([elo(bradley_terry(_wins([votes[i] for i in rng.integers(0, len(votes), len(votes))], index)))
                        for _ in range(bootstrap)]) if votes else point[None, :]
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    rec = {m: {"wins": 0, "losses": 0, "ties": 0} for m in models}
    for v in votes:
        a, b = v["model_a"], v["model_b"]
        if v["winner"] == "tie":
            rec[a]["ties"] += 1
            rec[b]["ties"] += 1
        else:
            w, lose = (a, b) if v["winner"] == "a" else (b, a)
            rec[w]["wins"] += 1
            rec[lose]["losses"] += 1
    table = sorted(({"model": m, "elo": round(float(point[i]), 1), "ci_low": round(float(lo[i]), 1),
                     "ci_high": round(float(hi[i]), 1), "games": sum(rec[m].values()), **rec[m],
                     "win_rate": round(rec[m]["wins"] / sum(rec[m].values()), 3) if sum(rec[m].values()) else None}
                    for m, i in index.items()), key=lambda r: -r["elo"])
    return {"leaderboard": table, "votes": len(votes), "bootstrap": bootstrap}


def ratings_by_category(votes: list[dict], models: list[str], bootstrap: int = 100, seed: int = 0) -> dict:
    """The leaderboard per vote category (a question's category, or the prompt set's / "free" in the arena)."""
    cats = sorted({v.get("category") or "unknown" for v in votes})
    return {c: ratings([v for v in votes if (v.get("category") or "unknown") == c], models, bootstrap, seed)
            for c in cats}
