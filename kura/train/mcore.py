"""megatron-core pieces of the local trainer: the model and the dataset, both built the way Megatron-LM builds them.

- `build_model`: megatron-core `GPTModel` with the local (no TransformerEngine) layer spec, Llama-style: RMSNorm,
  SwiGLU, RoPE, no biases, untied output layer; MoE layers (router + SequentialMLP experts, allgather dispatcher)
  when the spec has experts. fp32 on CPU; bf16 on GPU when the run asks for it. Core attention is torch SDPA
  (kura.train.attention) instead of megatron's unfused DotProductAttention.
- `PackedSequenceDataset`: a megatron-core `MegatronDataset` over kura's packed sequences (one Megatron
  "document" = one packed sequence of seq_len+1 tokens, plus the loss-mask dataset beside it), so
  `BlendedMegatronDatasetBuilder` blends the phase's sources by their weights exactly as Megatron-LM would, with
  its own blending index. Megatron's GPTDataset cannot be used directly: it re-concatenates documents into
  samples (losing best-fit packing's alignment) and has no per-token loss mask for assistant-only chat data.
  Sample i of an epoch is a seeded permutation of the sequences, so the data order is a pure function of
  (seed, sample index): a resumed run sees exactly the batches the killed run would have.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kura.train.spec import RunSpec


def transformer_config(spec: RunSpec, *, bf16: bool = False):
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    m = spec.model
    kw = {}
    if m.num_experts:
        kw = dict(num_moe_experts=m.num_experts, moe_router_topk=m.moe_router_topk,
                  moe_ffn_hidden_size=m.ffn_hidden_size, moe_aux_loss_coeff=m.moe_aux_loss_coeff,
                  moe_router_load_balancing_type="aux_loss",
                  moe_token_dispatcher_type="alltoall" if torch.cuda.is_available() else "allgather")
    return TransformerConfig(
        num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
        num_query_groups=m.groups, ffn_hidden_size=m.ffn_hidden_size, kv_channels=m.kv_channels,
        gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm", layernorm_epsilon=m.norm_epsilon,
        add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0, init_method_std=m.init_method_std,
        use_cpu_initialization=not torch.cuda.is_available(), bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32, pipeline_dtype=torch.float32, **kw)


def build_model(spec: RunSpec, vocab_size: int, seq_length: int, *, bf16: bool = False, sdpa: bool = True):
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from kura.train import cpu_shims

    cpu_shims.init_single_process(spec.seed)
    torch.manual_seed(spec.seed)
    cfg = transformer_config(spec, bf16=bf16)
    layer_spec = get_gpt_layer_local_spec(num_experts=spec.model.num_experts, normalization="RMSNorm")
    if sdpa:
        from kura.train.attention import use_sdpa

        use_sdpa(layer_spec)  # fused causal attention (flash on GPU); sdpa=False keeps megatron's unfused one
    model = GPTModel(config=cfg, transformer_layer_spec=layer_spec, vocab_size=vocab_size,
                     max_sequence_length=seq_length, position_embedding_type="rope",
                     rotary_base=int(spec.model.rotary_base), share_embeddings_and_output_weights=False)
    return model.cuda() if torch.cuda.is_available() else model


def causal_mask(seq_length: int, device=None):
    import torch

    return torch.triu(torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool, device=device), diagonal=1)


def forward_logits(model, tokens):
    """Logits [b, s, vocab] for token ids [b, s]."""
    import torch

    b, s = tokens.shape
    pos = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    return model(tokens, pos, causal_mask(s, tokens.device))


def loss_and_tokens(model, batch: dict):
    """Mean next-token loss over the tokens whose loss mask is 1 (Megatron's per-token loss × mask)."""
    import torch

    tokens, labels, mask = batch["tokens"], batch["labels"], batch["loss_mask"]
    b, s = tokens.shape
    pos = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    per_token = model(tokens, pos, causal_mask(s, tokens.device), labels=labels)
    n = mask.sum()
    return (per_token.float() * mask).sum() / n.clamp(min=1), int(n)


# ---------------------------------------------------------------------------------------------------- dataset

def _dataset_class():
    from megatron.core.datasets.megatron_dataset import MegatronDataset
    import torch

    class PackedSequenceDataset(MegatronDataset):
        """Packed sequences (seq_len+1 tokens each) with their loss mask, in a seeded per-epoch order."""

        @staticmethod
        def numel_low_level_dataset(low_level_dataset) -> int:
            return len(low_level_dataset[0])

        @staticmethod
        def build_low_level_dataset(dataset_path: str, config):
            from megatron.core.datasets.indexed_dataset import IndexedDataset

            mask = Path(dataset_path + "_mask.idx")
            return (IndexedDataset(dataset_path),
                    IndexedDataset(dataset_path + "_mask") if mask.exists() else None)

        def __len__(self) -> int:
            return max(self.num_samples or 0, len(self.indices))

        def _perm(self, epoch: int) -> np.ndarray:
            """The epoch's order, computed once per epoch (not per sample: O(sequences) each)."""
            cache = self.__dict__.setdefault("_perms", {})
            if epoch not in cache:
                if len(cache) > 2:
                    cache.clear()
                cache[epoch] = np.random.default_rng([self.config.random_seed, epoch]).permutation(len(self.indices))
            return cache[epoch]

        def __getitem__(self, idx: int) -> dict:
            epoch, pos = divmod(int(idx), len(self.indices))
            j = int(self.indices[self._perm(epoch)[pos]])
            toks, masks = self.dataset
            seq = np.asarray(toks[j], dtype=np.int64)
            m = np.asarray(masks[j], dtype=np.float32) if masks is not None else np.ones(len(seq), np.float32)
            return {"tokens": torch.from_numpy(seq[:-1].copy()), "labels": torch.from_numpy(seq[1:].copy()),
                    "loss_mask": torch.from_numpy(m[1:].copy())}

    return PackedSequenceDataset


def build_train_dataset(packed_dir: Path, num_samples: int, seed: int, seq_length: int):
    """megatron-core's BlendedMegatronDatasetBuilder over the phase's blend.json (train split only)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

    import logging

    logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)  # "cannot save indexes" on every build
    blend = json.loads((Path(packed_dir) / "blend.json").read_text())["train"]
    if not blend:
        raise ValueError(f"packed dataset {packed_dir} has no training sequences")
    prefixes = [str(Path(packed_dir) / blend[i + 1]) for i in range(0, len(blend), 2)]
    weights = [float(blend[i]) for i in range(0, len(blend), 2)]
    cfg = BlendedMegatronDatasetConfig(random_seed=seed, sequence_length=seq_length,
                                       blend_per_split=[(prefixes, weights), None, None],
                                       mid_level_dataset_surplus=0.05)
    cls = _dataset_class()
    train, _, _ = BlendedMegatronDatasetBuilder(cls, [num_samples, 0, 0], lambda: True, cfg).build()
    return train


def collate(samples: list[dict], device=None) -> dict:
    import torch

    return {k: torch.stack([s[k] for s in samples]).to(device) for k in ("tokens", "labels", "loss_mask")}
