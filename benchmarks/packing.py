"""Tokenize + pack throughput and packing quality: kura versus Megatron-LM's preprocess_data.py-style path, on
the same ≥100 MB of text, in the same run.

    .venv/bin/python benchmarks/packing.py [--mb 100] [--seq 2048] [--workers 2]

Megatron-style path (what `tools/preprocess_data.py --workers 1` does): tokenize each document with the same
SentencePiece model in one process, append EOD, write one Megatron document per input document with
megatron-core's IndexedDatasetBuilder; GPTDataset later concatenates documents and cuts samples at sequence
boundaries (concat-and-chunk), so we count how many documents that fit in a sequence get cut.
kura path: parallel tokenization (one worker per core) + best-fit-decreasing packing + .bin/.idx and mask writer.
Prints a table (seconds, tokens/s, ratio, utilization, split documents, peak memory) and the line
`packing utilization: XX.XX%`.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_text(target_mb: int) -> list[str]:
    from kura.corpus.default import DefaultCorpusConfig, generate_documents

    docs, seed, size = [], 0, 0
    while size < target_mb * 1_000_000:
        batch = [d for d in generate_documents(DefaultCorpusConfig(seed=seed, n_docs=5000)) if d.strip()]
        docs += batch
        size += sum(len(d.encode()) for d in batch)
        seed += 1
    return docs


def megatron_style(model: Path, docs: list[str], out: Path) -> tuple[float, int]:
    import numpy as np
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    t = time.perf_counter()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    b = IndexedDatasetBuilder(str(out / "megatron.bin"), dtype=np.uint16)
    n = 0
    for doc in docs:
        ids = sp.encode(doc) + [sp.eos_id()]
        b.add_item(torch.tensor(ids, dtype=torch.int64))
        b.end_document()
        n += len(ids)
    b.finalize(str(out / "megatron.idx"))
    return time.perf_counter() - t, n


def kura_path(model: Path, docs: list[str], out: Path, seq: int, workers: int) -> tuple[float, dict]:
    from kura.pack.megatron import write_packed_source
    from kura.tokenize.parallel import encode_parallel
    from kura.tokenize.spm import SpmTokenizer

    t = time.perf_counter()
    tok = SpmTokenizer(model)
    ids = encode_parallel(str(model), docs, workers=workers)
    info = write_packed_source(out, "bench", [(x, None) for x in ids], seq, tok.eos_id, tok.pad_id, tok.vocab_size)
    return time.perf_counter() - t, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--vocab", type=int, default=4000)
    args = ap.parse_args()
    from kura.pack.bestfit import concat_chunk_stats
    from kura.tokenize.spm import TokenizerConfig, train_sentencepiece

    work = Path(tempfile.mkdtemp(prefix="kura-packbench-"))
    t = time.perf_counter()
    docs = make_text(args.mb)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"{len(docs)} documents, {mb:.1f} MB of text generated in {time.perf_counter() - t:.0f} s")
    train_sentencepiece(docs, work, TokenizerConfig(vocab_size=args.vocab, sample_chars=3_000_000))
    model = work / "tokenizer.model"
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m_s, m_tokens = megatron_style(model, docs, work)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    k_s, info = kura_path(model, docs, work, args.seq, args.workers)
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    megatron_ds = IndexedDataset(str(work / "megatron"))  # keep it alive: sequence_lengths is a view of its mmap
    lengths = np.array(megatron_ds.sequence_lengths).tolist()
    cc = concat_chunk_stats(lengths, args.seq + 1)
    fitting = sum(1 for n in lengths if n <= args.seq + 1)
    print(f"\n{'path':44s} {'seconds':>8s} {'tokens/s':>10s} {'split docs that fit':>20s} {'peak RSS MiB':>13s}")
    print(f"{'megatron-style (1 process, concat-and-chunk)':44s} {m_s:8.1f} {m_tokens / m_s:10.0f} "
          f"{cc.fitting_documents_split:>11d} of {fitting:<7d} {max(rss0, rss1) / 1024:13.0f}")
    print(f"{f'kura ({args.workers} workers, best-fit decreasing)':44s} {k_s:8.1f} {info['real_tokens'] / k_s:10.0f} "
          f"{info['fitting_documents_split']:>11d} of {fitting:<7d} {rss2 / 1024:13.0f} (+ workers {rss_children / 1024:.0f})")
    print(f"{'ratio kura / megatron-style (tokens/s)':44s} {(info['real_tokens'] / k_s) / (m_tokens / m_s):8.2f}")
    print(f"same tokens on both paths: {info['real_tokens'] == m_tokens} ({m_tokens} tokens, sequence length {args.seq})")
    print(f"documents longer than a sequence (split at sequence boundaries): {info['split_documents']}")
    print(f"packing utilization: {100 * info['utilization']:.2f}%")


if __name__ == "__main__":
    main()
