"""Megatron-core checkpoint folder → Hugging Face folder (Llama for dense, Mixtral for MoE): safetensors weights,
config.json, generation_config.json and the tokenizer. This is what vLLM serves and what post-training and
evaluation load with `AutoModelForCausalLM.from_pretrained`.

Weight mapping (megatron-core local spec → HF):
- `linear_qkv` is stored per query group as [q (heads/group · d), k (d), v (d)] rows → split into q/k/v_proj;
- `linear_fc1` is [gate; up] (megatron's SwiGLU takes silu of the first half) → gate_proj, up_proj;
- MoE experts → Mixtral's `block_sparse_moe.experts.N.w1/w3/w2` (gate/up/down), router → `block_sparse_moe.gate`
  (both use softmax over the top-k logits, renormalized — the same routing); the per-expert layout is the one on
  the Hub, which transformers 5 fuses at load time and vLLM reads directly.
RoPE (rotate-half), RMSNorm epsilon, untied output layer carry over unchanged; tests check the logits match.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path


def convert_state(state: dict, cfg: dict) -> dict:
    m = cfg["spec"]["model"]
    nh, hd = m["num_attention_heads"], m["hidden_size"] // m["num_attention_heads"]
    ng = m.get("num_query_groups") or nh
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"],
           "model.norm.weight": state["decoder.final_layernorm.weight"],
           "lm_head.weight": state["output_layer.weight"]}
    for k, v in state.items():
        mt = re.match(r"^decoder\.layers\.(\d+)\.(.+)$", k)
        if not mt:
            continue
        i, rest = mt.groups()
        p = f"model.layers.{i}."
        if rest == "input_layernorm.weight":
            out[p + "input_layernorm.weight"] = v
        elif rest == "pre_mlp_layernorm.weight":
            out[p + "post_attention_layernorm.weight"] = v
        elif rest == "self_attention.linear_proj.weight":
            out[p + "self_attn.o_proj.weight"] = v
        elif rest == "self_attention.linear_qkv.weight":
            w = v.view(ng, (nh // ng + 2) * hd, -1)
            q, kk, vv = w.split([nh // ng * hd, hd, hd], dim=1)
            out[p + "self_attn.q_proj.weight"] = q.reshape(nh * hd, -1)
            out[p + "self_attn.k_proj.weight"] = kk.reshape(ng * hd, -1)
            out[p + "self_attn.v_proj.weight"] = vv.reshape(ng * hd, -1)
        elif rest == "mlp.linear_fc1.weight":
            gate, up = v.chunk(2, dim=0)
            out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        elif rest == "mlp.linear_fc2.weight":
            out[p + "mlp.down_proj.weight"] = v
        elif rest == "mlp.router.weight":
            out[p + "block_sparse_moe.gate.weight"] = v
        elif (me := re.match(r"^mlp\.experts\.local_experts\.(\d+)\.linear_fc(1|2)\.weight$", rest)):
            e, which = me.groups()
            q = p + f"block_sparse_moe.experts.{e}."
            if which == "1":
                out[q + "w1.weight"], out[q + "w3.weight"] = v.chunk(2, dim=0)
            else:
                out[q + "w2.weight"] = v
        else:
            raise ValueError(f"no Hugging Face name for megatron weight {k}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_config(cfg: dict, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
    m = cfg["spec"]["model"]
    common = {"vocab_size": cfg["vocab_size"], "hidden_size": m["hidden_size"],
              "intermediate_size": m["ffn_hidden_size"], "num_hidden_layers": m["num_layers"],
              "num_attention_heads": m["num_attention_heads"],
              "num_key_value_heads": m.get("num_query_groups") or m["num_attention_heads"],
              "head_dim": m["hidden_size"] // m["num_attention_heads"], "hidden_act": "silu",
              "max_position_embeddings": cfg["seq_length"], "rms_norm_eps": m["norm_epsilon"],
              "rope_parameters": {"rope_type": "default", "rope_theta": float(m["rotary_base"])},
              "rope_theta": float(m["rotary_base"]), "tie_word_embeddings": False, "attention_bias": False,
              "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "torch_dtype": "float32",
              "initializer_range": m["init_method_std"]}
    if m.get("num_experts"):
        return {**common, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "num_local_experts": m["num_experts"], "num_experts_per_tok": m["moe_router_topk"],
                "router_aux_loss_coef": m["moe_aux_loss_coeff"], "output_router_logits": False}
    return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "mlp_bias": False}


def export_hf(ckpt_dir: Path, out_dir: Path, tokenizer_dir: Path | None = None) -> dict:
    """`ckpt_dir`: model.safetensors + config.json; `tokenizer_dir` (default: the same folder): tokenizer.model,
    tokenizer_hf/ and lineage.json (a cluster run's converted weights and its checkpoint asset are two folders)."""
    from safetensors.torch import load_file, save_file

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    side = Path(tokenizer_dir) if tokenizer_dir is not None else ckpt_dir
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = _special_ids(side)
    hf = convert_state(load_file(str(ckpt_dir / "model.safetensors")), cfg)
    save_file(hf, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(cfg, *ids), indent=1))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids[0], "eos_token_id": ids[1], "pad_token_id": ids[2]}, indent=1))
    tok = side / "tokenizer_hf"
    if tok.is_dir():
        for f in tok.iterdir():
            shutil.copy(f, out_dir / f.name)
    if (side / "tokenizer.model").exists():
        shutil.copy(side / "tokenizer.model", out_dir / "tokenizer.model")
    for f in ("lineage.json",):
        if (side / f).exists():
            shutil.copy(side / f, out_dir / f"kura_{f}")
    return {"architecture": hf_config(cfg, *ids)["architectures"][0], "tensors": len(hf),
            "parameters": sum(v.numel() for v in hf.values())}


def _special_ids(ckpt_dir: Path) -> tuple:
    if not (ckpt_dir / "tokenizer.model").exists():
        if (ckpt_dir / "tokenizer_hf").is_dir():  # a run on an imported base: the base's own tokenizer
            from transformers import AutoTokenizer

            t = AutoTokenizer.from_pretrained(str(ckpt_dir / "tokenizer_hf"))
            return t.bos_token_id, t.eos_token_id, t.pad_token_id
        return None, None, None
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ckpt_dir / "tokenizer.model"))
    f = lambda i: i if i >= 0 else None  # noqa: E731
    return f(sp.bos_id()), f(sp.eos_id()), f(sp.pad_id())
