"""A Megatron `torch_dist` checkpoint → a kura checkpoint folder (model.safetensors with megatron-core GPTModel
names + config.json), so a cluster run exports to Hugging Face and feeds evaluation exactly like a local run.

Why no model is needed: a distributed checkpoint (PyTorch DCP files: `.metadata` + `__*.distcp`) stores *global*
tensors, independent of the TP/PP/EP layout it was written with: the layers of the decoder stacked on a leading
axis, the experts of an MoE layer on a second one (`mlp.experts.experts.*`, the layout megatron-core writes for
both its sequential and its grouped-GEMM experts), and TransformerEngine's names, where the pre-attention and
pre-MLP norms are fused into `linear_qkv` / `linear_fc1` as `layer_norm_weight`. megatron-core's local layers write
the same names, so one mapping covers a Megatron-LM run on the cluster and kura's own test checkpoints.
Only the model's tensors are read (no optimizer state), straight from the files, without a process group.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from kura.train.spec import RunSpec

TRACKER = "latest_checkpointed_iteration.txt"
_FUSED_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
_MODEL_KEY = re.compile(r"^(embedding\.|decoder\.|output_layer\.)")


class CheckpointFormatError(ValueError):
    pass


def latest_checkpoint(save_dir: Path) -> Path:
    """The folder of the newest finished checkpoint (Megatron writes the tracker file after the checkpoint)."""
    tracker = Path(save_dir) / TRACKER
    if not tracker.exists():
        raise CheckpointFormatError(f"{save_dir}: no {TRACKER} — no finished checkpoint to convert")
    it = tracker.read_text().strip()
    d = Path(save_dir) / ("release" if it == "release" else f"iter_{int(it):07d}")
    if not (d / ".metadata").exists():
        raise CheckpointFormatError(f"{d}: not a torch_dist checkpoint (no .metadata; use --ckpt-format torch_dist)")
    return d


def read_model_tensors(ckpt_dir: Path) -> dict:
    """{sharded key: global tensor} of the model's weights only."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(ckpt_dir))
    meta = reader.read_metadata()
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()
          if isinstance(m, TensorStorageMetadata) and _MODEL_KEY.match(k) and "_extra_state" not in k}
    if not sd:
        raise CheckpointFormatError(f"{ckpt_dir}: no model tensors (embedding./decoder./output_layer.) in it")
    dcp.load(sd, storage_reader=reader, no_dist=True)
    return sd


def to_kura_state(tensors: dict, spec: RunSpec, vocab_size: int) -> dict:
    """Unstack layers (and experts), rename the fused norms and drop Megatron's vocabulary padding (it rounds the
    embedding up to a multiple of 128 × TP rows that no token id reaches): the state dict `GPTModel.state_dict()`
    of the run's architecture has."""
    n_layers, n_exp = spec.model.num_layers, spec.model.num_experts or 0
    out = {}
    for key, t in tensors.items():
        if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if t.shape[0] < vocab_size:
                raise CheckpointFormatError(f"{key}: {t.shape[0]} rows for a vocabulary of {vocab_size}")
            out[key] = t[:vocab_size].contiguous()
            continue
        if not key.startswith("decoder.layers."):
            out[key] = t.contiguous()
            continue
        sub = key[len("decoder.layers."):]
        if t.shape[0] != n_layers:
            raise CheckpointFormatError(f"{key}: {t.shape[0]} stacked layers, the run spec has {n_layers}")
        for i in range(n_layers):
            if sub.startswith("mlp.experts.experts."):
                if not n_exp or t.shape[1] != n_exp:
                    raise CheckpointFormatError(f"{key}: shape {tuple(t.shape)} does not fit {n_exp} experts")
                rest = sub[len("mlp.experts.experts."):]
                for e in range(n_exp):
                    out[f"decoder.layers.{i}.mlp.experts.local_experts.{e}.{rest}"] = t[i, e].contiguous()
            else:
                out[f"decoder.layers.{i}.{_FUSED_NORMS.get(sub, sub)}"] = t[i].contiguous()
    return out


def convert(save_dir: Path, out_dir: Path, spec: RunSpec, *, vocab_size: int, seq_length: int) -> dict:
    """Write model.safetensors + config.json (kura's checkpoint format) for the newest checkpoint in `save_dir`."""
    from safetensors.torch import save_file

    ck = latest_checkpoint(save_dir)
    state = to_kura_state(read_model_tensors(ck), spec, vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"))
    iteration = (Path(save_dir) / TRACKER).read_text().strip()
    (out_dir / "config.json").write_text(json.dumps(
        {"format": "megatron-core-gpt", "spec": spec.model_dump(), "vocab_size": vocab_size,
         "seq_length": seq_length, "iterations": int(iteration) if iteration.isdigit() else iteration,
         "precision": str(next(iter(state.values())).dtype).replace("torch.", ""), "converted_from": str(ck)},
        indent=1))
    return {"converted_from": str(ck), "tensors": len(state),
            "parameters": int(sum(t.numel() for t in state.values()))}
