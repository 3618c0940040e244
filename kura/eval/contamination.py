"""Contamination check: n-gram overlap between evaluation sets and everything that reached a model's training data.

Why: the llm-jp community saw jaster-tuned models inflate jaster scores; a checkpoint whose training data contains
an evaluation item's text scores what it memorized. kura knows, through lineage, every document that reached a
checkpoint: the data-mix selections of every phase of every run in its chain (replay included). Each eval item is
reduced to character n-grams (default 13 characters after NFKC, lowercasing and whitespace/punctuation removal —
character n-grams work for Japanese, which has no word boundaries); an item is contaminated when at least
`min_hits` of its n-grams (or all of them, for a short item) occur in one training document. The result names the
items, the offending sources and document ids.
Cost: the eval side is small (thousands of items → a set of n-gram hashes); training documents stream past it once,
O(total characters).
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from typing import Iterable

_DROP = re.compile(r"[\s\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return _DROP.sub("", unicodedata.normalize("NFKC", text).lower())


def ngrams(text: str, n: int) -> set[str]:
    t = normalize(text)
    if len(t) < n:
        return {t} if t else set()
    return {t[i:i + n] for i in range(len(t) - n + 1)}


def check(eval_items: dict[str, list[tuple[str, str]]], training_docs: Iterable[tuple[str, str, str]],
          n: int = 13, min_hits: int = 3) -> dict:
    """eval_items: {eval set: [(item id, text)]}; training_docs: (source, doc id, text).
    Returns per eval set: items, contaminated items, share, offending sources (with doc ids)."""
    item_grams = {(s, i): ngrams(t, n) for s, items in eval_items.items() for i, t in items}
    owner: dict[str, list] = defaultdict(list)
    for key, grams in item_grams.items():
        for g in grams:
            owner[g].append(key)
    hits: dict[tuple, dict] = {}
    docs = 0
    for source, doc_id, text in training_docs:
        docs += 1
        t = normalize(text)
        counts: dict[tuple, int] = defaultdict(int)
        for g in {t[i:i + n] for i in range(max(1, len(t) - n + 1))}:
            for key in owner.get(g, ()):
                counts[key] += 1
        for key, c in counts.items():
            need = min(min_hits, len(item_grams[key]))
            if c >= need:
                h = hits.setdefault(key, {"sources": defaultdict(list), "max_overlap": 0.0})
                h["sources"][source].append(doc_id)
                h["max_overlap"] = max(h["max_overlap"], round(c / len(item_grams[key]), 3))
    out = {}
    for s, items in eval_items.items():
        bad = [{"item": i, "max_overlap": hits[(s, i)]["max_overlap"],
                "sources": {src: ids[:5] for src, ids in hits[(s, i)]["sources"].items()}}
               for i, _ in items if (s, i) in hits]
        srcs = sorted({src for b in bad for src in b["sources"]})
        out[s] = {"items": len(items), "contaminated": len(bad), "share": round(len(bad) / max(1, len(items)), 4),
                  "sources": srcs, "examples": bad[:10]}
    return {"eval_sets": out, "training_documents": docs, "ngram": n, "min_hits": min_hits}
