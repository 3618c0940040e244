"""Exact + near-duplicate dedup over shards, incremental across runs.

State carried from the previous run (its output folder): which shard versions were processed, and the index
(doc id, exact key, MinHash signature) of every document kept so far. A run whose earlier shards are unchanged
processes only the new shards against that index and reuses the earlier shards' results without reading them
again; if an earlier shard changed or vanished, or the dedup settings changed, everything is recomputed (the
index would otherwise remember documents that no longer exist). Order: earlier shards first, then new shards by
name, documents in order — the first copy wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kura.dedup.exact import ExactDeduper, dedup_key
from kura.dedup.minhash import LSHIndex, MinHashConfig, MinHasher
from kura.dedup.minhash import algorithm as minhash_algorithm


@dataclass
class DedupState:
    cfg: MinHashConfig
    near: bool
    shard_versions: dict[str, str] = field(default_factory=dict)
    algorithm: str = field(default_factory=lambda: minhash_algorithm())
    exact: ExactDeduper = field(default_factory=ExactDeduper)
    index: LSHIndex | None = None

    def __post_init__(self):
        if self.index is None:
            self.index = LSHIndex(self.cfg)

    def compatible(self, cfg: MinHashConfig, near: bool, shard_versions: dict[str, str]) -> bool:
        return (self.cfg == cfg and self.near == near and self.algorithm == minhash_algorithm()
                and all(shard_versions.get(k) == v for k, v in self.shard_versions.items()))

    def to_rows(self) -> list[dict]:
        ids, sigs = self.index.to_arrays()
        sig_by_id = dict(zip(ids, sigs))
        return [{"doc_id": doc_id, "exact_key": key.hex(),
                 "signature": sig_by_id[doc_id].tolist() if doc_id in sig_by_id else None}
                for key, doc_id in self.exact.seen.items()]

    @classmethod
    def from_rows(cls, cfg: MinHashConfig, near: bool, shard_versions: dict[str, str], rows: list[dict],
                  algorithm: str | None = None):
        st = cls(cfg, near, dict(shard_versions), algorithm or minhash_algorithm())
        st.exact.seen = {bytes.fromhex(r["exact_key"]): r["doc_id"] for r in rows}
        with_sig = [r for r in rows if r["signature"] is not None]
        st.index = LSHIndex.from_arrays(cfg, [r["doc_id"] for r in with_sig],
                                        np.array([r["signature"] for r in with_sig], dtype=np.uint32).reshape(
                                            len(with_sig), cfg.num_perm))
        return st


def dedup_shard(state: DedupState, hasher: MinHasher, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """One shard against everything seen so far; returns (kept, duplicates with reason and duplicate_of)."""
    sigs = hasher.signatures([r["text"] for r in rows]) if state.near else [None] * len(rows)
    return dedup_signed(state, hasher, rows, [dedup_key(r["text"]) for r in rows], sigs)


def dedup_signed(state: DedupState, hasher: MinHasher, rows: list[dict], keys: list[bytes],
                 sigs) -> tuple[list[dict], list[dict]]:
    """`dedup_shard` with exact keys and signatures computed elsewhere (worker processes that hold the texts);
    `rows` need only a doc_id."""
    kept, dups = [], []
    for r, key, sig in zip(rows, keys, sigs):
        first = state.exact.check_key(r["doc_id"], key)
        if first is not None:
            dups.append({**r, "reason": "exact_duplicate", "duplicate_of": first, "similarity": 1.0})
            continue
        if state.near:
            keys = hasher.band_keys(sig)
            hit = state.index.query(keys, sig)
            if hit is not None:
                state.exact.seen.pop(key, None)  # not kept: its exact key must not win later
                dups.append({**r, "reason": "near_duplicate", "duplicate_of": hit[0], "similarity": round(hit[1], 4)})
                continue
            state.index.add(r["doc_id"], keys, sig)
        kept.append(r)
    return kept, dups
