"""A small decoder-only GPT (pre-LN, RoPE, SwiGLU, tied embeddings) in plain torch.

Field names follow Megatron's arguments (num_layers, hidden_size, num_attention_heads, ffn_hidden_size,
seq_length, rotary_base) so a run spec renders to `pretrain_gpt.py` flags unchanged; the local trainer uses this
module because megatron-core's GPTModel needs CUDA shims on CPU (issue 6 moves local training onto it).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator


class GPTConfig(BaseModel):
    """Architecture of the local GPT."""

    num_layers: int = Field(2, ge=1, description="Transformer layers.")
    hidden_size: int = Field(128, ge=8, description="Model width.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide evenly).")
    ffn_hidden_size: int = Field(384, ge=8, description="SwiGLU inner width.")
    seq_length: int = Field(128, ge=8, description="Context length in tokens.")
    vocab_size: int = Field(2000, ge=8, description="Vocabulary size; taken from the tokenizer asset.")
    rotary_base: float = Field(10000.0, gt=0, description="RoPE base.")

    @model_validator(mode="after")
    def _check(self) -> "GPTConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        return self


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    b, h, t, d = x.shape
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.ln1 = nn.LayerNorm(c.hidden_size)
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=False)
        self.proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.ln2 = nn.LayerNorm(c.hidden_size)
        self.fc = nn.Linear(c.hidden_size, 2 * c.ffn_hidden_size, bias=False)
        self.out = nn.Linear(c.ffn_hidden_size, c.hidden_size, bias=False)

    def forward(self, x):
        b, t, h = x.shape
        nh = self.c.num_attention_heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, nh, h // nh).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, self.c.rotary_base), _rope(k, self.c.rotary_base)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, h))
        gate, up = self.fc(self.ln2(x)).chunk(2, dim=-1)
        return x + self.out(F.silu(gate) * up)


class GPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.hidden_size)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.emb.weight.T  # tied output layer

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                               reduction=reduction)
