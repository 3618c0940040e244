"""Loss and gradient-norm spikes in a training curve: the warning Tanuki's 38B run gave for weeks before it was
abandoned, and what Megatron/OLMo practice reacts to (roll back to the last good checkpoint, skip the batches).

A point is a spike when it exceeds the *trailing* window's median by more than both a robust z-score
(`z` · 1.4826 · MAD, so one earlier outlier does not widen the band) and a minimum rise relative to the median
(`min_loss_rise` for the loss, `grad_norm_factor` × median for the gradient norm: tiny or very smooth runs have a
MAD near zero, where z alone would flag noise). Spikes are left out of later windows, so a run that stays high
after a spike keeps being reported rather than becoming the new normal. The first `min_history` points (warmup,
where the loss falls fast and the gradient norm moves a lot) are never judged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, Field


class SpikeConfig(BaseModel):
    """The spike rule (kura.train.spikes)."""

    window: int = Field(20, ge=3, description="Trailing logged points the median and MAD are taken over.")
    min_history: int = Field(5, ge=2, description="Points before the first one judged (warmup).")
    z: float = Field(6.0, gt=0, description="Robust z-score over the trailing window that a spike exceeds.")
    min_loss_rise: float = Field(0.1, ge=0, description="A loss spike is also at least this fraction above the "
                                                        "window's median loss.")
    grad_norm_factor: float = Field(3.0, ge=1, description="A gradient-norm spike is also at least this many times "
                                                           "the window's median gradient norm.")


@dataclass(frozen=True)
class Spike:
    step: int
    metric: str      # loss | grad_norm
    value: float
    median: float
    threshold: float


METRICS = ("loss", "grad_norm")


def _judge_value(history: list[float], v: float, step: int, metric: str, cfg: SpikeConfig) -> Spike | None:
    if not np.isfinite(v):  # NaN / inf: the worst spike of all
        return Spike(step, metric, float(v), float("nan"), float("nan"))
    if len(history) < cfg.min_history:
        return None
    win = np.asarray(history[-cfg.window:])
    med = float(np.median(win))
    mad = float(np.median(np.abs(win - med)))
    rise = cfg.min_loss_rise * abs(med) if metric == "loss" else (cfg.grad_norm_factor - 1) * abs(med)
    threshold = med + max(cfg.z * 1.4826 * mad, rise)
    return Spike(step, metric, float(v), round(med, 6), round(threshold, 6)) if v > threshold else None


def judge(history: list[dict], point: dict, cfg: SpikeConfig) -> list[Spike]:
    """The spikes of one new point given the accepted points before it (what a trainer checks online, step by
    step, before it applies the update)."""
    out = []
    for metric in METRICS:
        v = point.get(metric)
        if v is not None:
            s = _judge_value([h[metric] for h in history if h.get(metric) is not None], float(v),
                             int(point["step"]), metric, cfg)
            if s:
                out.append(s)
    return out


def detect_spikes(curve: list[dict], cfg: SpikeConfig | None = None) -> list[Spike]:
    """`curve`: logged points {step, loss, grad_norm?} in step order (the trainer's loss curve). Returns the spikes
    in step order (a point can spike in both metrics; it leaves only that metric's later windows)."""
    cfg = cfg or SpikeConfig()
    out: list[Spike] = []
    for metric in METRICS:
        history: list[float] = []
        for point in curve:
            v = point.get(metric)
            if v is None:
                continue
            s = _judge_value(history, float(v), int(point["step"]), metric, cfg)
            if s:
                out.append(s)
            else:
                history.append(float(v))
    return sorted(out, key=lambda s: (s.step, s.metric))


def spike_report(spikes: list[Spike]) -> dict:
    """JSON-able summary for metadata: steps, count, and each spike."""
    return {"spikes": len(spikes), "spike_steps": sorted({s.step for s in spikes}),
            "details": [asdict(s) for s in spikes]}
