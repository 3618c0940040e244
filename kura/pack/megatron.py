"""Write packed training data as Megatron indexed datasets (`.bin` + `.idx`) and a blend file.

Layout of a packed dataset folder (one per mix phase):
  train_<source>.bin/.idx   one Megatron "document" per packed sequence of exactly seq_len+1 tokens, filled by
                            best-fit-decreasing packing (kura.pack.bestfit): documents end with EOD, no document
                            that fits is split, free space is padded with the pad id
  train_<source>_mask.bin/.idx  the loss mask per token (uint8; 0 for padding and, for chat sources with
                            assistant_only, for prompt tokens) — kura's trainer reads it; Megatron-LM proper sees
                            padding as pad tokens
  heldout_<lang>.bin/.idx   one document per held-out document, for perplexity
  blend.json                Megatron's per-split data args {"train": ["w1", "train_a", ...]} (prefixes relative to
                            this folder), plus data_args.txt for `--data-args-path`
Token ids are stored as uint16 when the vocabulary fits (Megatron picks the same), else int32.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np


def _dtype(vocab_size: int):
    if vocab_size <= 255:
        return np.uint8
    return np.uint16 if vocab_size < 65500 else np.int32


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def write_indexed(prefix: Path, sequences, vocab_size: int) -> dict:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=_dtype(vocab_size))
    n_seq = n_tok = 0
    for seq in sequences:
        builder.add_item(torch.tensor(seq, dtype=torch.int64))
        builder.end_document()
        n_seq += 1
        n_tok += len(seq)
    builder.finalize(str(prefix) + ".idx")
    return {"sequences": n_seq, "tokens": n_tok}


def write_packed_source(out_dir: Path, label: str, docs: list[tuple[list[int], list[int]]], seq_len: int,
                        eod: int, pad: int, vocab_size: int) -> dict:
    """docs: (token ids, loss mask) per document, EOD not yet appended. Best-fit packs them into sequences of
    seq_len+1 tokens and writes the tokens and the mask as two indexed datasets."""
    from kura.pack.bestfit import best_fit_pack

    width = seq_len + 1
    toks = [ids + [eod] for ids, _ in docs]
    masks = [m + [1] for _, m in docs]
    bins, st = best_fit_pack([len(t) for t in toks], width)

    def sequences(source):
        for b in bins:
            seq = [x for i, a, e in b.pieces for x in source[i][a:e]]
            yield seq + ([pad] if source is toks else [0]) * (width - len(seq))

    prefix = f"train_{safe_name(label)}"
    stats = write_indexed(out_dir / prefix, sequences(toks), vocab_size)
    write_indexed(out_dir / f"{prefix}_mask", sequences(masks), 2)
    return {**stats, "prefix": prefix, "mask_prefix": f"{prefix}_mask", "documents": st.documents,
            "real_tokens": st.tokens, "padding_tokens": st.padding, "utilization": round(st.utilization, 5),
            "split_documents": st.split_documents, "fitting_documents_split": st.fitting_documents_split,
            "loss_tokens": sum(sum(m) for m in masks)}


def write_blend(out_dir: Path, train: dict[str, dict]) -> dict:
    """Weights are each source's share of real (non-padding) tokens — what the mix resolved — so Megatron samples
    in the mix's proportions. Written as Megatron's per-split data args (blend.json) and --data-args-path text."""
    total = sum(v.get("real_tokens", v["tokens"]) for v in train.values()) or 1
    pairs = [(round(v.get("real_tokens", v["tokens"]) / total, 6), v["prefix"]) for v in train.values()
             if v["sequences"] > 0]
    blend = {"train": [x for w, p in pairs for x in (str(w), p)], "valid": [], "test": []}
    (out_dir / "blend.json").write_text(json.dumps(blend, indent=1))
    (out_dir / "data_args.txt").write_text(" ".join(f"{w} {p}" for w, p in pairs) + "\n")
    return blend
