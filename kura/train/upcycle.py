"""Dense → Mixture-of-Experts upcycling (sparse upcycling, Komatsuzaki et al. 2022; Tanuki 8B → 8x8B).

Every expert of layer i starts as a copy of the dense model's MLP of layer i; attention, norms and embeddings are
copied unchanged; the router is new. With identical experts the MoE layer's output is Σ_k p_k · MLP(x) over the
top-k experts, and megatron-core normalizes the top-k probabilities to sum to 1, so the upcycled model computes
exactly the dense model's function whatever the router says (tests/test_pretrain.py checks the logits). A zero
router (`router_init_std: 0`) makes the start uniform over experts; `expert_noise_std` perturbs each copy (relative
to the weight's std) to break the symmetry that otherwise keeps experts identical under uniform routing.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from kura.train.spec import RunSpec

_MLP = re.compile(r"^decoder\.layers\.(\d+)\.mlp\.(linear_fc1|linear_fc2)\.weight$")


def upcycle_state(dense: dict, spec: RunSpec) -> dict:
    import torch

    up = spec.upcycle
    e = spec.model.num_experts
    g = torch.Generator().manual_seed(up.seed)
    out, layers = {}, set()
    for k, v in dense.items():
        m = _MLP.match(k)
        if not m:
            out[k] = v.clone()
            continue
        layer, which = m.groups()
        layers.add(int(layer))
        for i in range(e):
            w = v.clone()
            if up.expert_noise_std > 0:
                w += torch.randn(w.shape, generator=g) * (up.expert_noise_std * float(v.std()))
            out[f"decoder.layers.{layer}.mlp.experts.local_experts.{i}.{which}.weight"] = w
    if not layers:
        raise ValueError("the parent checkpoint has no dense MLP weights (is it already MoE?)")
    h = spec.model.hidden_size
    for layer in sorted(layers):
        out[f"decoder.layers.{layer}.mlp.router.weight"] = torch.randn((e, h), generator=g) * up.router_init_std
    return out


def upcycle_checkpoint(dense_dir: Path, spec: RunSpec, out_dir: Path, lineage: dict | None = None) -> dict:
    """Write an MoE checkpoint folder (same layout as a trained one) from a dense checkpoint folder."""
    from safetensors.torch import load_file, save_file

    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    cfg = json.loads((dense_dir / "config.json").read_text())
    if cfg["spec"]["model"].get("num_experts"):
        raise ValueError(f"{dense_dir} is already an MoE checkpoint")
    state = upcycle_state(load_file(str(dense_dir / "model.safetensors")), spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps({**cfg, "spec": spec.model_dump(), "upcycled_from": cfg["spec"]
                                                     ["name"], "iterations": 0}, indent=1))
    (out_dir / "lineage.json").write_text(json.dumps(lineage or {}, indent=1, sort_keys=True))
    for extra in ("tokenizer.model", "tokenizer_hf"):
        src = dense_dir / extra
        if src.is_dir():
            shutil.copytree(src, out_dir / extra)
        elif src.exists():
            shutil.copy(src, out_dir / extra)
    n = sum(v.numel() for v in state.values())
    return {"parameters": n, "experts": spec.model.num_experts, "topk": spec.model.moe_router_topk,
            "dense_parameters": sum(v.numel() for v in load_file(str(dense_dir / "model.safetensors")).values())}
