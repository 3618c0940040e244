"""Parallel SentencePiece encoding: documents are split into chunks and encoded by a pool of worker processes,
each loading the model once. Small inputs are encoded in-process (a worker pool costs ~1 s to start)."""
from __future__ import annotations

import multiprocessing as mp
import os

_SP = None


def _init(model_path: str) -> None:
    global _SP
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_file=model_path)


def _encode(texts: list[str]) -> list[list[int]]:
    return _SP.encode(texts)


def encode_parallel(model_path: str, texts: list[str], workers: int | None = None, chunk_docs: int = 512,
                    min_parallel_chars: int = 2_000_000) -> list[list[int]]:
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or sum(len(t) for t in texts) < min_parallel_chars:
        _init(model_path)
        return _encode(texts)
    chunks = [texts[i:i + chunk_docs] for i in range(0, len(texts), chunk_docs)]
    ctx = mp.get_context("spawn")  # no fork of a process holding torch/Dagster state
    with ctx.Pool(workers, initializer=_init, initargs=(model_path,)) as pool:
        out: list[list[int]] = []
        for part in pool.imap(_encode, chunks):
            out.extend(part)
    return out
