"""Hugging Face folder (Llama or Mixtral architecture) → kura checkpoint folder (megatron-core GPT state dict), the
inverse of `kura.train.export_hf`, so an existing model (llm-jp-13b, Swallow-MX) can be continued, upcycled or
post-trained like a kura run.

The mapping is export_hf's read backwards: q/k/v_proj are interleaved per query group into `linear_qkv`
([q (heads/group · d), k (d), v (d)] rows per group), gate_proj/up_proj stacked into `linear_fc1`, Mixtral's
`block_sparse_moe.experts.N.w1/w3/w2` into `mlp.experts.local_experts.N.linear_fc1/2` and its `gate` into
`mlp.router`; a tied output layer is copied from the embedding. What kura's model cannot represent is refused with
the config field named: biases, a head_dim other than hidden/heads, RoPE scaling, an activation other than SiLU.
`logits_check` runs both models on the same token sequences; an import is only as good as its check.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from kura.train.spec import ModelSpec, RunSpec

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")


class HFImportError(ValueError):
    """A folder kura cannot import, with what and where."""


def model_spec_from_hf(cfg: dict, where: str = "config.json") -> ModelSpec:
    arch = (cfg.get("architectures") or [""])[0]
    if cfg.get("model_type") not in ("llama", "mixtral"):
        raise HFImportError(f"{where}: model_type {cfg.get('model_type')!r} ({arch}): kura imports Llama- and "
                           f"Mixtral-architecture models")
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    problems = []
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        problems.append("attention_bias/mlp_bias: kura's layers have no biases")
    if cfg.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim {cfg['head_dim']} != hidden_size/num_attention_heads {hidden // heads}")
    rope = cfg.get("rope_scaling") or {}
    rope_type = (cfg.get("rope_parameters") or {}).get("rope_type") or rope.get("rope_type") or rope.get("type")
    if rope_type not in (None, "default"):
        problems.append(f"rope scaling {rope_type!r}: kura's RoPE has none")
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {cfg['hidden_act']!r}: kura's MLP is SwiGLU (silu)")
    if problems:
        raise HFImportError(f"{where}: cannot represent this model: " + "; ".join(problems))
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta", 10000.0)
    moe = cfg["model_type"] == "mixtral"
    return ModelSpec(num_layers=cfg["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
                     num_query_groups=cfg.get("num_key_value_heads") or heads,
                     ffn_hidden_size=cfg["intermediate_size"], rotary_base=float(theta),
                     num_experts=cfg["num_local_experts"] if moe else None,
                     moe_router_topk=cfg.get("num_experts_per_tok", 2) if moe else 2,
                     moe_aux_loss_coeff=cfg.get("router_aux_loss_coef", 1e-2) if moe else 1e-2,
                     init_method_std=cfg.get("initializer_range", 0.02), norm_epsilon=cfg.get("rms_norm_eps", 1e-5))


def read_hf_state(folder: Path) -> dict:
    """Every weight of the folder (sharded safetensors, or PyTorch .bin), by its on-disk (Hub) name."""
    from safetensors.torch import load_file

    files = sorted(f for g in WEIGHT_GLOBS for f in folder.glob(g))
    if not files:
        raise HFImportError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    state: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:
            import torch

            state.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return state


def hf_to_mcore_state(hf: dict, m: ModelSpec) -> dict:
    import torch

    nh, ng, hd = m.num_attention_heads, m.groups, m.kv_channels
    emb = hf["model.embed_tokens.weight"]
    out = {"embedding.word_embeddings.weight": emb, "decoder.final_layernorm.weight": hf["model.norm.weight"],
           "output_layer.weight": hf.get("lm_head.weight", emb)}  # tied embeddings: the output layer is a copy
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[q + "input_layernorm.weight"] = hf[p + "input_layernorm.weight"]
        out[q + "pre_mlp_layernorm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[q + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        h = emb.shape[1]
        qw = hf[p + "self_attn.q_proj.weight"].view(ng, nh // ng * hd, h)
        kw = hf[p + "self_attn.k_proj.weight"].view(ng, hd, h)
        vw = hf[p + "self_attn.v_proj.weight"].view(ng, hd, h)
        out[q + "self_attention.linear_qkv.weight"] = torch.cat([qw, kw, vw], dim=1).reshape(-1, h)
        if m.num_experts:
            out[q + "mlp.router.weight"] = hf[p + "block_sparse_moe.gate.weight"]
            for e in range(m.num_experts):
                x = f"{p}block_sparse_moe.experts.{e}."
                y = f"{q}mlp.experts.local_experts.{e}."
                out[y + "linear_fc1.weight"] = torch.cat([hf[x + "w1.weight"], hf[x + "w3.weight"]], dim=0)
                out[y + "linear_fc2.weight"] = hf[x + "w2.weight"]
        else:
            out[q + "mlp.linear_fc1.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"],
                                                          hf[p + "mlp.up_proj.weight"]], dim=0)
            out[q + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"]
    used = {k for k in hf if not re.search(r"rotary_emb\.inv_freq$", k)}
    known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        k for k in used if re.match(r"^model\.layers\.\d+\.", k)}
    if used - known:
        raise HFImportError(f"weights kura does not map: {sorted(used - known)[:5]}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def import_hf(folder: Path, out_dir: Path, name: str) -> dict:
    """Write the kura checkpoint of a Hugging Face folder: model.safetensors (megatron-core names), config.json
    (a run spec carrying the architecture, vocab size, context length) and the tokenizer files in tokenizer_hf/."""
    from safetensors.torch import save_file

    folder, out_dir = Path(folder), Path(out_dir)
    if not (folder / "config.json").is_file():
        raise HFImportError(f"{folder}: no config.json (not a Hugging Face model folder)")
    cfg = json.loads((folder / "config.json").read_text())
    m = model_spec_from_hf(cfg, str(folder / "config.json"))
    hf_state = read_hf_state(folder)
    tied = "lm_head.weight" not in hf_state
    state = hf_to_mcore_state(hf_state, m)
    seq = int(cfg.get("max_position_embeddings", 2048))
    spec = RunSpec(name=name, phase="imported", model=m, train_iters=1, description=f"imported from {folder.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(
        {"format": "megatron-core-gpt", "spec": spec.model_dump(), "vocab_size": cfg["vocab_size"],
         "seq_length": seq, "iterations": 0, "precision": "fp32", "imported_from": cfg.get("architectures")},
        indent=1))
    tok = out_dir / "tokenizer_hf"
    tok.mkdir(exist_ok=True)
    for f in TOKENIZER_FILES:
        if (folder / f).is_file():
            shutil.copy(folder / f, tok / f)
    return {"architecture": (cfg.get("architectures") or [cfg["model_type"]])[0], "tensors": len(state),
            "parameters": sum(v.numel() for v in state.values()), "vocab_size": cfg["vocab_size"],
            "context_length": seq, "model": m.model_dump(), "tied_embeddings": tied}


def logits_check(folder: Path, ckpt_dir: Path, n: int = 2, length: int = 32, seed: int = 0) -> float:
    """Max |logit difference| between transformers on the original folder and megatron-core on the import, over
    `n` random token sequences (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kura.train import mcore
    from kura.train.pretrain import load_model

    model, cfg = load_model(ckpt_dir)
    length = min(length, cfg["seq_length"])
    x = torch.randint(0, cfg["vocab_size"], (n, length), generator=torch.Generator().manual_seed(seed))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(x).logits
        got = mcore.forward_logits(model, x)
    return float((want - got).abs().max())


BASE_PREFIX = "base_model/"


class BaseSpec(BaseModel):
    """One imported base model (`pipelines/bases/<name>.yaml` → asset `base_model/<name>`): a run names it as
    `init_from: base_model/<name>` (continual pretraining, or the dense source of an upcycle)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$", description="Asset name: base_model/<name>.")
    path: str = Field(description="Hugging Face folder (config.json, weights, tokenizer); relative paths are from "
                                  "the repository root.")
    licence: Optional[str] = Field(None, description="The model's licence (e.g. apache-2.0, llama3).")
    description: str = Field("", description="What the model is, for the UI.")
    logits_atol: float = Field(1e-3, gt=0, description="The import's blocking check: max |logit difference| "
                                                       "against transformers on random token sequences.")
    source_file: Optional[str] = Field(None, exclude=True, description="Where the spec was read (not versioned).")

    def folder(self, root: Path) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else root / p

    def model_spec(self, root: Path) -> ModelSpec:
        """The architecture, read from the folder's config.json (cheap: no weights are read)."""
        f = self.folder(root) / "config.json"
        return model_spec_from_hf(json.loads(f.read_text()), str(f))

    def vocab_size(self, root: Path) -> int:
        return int(json.loads((self.folder(root) / "config.json").read_text())["vocab_size"])


def load_bases(folder: str | Path, root: Path) -> dict[str, BaseSpec]:
    """All base specs of a folder; a folder without config.json and weights, or an architecture kura cannot
    represent, is refused naming the spec file."""
    from kura.synth.spec import SpecError, load_spec_folder

    specs = load_spec_folder(Path(folder), BaseSpec, "base model") if Path(folder).is_dir() else {}
    for b in specs.values():
        d = b.folder(root)
        if not (d / "config.json").is_file() or not any(d.glob(g) for g in WEIGHT_GLOBS):
            raise SpecError(f"base model spec {b.source_file}: path: {d} holds no Hugging Face model (needs "
                            f"config.json and *.safetensors or pytorch_model*.bin)")
        try:
            b.model_spec(root)
        except HFImportError as e:
            raise SpecError(f"base model spec {b.source_file}: {e}") from None
    return specs
