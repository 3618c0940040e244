"""Write packed training data as Megatron indexed datasets (`.bin` + `.idx`) and a blend file.

Layout of a packed dataset folder:
  train_<source>.bin/.idx   one Megatron "document" per packed sequence of exactly seq_len+1 tokens (documents
                            are concatenated with EOD and cut at sequence boundaries; the tail that does not fill a
                            sequence is counted and dropped)
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
    return np.uint16 if vocab_size < 65500 else np.int32


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def pack_sequences(token_lists, seq_len: int, eod: int):
    """Concatenate documents (each followed by EOD) and yield chunks of seq_len+1 tokens; returns via
    StopIteration value the number of dropped tail tokens."""
    buf: list[int] = []
    width = seq_len + 1
    for ids in token_lists:
        buf.extend(ids)
        buf.append(eod)
        while len(buf) >= width:
            yield buf[:width]
            buf = buf[width:]
    return len(buf)


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


def write_packed_source(out_dir: Path, label: str, token_lists, seq_len: int, eod: int, vocab_size: int) -> dict:
    gen = pack_sequences(token_lists, seq_len, eod)
    dropped = 0

    def run():
        nonlocal dropped
        dropped = yield from gen

    stats = write_indexed(out_dir / f"train_{safe_name(label)}", run(), vocab_size)
    return {**stats, "prefix": f"train_{safe_name(label)}", "dropped_tail_tokens": dropped}


def write_blend(out_dir: Path, train: dict[str, dict]) -> dict:
    """Weights are each source's share of packed tokens (what the mix resolved), so Megatron samples in the
    mix's proportions."""
    total = sum(v["tokens"] for v in train.values()) or 1
    pairs = [(round(v["tokens"] / total, 6), v["prefix"]) for v in train.values() if v["sequences"] > 0]
    blend = {"train": [x for w, p in pairs for x in (str(w), p)], "valid": [], "test": []}
    (out_dir / "blend.json").write_text(json.dumps(blend, indent=1))
    (out_dir / "data_args.txt").write_text(" ".join(f"{w} {p}" for w, p in pairs) + "\n")
    return blend
