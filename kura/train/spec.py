"""Pretraining run specs: one YAML file per run under `pipelines/runs/`, typed and validated here.

Why: Tanuki-8B went through 15 runs, each resuming the last checkpoint with a new mix or learning rate, then an
upcycle to 8x8B MoE. A run is therefore (architecture, parallelism, optimizer/schedule, batch, budget, data phase,
`init_from`); the chain of `init_from` references is what lineage shows. A spec names its parent run, never a
path: the parent's checkpoint version is resolved through the asset graph.

Contradictions are refused at load time with the file and field named: a parent that does not exist, a cycle,
heads not divisible by query groups or by tensor parallelism, a global batch that the data-parallel size does not
divide, an upcycle from an MoE parent, a dense child of an MoE parent.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kura.train.spikes import SpikeConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """Llama-style decoder (RMSNorm, SwiGLU, RoPE, no biases, untied output layer); vocab from the tokenizer."""

    num_layers: int = Field(2, ge=1, description="Transformer layers.")
    hidden_size: int = Field(128, ge=8, description="Model width.")
    num_attention_heads: int = Field(4, ge=1, description="Query heads.")
    num_query_groups: Optional[int] = Field(None, ge=1, description="Key/value heads (GQA); None = MHA.")
    ffn_hidden_size: int = Field(384, ge=8, description="SwiGLU inner width (per expert for MoE).")
    rotary_base: float = Field(10000.0, gt=0, description="RoPE base.")
    num_experts: Optional[int] = Field(None, ge=2, description="MoE experts per layer; None = dense.")
    moe_router_topk: int = Field(2, ge=1, description="Experts each token is routed to.")
    moe_aux_loss_coeff: float = Field(1e-2, ge=0, description="Load-balancing auxiliary loss weight.")
    init_method_std: float = Field(0.02, gt=0, description="Std of the normal weight init.")
    norm_epsilon: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")

    @property
    def groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def kv_channels(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.num_attention_heads % self.groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by num_query_groups "
                             f"{self.groups}")
        if self.num_experts and self.moe_router_topk > self.num_experts:
            raise ValueError(f"moe_router_topk {self.moe_router_topk} > num_experts {self.num_experts}")
        return self


class ParallelSpec(_Strict):
    """Megatron parallelism (applies on the cluster; the local trainer runs one process and ignores it)."""

    tensor: int = Field(1, ge=1, description="Tensor parallel size (--tensor-model-parallel-size).")
    pipeline: int = Field(1, ge=1, description="Pipeline parallel size.")
    expert: int = Field(1, ge=1, description="Expert parallel size (MoE).")
    context: int = Field(1, ge=1, description="Context parallel size (long sequences).")
    sequence_parallel: bool = Field(False, description="Sequence parallelism (needs tensor > 1).")


class OptimSpec(_Strict):
    """AdamW with linear warmup and cosine decay to min_lr, gradient clipping."""

    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(3e-4, ge=0, description="Final learning rate.")
    warmup_iters: int = Field(10, ge=0, description="Linear warmup iterations.")
    decay_style: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay after warmup.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only).")
    clip_grad: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2.")

    @model_validator(mode="after")
    def _check(self):
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} > lr {self.lr}")
        return self


class UpcycleSpec(_Strict):
    """Initialize this MoE run from its dense parent: every expert a copy of the dense MLP (Komatsuzaki et al.)."""

    router_init_std: float = Field(0.0, ge=0, description="Router weight std; 0 = uniform routing at the start.")
    expert_noise_std: float = Field(0.0, ge=0, description="Relative noise added to each expert copy (breaks "
                                                           "symmetry; 0 keeps the output equal to the dense model).")
    seed: int = Field(0, description="Seed of router and noise initialization.")


class ResourcesSpec(_Strict):
    """Cluster shape of the run (the Kubernetes Indexed Job)."""

    nodes: int = Field(1, ge=1, description="Pods (one per node).")
    gpus_per_node: int = Field(1, ge=1, description="GPUs per pod.")
    bf16: bool = Field(True, description="bf16 mixed precision on GPUs (the local CPU trainer uses fp32).")


class SpikeRollbackSpec(_Strict):
    """React to a loss or gradient-norm spike as Megatron/OLMo practice does: roll back to the last saved
    checkpoint and skip the batches from there to the spike (they are recorded in the lineage)."""

    rule: SpikeConfig = Field(default_factory=SpikeConfig, description="The spike rule, judged every step "
                                                                       "before the update is applied.")
    max_rollbacks: int = Field(3, ge=1, description="Stop the run with an error after this many rollbacks (the "
                                                    "spikes are then not bad batches but the run itself).")


class RunSpec(_Strict):
    """One pretraining run."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_]*$", description="Asset name: checkpoint/<name>.")
    description: str = Field("", description="Why this run exists (shown in the UI).")
    phase: str = Field(..., description="Packed dataset phase (a phase of the data mix) this run trains on.")
    init_from: Optional[str] = Field(None, description="Parent run whose final checkpoint this run starts from.")
    upcycle: Optional[UpcycleSpec] = Field(None, description="Dense parent → MoE (needs model.num_experts).")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Architecture.")
    parallel: ParallelSpec = Field(default_factory=ParallelSpec, description="Parallelism on the cluster.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimizer and schedule.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per micro-batch per GPU.")
    global_batch_size: int = Field(8, ge=1, description="Sequences per optimizer step.")
    train_tokens: Optional[int] = Field(None, ge=1, description="Token budget (→ train_iters).")
    train_iters: Optional[int] = Field(None, ge=1, description="Optimizer steps (overrides train_tokens).")
    save_interval: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")
    log_interval: int = Field(5, ge=1, description="Record loss and LR every N steps.")
    seed: int = Field(1234, description="Initialization and data-order seed.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Cluster shape.")
    resume_optimizer: bool = Field(False, description="Continue the parent run's optimizer (AdamW moments and step "
                                   "count) without a new warmup, as a restart between Tanuki-style runs does (with "
                                   "this spec's own LR); default: a fresh optimizer and warmup from the parent's "
                                   "weights.")
    rollback_on_spike: Optional[SpikeRollbackSpec] = Field(None, description="Roll back and skip batches on a "
                                                           "loss spike (local trainer); None: spikes are only "
                                                           "reported by the checkpoint's no_loss_spikes check.")

    @model_validator(mode="after")
    def _check(self):
        if self.train_tokens is None and self.train_iters is None:
            raise ValueError("give train_tokens or train_iters")
        if self.upcycle and not self.model.num_experts:
            raise ValueError("upcycle needs model.num_experts")
        if self.upcycle and not self.init_from:
            raise ValueError("upcycle needs init_from (the dense run to upcycle)")
        if self.resume_optimizer and (not self.init_from or self.upcycle):
            raise ValueError("resume_optimizer needs init_from and no upcycle (the optimizer state belongs to the "
                             "parent's parameters)")
        p = self.parallel
        world = self.resources.nodes * self.resources.gpus_per_node
        mp = p.tensor * p.pipeline * p.context
        if world % mp:
            raise ValueError(f"world size {world} is not divisible by tensor×pipeline×context = {mp}")
        dp = world // mp
        if self.global_batch_size % (self.micro_batch_size * dp) and world > 1:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by micro_batch_size × "
                             f"data-parallel size = {self.micro_batch_size} × {dp}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        m = self.model
        if m.num_attention_heads % p.tensor or m.groups % p.tensor:
            raise ValueError(f"heads {m.num_attention_heads} / query groups {m.groups} not divisible by tensor "
                             f"parallel size {p.tensor}")
        if m.num_layers % p.pipeline:
            raise ValueError(f"num_layers {m.num_layers} not divisible by pipeline parallel size {p.pipeline}")
        if p.expert > 1 and (not m.num_experts or m.num_experts % p.expert):
            raise ValueError(f"expert parallel size {p.expert} needs num_experts divisible by it")
        if p.sequence_parallel and p.tensor == 1:
            raise ValueError("sequence_parallel needs tensor parallel size > 1")
        return self

    @property
    def is_moe(self) -> bool:
        return bool(self.model.num_experts)

    def iters(self, seq_length: int) -> int:
        if self.train_iters:
            return self.train_iters
        return max(1, math.ceil(self.train_tokens / (self.global_batch_size * seq_length)))


