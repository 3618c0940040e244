"""Resolve a mix spec against concrete source documents: which documents, how many tokens, how many epochs.

Input: for each source, its documents (doc_id, text, lang) and the data version of the shard they came from.
Output: a selection table (source, doc_id, split, epoch, n_tokens) and a summary that pins every upstream
version. Heldout documents are chosen by a hash of the doc id (stable when other documents change). A source
that cannot meet its share within `max_epochs` is an error, not a silent shortfall.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from kura.mix.spec import MixError, MixSpec


@dataclass
class SourceDocs:
    name: str
    versions: dict[str, str]          # shard/partition -> data version
    docs: list[dict]                  # doc_id, text, lang


def is_heldout(doc_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def resolve_mix(spec: MixSpec, sources: dict[str, SourceDocs], count_tokens) -> tuple[list[dict], dict]:
    """`count_tokens(list[str]) -> list[int]`. Returns (selection rows, summary)."""
    rows: list[dict] = []
    summary: dict = {"mix": spec.name, "sequence_length": spec.sequence_length, "total_tokens": spec.total_tokens,
                     "sources": {}}
    for s in spec.sources:
        if s.source not in sources:
            raise MixError(f"mix {spec.name}: source {s.source!r} has no materialized data")
        src = sources[s.source]
        docs = [d for d in src.docs if s.lang is None or d.get("lang") == s.lang]
        label = s.source + (f"[{s.lang}]" if s.lang else "")
        counts = count_tokens([d["text"] for d in docs]) if docs else []
        train, held = [], []
        for d, n in zip(docs, counts):
            (held if is_heldout(d["doc_id"], spec.heldout_fraction) else train).append((d, n))
        for d, n in held:
            rows.append({"source": label, "doc_id": d["doc_id"], "lang": d.get("lang") or "", "split": "heldout",
                         "epoch": 0, "n_tokens": n})
        target = round(s.weight * spec.total_tokens)
        available = sum(n for _, n in train)
        if target > 0 and available == 0:
            raise MixError(f"mix {spec.name}: source {label!r} has weight {s.weight:g} but no training documents")
        epochs_needed = target / available if available else 0.0
        if epochs_needed > s.max_epochs + 1e-9:
            raise MixError(f"mix {spec.name}: source {label!r} needs {epochs_needed:.2f} epochs for {target} tokens "
                           f"but has {available} tokens and max_epochs={s.max_epochs:g}; lower its weight or the "
                           f"budget, or allow more epochs")
        order = list(range(len(train)))
        random.Random(f"{spec.seed}:{label}").shuffle(order)
        taken, epoch = 0, 0
        while taken < target:
            for i in order:
                if taken >= target:
                    break
                d, n = train[i]
                rows.append({"source": label, "doc_id": d["doc_id"], "lang": d.get("lang") or "", "split": "train",
                             "epoch": epoch, "n_tokens": n})
                taken += n
            epoch += 1
        summary["sources"][label] = {
            "asset": s.source, "weight": s.weight, "lang": s.lang, "upstream_versions": src.versions,
            "documents_available": len(docs), "train_tokens_available": available, "tokens_selected": taken,
            "epochs": round(taken / available, 3) if available else 0.0, "epochs_started": max(epoch, 0),
            "heldout_documents": len(held), "heldout_tokens": sum(n for _, n in held)}
    summary["tokens_selected"] = sum(v["tokens_selected"] for v in summary["sources"].values())
    return rows, summary


