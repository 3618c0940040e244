"""Parallel encoding (kura's SentencePiece model, or a Hugging Face tokenizer folder): documents are split into
chunks and encoded by a pool of worker processes, each loading the tokenizer once. Small inputs are encoded
in-process (a worker pool costs ~1 s to start)."""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

_SP = None


def _init(model_path: str) -> None:
    global _SP
    from kura.tokenize.hf import load_tokenizer

    _SP = load_tokenizer(model_path)


def _encode(texts: list[str]) -> list[np.ndarray]:
    # int32 arrays: a quarter of the memory of Python int lists
    return [np.asarray(ids, dtype=np.int32) for ids in _SP.encode_batch(texts)]


def _encode_flat(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    # one flat array + lengths per chunk: a single buffer to pickle instead of thousands of small arrays
    ids = _SP.encode_batch(texts)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate([np.array(x, dtype=np.int32) for x in ids]) if ids else np.zeros(0, np.int32)
    return flat, lengths


def encode_parallel(model_path: str, texts: list[str], workers: int | None = None, chunk_docs: int = 2048,
                    min_parallel_chars: int = 2_000_000) -> list[np.ndarray]:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or sum(len(t) for t in texts) < min_parallel_chars:
        _init(model_path)
        return _encode(texts)
    chunks = [texts[i:i + chunk_docs] for i in range(0, len(texts), chunk_docs)]
    ctx = mp.get_context("spawn")  # no fork of a process holding torch/Dagster state
    with ctx.Pool(workers, initializer=_init, initargs=(model_path,)) as pool:
        out: list[np.ndarray] = []
        for flat, lengths in pool.imap(_encode_flat, chunks):
            out.extend(np.split(flat, np.cumsum(lengths)[:-1]))
    return out
