"""Perplexity of a checkpoint on held-out documents, per language.

Each held-out document is scored in windows of the model's context (non-overlapping), so long documents count in
full; perplexity = exp(total NLL / total predicted tokens). A uniform model over V tokens scores V, which is the
sanity bound reported beside it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def perplexity(model, docs: list[np.ndarray], seq_length: int, max_docs: int = 500) -> dict:
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for doc in docs[:max_docs]:
            ids = torch.as_tensor(np.asarray(doc, dtype=np.int64))
            for s in range(0, len(ids) - 1, seq_length):
                chunk = ids[s: s + seq_length + 1]
                if len(chunk) < 2:
                    continue
                loss = model.loss(chunk[None, :-1], chunk[None, 1:], reduction="sum")
                nll += float(loss)
                n += len(chunk) - 1
    if n == 0:
        return {"perplexity": None, "tokens": 0, "documents": 0}
    return {"perplexity": round(math.exp(nll / n), 3), "nll_per_token": round(nll / n, 4), "tokens": n,
            "documents": min(len(docs), max_docs)}


class HFCausalLM:
    """A Hugging Face causal LM behind the `loss(idx, targets, reduction)` call the scorer uses."""

    def __init__(self, model):
        self.model = model

    def loss(self, idx, targets, reduction: str = "mean"):
        import torch.nn.functional as F

        logits = self.model(idx).logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                               reduction=reduction)


def load_hf(model_dir: Path) -> "HFCausalLM":
    import torch
    from transformers import AutoModelForCausalLM

    return HFCausalLM(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval())


def evaluate_heldout(model, packed_dir: Path, seq_length: int, vocab_size: int, max_docs: int = 500) -> dict:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = {}
    for idx in sorted(Path(packed_dir).glob("heldout_*.idx")):
        lang = idx.stem.removeprefix("heldout_")
        ds = IndexedDataset(str(idx.with_suffix("")))
        docs = [ds[i] for i in range(len(ds))]
        out[lang] = {**perplexity(model, docs, seq_length, max_docs), "uniform_baseline": vocab_size}
    return out
