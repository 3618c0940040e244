"""Post-training trial specs (`pipelines/post_training/*.yaml`): LoRA SFT and DPO trials, grids, merges.

Why: Tanuki ran 300+ cheap post-training trials (LoRA SFT, DPO, model merges). A spec names its base checkpoint
(a pretraining run, through its `hf_model/<run>` asset), the method, LoRA settings (the open-calm baseline: r 8,
alpha 16, dropout 0.05, lr 3e-4, 3 epochs), optimizer, data (synthetic conversations; preference pairs), the
replay fraction of pretraining data (KARAKURI mixed ~20%) and the chat template. A `grid` of dotted keys expands
one spec into the cartesian product of trials; every trial is one partition of the adapter asset, with a
readable id (`sft-r8-lr0.0003`), so the UI lists them all and a backfill runs the missing ones.
Merges combine trials' merged weights: `linear` (weights sum to 1: a weighted average) or `task_arithmetic`
(base + Σ λ_i (model_i − base)).
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Strict):
    """peft LoraConfig fields."""

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="Module names the adapters wrap (Llama naming).")


class OptimSpec(_Strict):
    """AdamW over the adapter weights, linear warmup then linear decay."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    epochs: int = Field(3, ge=1, description="Passes over the trial's data.")
    batch_size: int = Field(8, ge=1, description="Examples per step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")


class TrialSpec(_Strict):
    """One trial (after grid expansion)."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Trial id prefix.")
    base: str = Field(..., description="Pretraining run whose hf_model is the base.")
    method: Literal["sft", "dpo"] = Field(..., description="Supervised fine-tuning or DPO.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimizer and schedule.")
    beta: float = Field(0.1, gt=0, description="DPO temperature β.")
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the trial's examples that are "
                                                                 "pretraining documents (against forgetting).")
    chat_template: str = Field("plain", description="Mix chat template used to render conversations.")
    data: list[str] = Field(default_factory=lambda: ["synthetic"], min_length=1,
                            description="SFT conversations from: synthetic (every synthetic dataset), "
                                        "synthetic/<dataset>, human/<collection> (its conversations; a preference "
                                        "collection's chosen side).")
    preferences: str = Field("preference_pairs", description="DPO pairs: preference_pairs (the teacher's answer vs "
                                                             "a base sample) or human/<collection> of kind "
                                                             "preference.")
    max_examples: int = Field(256, ge=1, description="Cap on SFT examples / preference pairs.")
    max_length: int = Field(256, ge=16, description="Token cap per example (longer ones are cut).")
    seed: int = Field(0, description="Data order and init seed.")


class MergeSpec(_Strict):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_]*$", description="Asset name: model_merge/<name>.")
    method: Literal["linear", "task_arithmetic"] = Field(..., description="How the trials are combined.")
    trials: list[str] = Field(..., min_length=2, description="Trial ids (after grid expansion).")
    weights: list[float] = Field(..., description="One weight per trial.")

    @model_validator(mode="after")
    def _check(self):
        if len(self.weights) != len(self.trials):
            raise ValueError(f"merge {self.name}: {len(self.trials)} trials but {len(self.weights)} weights")
        if self.method == "linear" and abs(sum(self.weights) - 1) > 1e-6:
            raise ValueError(f"merge {self.name}: linear weights must sum to 1 (got {sum(self.weights):g})")
        return self


class PostTrainingError(ValueError):
    pass


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def trial_id(name: str, combo: dict[str, Any]) -> str:
    parts = [name] + [f"{k.split('.')[-1].replace('_', '')}{v}" for k, v in combo.items()]
    return re.sub(r"[^a-z0-9_.-]+", "", "-".join(str(p).lower() for p in parts))


def expand(raw: dict, where: str) -> list[tuple[str, TrialSpec]]:
    raw = dict(raw)
    grid = raw.pop("grid", None) or {}
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    out = []
    for combo in combos:
        r = yaml.safe_load(yaml.safe_dump(raw))
        for k, v in combo.items():
            _set(r, k, v)
        try:
            spec = TrialSpec(**r)
        except ValidationError as e:
            raise PostTrainingError(f"{where}: trial {r.get('name')!r} {combo}: {e}") from None
        out.append((trial_id(spec.name, combo), spec))
    return out


def load_post_training(folder: str | Path, runs: Optional[list[str]] = None
                       ) -> tuple[dict[str, TrialSpec], list[MergeSpec]]:
    """{trial id: spec} and the merges of every YAML file in `folder` (keys `trials:` and `merges:`)."""
    trials: dict[str, TrialSpec] = {}
    merges: list[MergeSpec] = []
    for f in sorted(Path(folder).glob("*.yaml")):
        doc = yaml.safe_load(f.read_text()) or {}
        unknown = set(doc) - {"trials", "merges"}
        if unknown:
            raise PostTrainingError(f"{f}: unknown keys {sorted(unknown)} (expected trials, merges)")
        for raw in doc.get("trials") or []:
            for tid, spec in expand(raw, str(f)):
                if tid in trials:
                    raise PostTrainingError(f"{f}: trial id {tid!r} is defined twice")
                if runs is not None and spec.base not in runs:
                    raise PostTrainingError(f"{f}: trial {tid}: base {spec.base!r} is not a pretraining run {runs}")
                trials[tid] = spec
        for raw in doc.get("merges") or []:
            try:
                merges.append(MergeSpec(**raw))
            except ValidationError as e:
                raise PostTrainingError(f"{f}: {e}") from None
    for m in merges:
        missing = [t for t in m.trials if t not in trials]
        if missing:
            raise PostTrainingError(f"merge {m.name}: unknown trials {missing} (known: {sorted(trials)})")
        if len({trials[t].base for t in m.trials}) != 1:
            raise PostTrainingError(f"merge {m.name}: trials have different bases")
    return trials, merges


def check_trial_data(trials: dict[str, TrialSpec], datasets, humans: dict) -> None:
    """Every trial's `data` and `preferences` name existing datasets (human preferences: a preference collection)."""
    known = {"synthetic", *(f"synthetic/{d}" for d in datasets), *(f"human/{h}" for h in humans)}
    for tid, t in trials.items():
        bad = [d for d in t.data if d not in known]
        if bad:
            raise PostTrainingError(f"trial {tid}: data: {bad} names no dataset (known: {', '.join(sorted(known))})")
        if t.method == "dpo" and t.preferences != "preference_pairs":
            h = humans.get(t.preferences.removeprefix("human/")) if t.preferences.startswith("human/") else None
            if h is None or h.kind != "preference":
                prefs = [f"human/{n}" for n, x in sorted(humans.items()) if x.kind == "preference"]
                raise PostTrainingError(f"trial {tid}: preferences: {t.preferences!r} is neither preference_pairs "
                                        f"nor a human preference collection (known: {', '.join(prefs) or 'none'})")


