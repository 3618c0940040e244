"""A small character n-gram language model for perplexity filtering (the CCNet recipe — score web text with an LM
trained on a clean reference set, keep the low-perplexity head — without KenLM or a download).

Why characters: Japanese has no word boundaries, and a character model needs no tokenizer asset upstream.
Model: interpolated absolute discounting (the core of Kneser–Ney without the continuation counts) over orders
1..`order`; counts live in hashed tables of `n_buckets` int32 cells per order (collisions only add a little
probability mass to unseen n-grams; at 2^20 buckets and a few MB of reference text they are rare). Everything is
vectorized with numpy over the code points of a document: for each position, the hash of the 1..order-gram that
ends there is looked up in the tables, so scoring runs at several MB/s on one core.

    P_k(c | h) = max(C(hc) - D, 0) / C(h·) + D · N1+(h·) / C(h·) · P_{k-1}(c | h')      (C(h·) > 0)
    P_k(c | h) = P_{k-1}(c | h')                                                         (C(h·) = 0)
    P_1(c)     = (C(c) + 1) / (N + V)      V = n_buckets (add-one over the hashed vocabulary)

Perplexity of a document = exp(mean negative log-probability per character) over its first `max_chars`.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

_MUL = np.uint64(1_000_003)
_BOS = np.uint64(2)  # a code point that never occurs in normalized text: pads the start of a document


class NgramLMConfig(BaseModel):
    """Character n-gram LM settings."""

    order: int = Field(4, ge=1, le=8, description="Longest n-gram (characters).")
    n_buckets: int = Field(1 << 20, ge=1024, description="Hash buckets per order for the count tables.")
    discount: float = Field(0.75, gt=0, lt=1, description="Absolute discount D.")
    max_chars: int = Field(4000, ge=50, description="Only the first characters of a document are scored.")


def _codepoints(text: str, cfg: NgramLMConfig) -> np.ndarray:
    s = unicodedata.normalize("NFKC", text[: cfg.max_chars])
    return np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def _gram_hashes(cps: np.ndarray, order: int, n_buckets: int) -> list[np.ndarray]:
    """hashes[k-1][i] = bucket of the k-gram ending at position i (the text is padded with order-1 BOS marks);
    hashes for k = 1..order."""
    pad = np.concatenate([np.full(order - 1, _BOS, dtype=np.uint64), cps])
    n = len(cps)
    out = []
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, order + 1):
            # the k-gram ending at i is pad[i + order - k : i + order]; extend the (k-1)-gram hash leftwards
            h = h + pad[order - k: order - k + n] * (_MUL ** np.uint64(k - 1)) + np.uint64(k) * np.uint64(0x9E37)
            out.append(h % np.uint64(n_buckets))
    return out


def _context_hashes(cps: np.ndarray, order: int, n_buckets: int) -> list[np.ndarray]:
    """ctx[k-1][i] = bucket of the (k-1)-character context before position i, for k = 2..order (index 0 unused)."""
    pad = np.concatenate([np.full(order - 1, _BOS, dtype=np.uint64), cps])
    n = len(cps)
    out = [np.zeros(0, dtype=np.uint64)]
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(2, order + 1):
            j = k - 1  # context length
            step = pad[order - 1 - j: order - 1 - j + n] * (_MUL ** np.uint64(j - 1))
            h = h + step + np.uint64(j) * np.uint64(0x7F4A)
            out.append(h % np.uint64(n_buckets))
    return out


class CharNgramLM:
    def __init__(self, cfg: NgramLMConfig, grams: np.ndarray | None = None, ctx: np.ndarray | None = None,
                 types: np.ndarray | None = None, total: int = 0):
        self.cfg = cfg
        shape = (cfg.order, cfg.n_buckets)
        self.grams = grams if grams is not None else np.zeros(shape, np.int32)   # C(hc) per order
        self.ctx = ctx if ctx is not None else np.zeros(shape, np.int32)         # C(h·) per order (k >= 2)
        self.types = types if types is not None else np.zeros(shape, np.int32)   # N1+(h·) per order (k >= 2)
        self.total = total

    @classmethod
    def train(cls, texts: list[str], cfg: NgramLMConfig) -> "CharNgramLM":
        lm = cls(cfg)
        grams: list[list[np.ndarray]] = [[] for _ in range(cfg.order)]
        ctxs: list[list[np.ndarray]] = [[] for _ in range(cfg.order)]
        for t in texts:
            cps = _codepoints(t, cfg)
            if not len(cps):
                continue
            lm.total += len(cps)
            for k, (g, c) in enumerate(zip(_gram_hashes(cps, cfg.order, cfg.n_buckets),
                                           _context_hashes(cps, cfg.order, cfg.n_buckets))):
                grams[k].append(g)
                ctxs[k].append(c)
        for k in range(cfg.order):
            if not grams[k]:
                continue
            g = np.concatenate(grams[k]).astype(np.int64)
            lm.grams[k] = np.bincount(g, minlength=cfg.n_buckets).astype(np.int32)
            if k:
                c = np.concatenate(ctxs[k]).astype(np.int64)
                lm.ctx[k] = np.bincount(c, minlength=cfg.n_buckets).astype(np.int32)
                pairs = np.unique((c.astype(np.uint64) << np.uint64(32)) | g.astype(np.uint64))
                lm.types[k] = np.bincount((pairs >> np.uint64(32)).astype(np.int64),
                                          minlength=cfg.n_buckets).astype(np.int32)
        return lm

    def logprobs(self, text: str) -> np.ndarray:
        """Natural-log probability of each character given the previous order-1 characters."""
        cps = _codepoints(text, self.cfg)
        if not len(cps):
            return np.zeros(0)
        g = _gram_hashes(cps, self.cfg.order, self.cfg.n_buckets)
        c = _context_hashes(cps, self.cfg.order, self.cfg.n_buckets)
        d = self.cfg.discount
        p = (self.grams[0][g[0].astype(np.int64)] + 1.0) / (self.total + self.cfg.n_buckets)
        for k in range(1, self.cfg.order):
            ci = c[k].astype(np.int64)
            n_ctx = self.ctx[k][ci].astype(np.float64)
            n_gram = self.grams[k][g[k].astype(np.int64)].astype(np.float64)
            n_types = self.types[k][ci].astype(np.float64)
            safe = np.maximum(n_ctx, 1.0)
            higher = np.maximum(n_gram - d, 0.0) / safe + d * n_types / safe * p
            p = np.where(n_ctx > 0, np.minimum(higher, 1.0), p)
        return np.log(p)

    def perplexity(self, text: str) -> float:
        lp = self.logprobs(text)
        return float(np.exp(-lp.mean())) if len(lp) else float("inf")

    def perplexities(self, texts: list[str]) -> np.ndarray:
        return np.array([self.perplexity(t) for t in texts], dtype=np.float64)

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        np.savez_compressed(out_dir / "ngram_lm.npz", grams=self.grams, ctx=self.ctx, types=self.types)
        (out_dir / "ngram_lm.json").write_text(json.dumps({"config": self.cfg.model_dump(), "total": self.total}))

    @classmethod
    def load(cls, d: Path) -> "CharNgramLM":
        d = Path(d)
        meta = json.loads((d / "ngram_lm.json").read_text())
        z = np.load(d / "ngram_lm.npz")
        return cls(NgramLMConfig(**meta["config"]), z["grams"], z["ctx"], z["types"], meta["total"])