class SpecError(ValueError):
    pass


def load_run_specs(folder: str | Path, phases: list[str] | None = None,
                   bases: dict[str, ModelSpec] | None = None) -> list[RunSpec]:
    """All `*.yaml` run specs of a folder, validated and ordered parents first (the chain). `bases`: the
    architectures of the imported base models a run may start from (`init_from: base_model/<name>`)."""
    folder = Path(folder)
    specs: dict[str, RunSpec] = {}
    for f in sorted(folder.glob("*.yaml")):
        try:
            spec = RunSpec(**(yaml.safe_load(f.read_text()) or {}))
        except ValidationError as e:
            raise SpecError(f"{f}: {e}") from None
        if spec.name in specs:
            raise SpecError(f"{f}: run name {spec.name!r} is used twice")
        specs[spec.name] = spec
    for s in specs.values():
        where = folder / f"{s.name}.yaml"
        if phases is not None and s.phase not in phases:
            raise SpecError(f"{where}: phase {s.phase!r} is not a phase of the data mix {phases}")
        if s.init_from and s.init_from.startswith("base_model/"):
            base = (bases or {}).get(s.init_from.split("/", 1)[1])
            if base is None:
                raise SpecError(f"{where}: init_from {s.init_from!r} names no base model spec (known: "
                                f"{', '.join(f'base_model/{b}' for b in sorted(bases or {})) or 'none'})")
            moe = base.num_experts is not None
            if s.upcycle and moe:
                raise SpecError(f"{where}: upcycle needs a dense parent; {s.init_from} is already MoE")
            mine = s.model.model_dump(exclude={"init_method_std", "moe_aux_loss_coeff"}
                                      | ({"num_experts", "moe_router_topk"} if s.upcycle else set()))
            theirs = base.model_dump(exclude={"init_method_std", "moe_aux_loss_coeff"}
                                     | ({"num_experts", "moe_router_topk"} if s.upcycle else set()))
            if mine != theirs:
                diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
                raise SpecError(f"{where}: model differs from {s.init_from} (run vs base: {diff}); a run on a base "
                                f"has the base's architecture{' (plus experts)' if s.upcycle else ''}")
            continue
        if s.init_from and s.init_from not in specs:
            raise SpecError(f"{where}: init_from {s.init_from!r} names no run in {folder} ({sorted(specs)})")
        if s.init_from:
            parent = specs[s.init_from]
            if s.upcycle and parent.is_moe:
                raise SpecError(f"{where}: upcycle needs a dense parent; {parent.name} is already MoE")
            if parent.is_moe and not s.is_moe:
                raise SpecError(f"{where}: a dense run cannot continue the MoE run {parent.name}")
            if not s.upcycle and _arch(parent) != _arch(s):
                raise SpecError(f"{where}: architecture differs from parent {parent.name}; only an upcycle may "
                                "change it")
            if s.upcycle and _arch(parent, moe=False) != _arch(s, moe=False):
                raise SpecError(f"{where}: upcycling keeps the dense architecture of {parent.name}; only the "
                                "experts may be added")
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 1:
            raise SpecError(f"{folder}: init_from cycle {' → '.join(path + [n])}")
        if state.get(n) == 2:
            return
        state[n] = 1
        if specs[n].init_from and specs[n].init_from in specs:
            visit(specs[n].init_from, path + [n])
        state[n] = 2
        order.append(n)

    for n in sorted(specs):
        visit(n, [])
    return [specs[n] for n in order]


def _arch(s: RunSpec, moe: bool = True) -> dict:
    keep = {"num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "rotary_base"}
    if moe:
        keep |= {"num_experts", "moe_router_topk"}
    return s.model.model_dump(include=keep)