def trial_humans(t: TrialSpec) -> set[str]:
    """The human collections a trial reads."""
    names = {d.split("/", 1)[1] for d in t.data if d.startswith("human/")}
    if t.method == "dpo" and t.preferences.startswith("human/"):
        names.add(t.preferences.split("/", 1)[1])
    return names


def trial_shards(t: TrialSpec, shards: dict[str, dict]) -> dict[str, dict]:
    """The synthetic day shards ("<dataset>|<day>") a trial's SFT data reads."""
    if "synthetic" in t.data:
        return dict(shards)
    names = {d.split("/", 1)[1] for d in t.data if d.startswith("synthetic/")}
    return {k: m for k, m in shards.items() if k.split("|")[0] in names}


def mean_perplexity(row: dict) -> float:
    """Mean of a leaderboard row's held-out perplexities (its `ppl_<phase>_<lang>` columns); inf without any."""
    v = [x for k, x in row.items() if k.startswith("ppl_") and x is not None]
    return sum(v) / len(v) if v else float("inf")


def rank_trials(rows: list[dict], rank_by: str) -> list[dict]:
    """Leaderboard rows sorted by `rank_by` (higher is better, except perplexities and losses), each given its `rank`.
    Ties — tiny models all score 0 on exact-match tasks — are broken by the mean held-out perplexity (the `ppl_*`
    columns), lower first; rows missing the metric go last."""
    if rows and rank_by not in rows[0]:
        raise PostTrainingError(f"rank_by {rank_by!r} is not a leaderboard column {sorted(rows[0])}")
    low_better = rank_by.startswith("ppl_") or rank_by.endswith("_loss")

    def key(r: dict):
        x = r.get(rank_by)
        return (x is None, 0 if x is None else (x if low_better else -x), mean_perplexity(r))

    out = [dict(r) for r in sorted(rows, key=key)]
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out
