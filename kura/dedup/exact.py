"""Exact deduplication across all shards by a hash of the normalized text.

The key ignores case, whitespace and punctuation differences that survive NFKC (so "Hello, world" and
"hello world" collide), which catches the copy-pasted pages that make up most exact duplicates in web crawls.
The first occurrence wins, in a deterministic order (shards sorted by name, rows in order), so the kept set does
not depend on scheduling. Memory: one 16-byte digest per distinct document (~100 MB per 5M documents).
Near duplicates: kura.dedup.minhash; both run shard by shard in kura.dedup.incremental.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kura.dedup.minhash import normalize_for_shingles


def dedup_key(text: str) -> bytes:
    norm = normalize_for_shingles(text)  # the same normalization as the MinHash shingles
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


@dataclass
class ExactDeduper:
    """Streaming exact dedup. `seen` can be pre-seeded with the keys of earlier shards (incremental runs)."""

    seen: dict[bytes, str] = field(default_factory=dict)

    def check(self, doc_id: str, text: str) -> str | None:
        """None if the document is new (and remember it), else the doc_id of the first copy."""
        return self.check_key(doc_id, dedup_key(text))

    def check_key(self, doc_id: str, k: bytes) -> str | None:
        """`check` for a key computed elsewhere (e.g. in a worker process that holds the text)."""
        first = self.seen.get(k)
        if first is None:
            self.seen[k] = doc_id
        return first
