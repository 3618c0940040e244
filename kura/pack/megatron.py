"""Write packed training data as Megatron indexed datasets (`.bin` + `.idx`) and a blend file.

Layout of a packed dataset folder (one per mix phase):
  train_<source>.bin/.idx   one Megatron "document" per packed sequence of exactly seq_len+1 tokens, filled by
                            best-fit-decreasing packing (kura.pack.bestfit): documents end with EOD, no document
                            that fits is split, free space is padded with the pad id
  train_<source>_mask.bin/.idx  the loss mask per token (uint8; 0 for padding and, for chat sources with
                            assistant_only, for prompt tokens) — kura's trainer reads it; Megatron-LM proper sees
                            padding as pad tokens
  train_<source>_mlm.idx/.bin   made on the training pod, not stored (`megatron_lm_view`): the view Megatron-LM's
                            GPTDataset reads so that each of its samples is one packed sequence
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
        builder.add_item(torch.as_tensor(np.asarray(seq, dtype=np.int64)))
        builder.end_document()
        n_seq += 1
        n_tok += len(seq)
    builder.finalize(str(prefix) + ".idx")
    return {"sequences": n_seq, "tokens": n_tok}


def write_rows(prefix: Path, rows: np.ndarray) -> None:
    """Write a (sequences × width) array as a Megatron indexed dataset, one document per row, in one pass:
    the .bin is the array's bytes and the .idx comes from megatron-core's own builder (format by construction)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=rows.dtype.type)
    builder.data_file.write(np.ascontiguousarray(rows).tobytes(order="C"))
    n, width = rows.shape
    builder.sequence_lengths = [width] * n
    builder.document_indices = list(range(n + 1))
    builder.finalize(str(prefix) + ".idx")


def megatron_lm_view(prefix: str | Path, suffix: str = "_mlm") -> str:
    """Make Megatron-LM's GPTDataset draw exactly kura's packed sequences; returns the view's prefix.

    GPTDataset concatenates its documents and cuts samples of seq_len+1 tokens every seq_len tokens (consecutive
    samples share one token). Fed kura's sequences of seq_len+1 tokens as documents, sample k starts k tokens
    later than sequence k: almost every sample straddles two packed sequences and the best-fit packing is lost
    (measured: 14 of 1,798 samples aligned on the demo's web phase). The view is a second `.idx` over the same
    `.bin` (a symlink, no copy) whose documents are the first seq_len tokens of each packed sequence — same byte
    pointers, lengths minus one — so sample k is sequence k's inputs exactly. Its last label is the first token of
    the next sample's sequence instead of the dropped last token: one label in seq_len. The index is written by
    megatron-core's own writer, atomically (temp + rename), so concurrent pods on a shared volume are safe."""
    import os

    from megatron.core.datasets.indexed_dataset import IndexedDataset, _IndexWriter

    prefix = str(prefix)
    src = IndexedDataset(prefix, mmap=True)
    ix = src.index
    if len(ix.sequence_lengths) and int(ix.sequence_lengths.min()) < 2:
        raise ValueError(f"{prefix}: a packed sequence shorter than 2 tokens; is this a packed dataset?")
    pointers = np.asarray(ix.sequence_pointers, dtype=np.int64)

    class _PointerWriter(_IndexWriter):
        def _sequence_pointers(self, sequence_lengths):
            return pointers.tolist()

    view = prefix + suffix
    tmp = f"{view}.idx.tmp-{os.getpid()}"
    with _PointerWriter(tmp, ix.dtype) as w:
        w.write(np.asarray(ix.sequence_lengths, dtype=np.int64) - 1, ix.sequence_modes,
                np.asarray(ix.document_indices, dtype=np.int64))
    link = f"{view}.bin.tmp-{os.getpid()}"
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.basename(prefix + ".bin"), link)
    os.replace(link, view + ".bin")
    os.replace(tmp, view + ".idx")
    return view


def write_packed_source(out_dir: Path, label: str, docs: list[tuple], seq_len: int, eod: int, pad: int,
                        vocab_size: int) -> dict:
    """docs: (token ids, loss mask or None) per document, EOD not yet appended. Best-fit packs them into
    sequences of seq_len+1 tokens and writes the tokens and the mask as two indexed datasets. Tokens live in one
    flat numpy array and the packed sequences in one matrix, so the cost is memory copies, not Python loops."""
    from kura.pack.bestfit import best_fit_pack

    width = seq_len + 1
    dtype = _dtype(vocab_size)
    lengths = np.array([len(ids) + 1 for ids, _ in docs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(docs) else np.zeros(0, np.int64)
    flat = np.full(int(lengths.sum()), eod, dtype=dtype)
    flat_mask = np.ones(int(lengths.sum()), dtype=np.uint8)
    for (ids, mask), s0, n in zip(docs, starts, lengths):
        flat[s0: s0 + n - 1] = ids
        if mask is not None:
            flat_mask[s0: s0 + n - 1] = mask
    bins, st = best_fit_pack(lengths.tolist(), width)
    rows = np.full((len(bins), width), pad, dtype=dtype)
    mrows = np.zeros((len(bins), width), dtype=np.uint8)
    for r, b in enumerate(bins):
        pos = 0
        for i, a, e in b.pieces:
            rows[r, pos: pos + e - a] = flat[starts[i] + a: starts[i] + e]
            mrows[r, pos: pos + e - a] = flat_mask[starts[i] + a: starts[i] + e]
            pos += e - a
    prefix = f"train_{safe_name(label)}"
    write_rows(out_dir / prefix, rows)
    write_rows(out_dir / f"{prefix}_mask", mrows)
    return {"sequences": len(bins), "tokens": len(bins) * width, "prefix": prefix, "mask_prefix": f"{prefix}_mask",
            "documents": st.documents, "real_tokens": st.tokens, "padding_tokens": st.padding,
            "utilization": round(st.utilization, 5), "split_documents": st.split_documents,
            "fitting_documents_split": st.fitting_documents_split, "loss_tokens": int(flat_mask.sum())}


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
