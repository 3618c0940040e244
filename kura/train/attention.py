"""Causal self-attention through `torch.nn.functional.scaled_dot_product_attention` for megatron-core's local spec.

Why: without TransformerEngine, megatron-core's local layer spec uses `DotProductAttention`, which materializes the
[b·heads, s, s] score matrix, applies the mask and softmax in separate kernels, and expands GQA key/value heads
with repeat_interleave. On an H100 that held a ~1B model at 15% MFU (benchmarks/train.py). SDPA dispatches to
flash / memory-efficient kernels (GPU) or a fused CPU kernel, handles GQA natively, and never stores the scores.
It is a drop-in `core_attention` submodule: same constructor (inherited), same [s, b, heads, d] → [s, b, hidden]
contract, same softmax scale. kura's models are always causal decoders, so the mask argument is the causal mask
and `is_causal=True` replaces it (tests check the logits equal DotProductAttention's).
"""
from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


class SDPAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention: packed sequences and attention bias are not supported")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                             enable_gqa=k.size(1) != q.size(1))
        s, b = out.size(2), out.size(0)
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def use_sdpa(layer_spec) -> None:
    """Swap the core attention of a local GPT layer spec (in place)."""
    layer_spec.submodules.self_attention.submodules.core_attention = SDPAttention

