"""Resolve one phase of a mix against concrete documents: which documents, how many tokens, how many epochs.

Input: for each source asset, its documents (doc_id, text, lang, optionally turns) and the data versions of the
shards they came from; for phases with replay, the training selection of the earlier phases. Output: a selection
table (source, doc_id, split, epoch, n_tokens) and a summary that pins every upstream version. Heldout documents
are chosen by a hash of the doc id (stable when other documents change). A source that cannot meet its budget
within `max_epochs` is an error, not a silent shortfall. The one exception is declared: a source marked `optional`
that has no usable data (its shards blocked by their gate, or nothing matching its selectors) is left out of the
phase, named with the reason in the summary's `left_out`, and a weighted phase rescales the other weights so the
phase keeps its total; a phase left with nothing at all is an error.
"""
from __future__ import annotations

import hashlib
import math
import json
import random
from dataclasses import dataclass

from kura.mix.spec import MixError, MixPhase, MixSpec
from kura.pack.chat import conversation_text


@dataclass
class SourceDocs:
    name: str
    versions: dict[str, str]          # shard/partition -> data version
    docs: list[dict]                  # doc_id, text, lang[, turns]
    blocked: str = ""                 # why some of the source's data may not be used (e.g. shards failing a gate)


def is_heldout(doc_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def phase_documents(spec: MixSpec, phase: MixPhase, sources: dict[str, SourceDocs],
                    quality=None, perplexity=None) -> dict[str, list[dict]]:
    """{source label: documents as this phase sees them} — language-, quality-bucket- and perplexity-filtered,
    chat-rendered where asked. `quality(texts) -> scores in [0, 1]` is needed when a source selects a quality
    bucket, `perplexity(texts) -> perplexities` when it sets max_perplexity."""
    out = {}
    for s in phase.sources:
        if s.pool not in sources:
            raise MixError(f"mix {spec.name}: phase {phase.name!r}: source {s.pool!r} has no materialized data")
        docs = [d for d in sources[s.pool].docs if s.lang is None or d.get("lang") == s.lang]
        if s.uses_quality:
            if quality is None:
                raise MixError(f"mix {spec.name}: phase {phase.name!r}: source {s.label!r} selects a quality "
                               f"bucket but no quality classifier was given")
            lo = s.min_quality if s.min_quality is not None else 0.0
            hi = s.max_quality if s.max_quality is not None else 1.0 + 1e-9
            scores = quality([d["text"] for d in docs])
            docs = [{**d, "quality": float(q)} for d, q in zip(docs, scores) if lo <= q < hi]
        if s.uses_perplexity:
            if perplexity is None:
                raise MixError(f"mix {spec.name}: phase {phase.name!r}: source {s.label!r} sets max_perplexity "
                               f"but no reference language model was given")
            ppl = [float(p) for p in perplexity([d["text"] for d in docs])]
            cut = {lang: s.max_perplexity for lang in {d.get("lang") for d in docs}}
            if s.max_perplexity_quantile is not None:
                cut = {lang: min(cut[lang] if cut[lang] is not None else float("inf"),
                                 _quantile([p for d, p in zip(docs, ppl) if d.get("lang") == lang],
                                           s.max_perplexity_quantile)) for lang in cut}
            docs = [{**d, "perplexity": p} for d, p in zip(docs, ppl) if p <= cut[d.get("lang")]]
        if s.chat_template:
            t = spec.chat_templates[s.chat_template]
            missing = [d["doc_id"] for d in docs if not d.get("turns")]
            if missing:
                raise MixError(f"mix {spec.name}: phase {phase.name!r}: source {s.label!r} uses chat_template "
                               f"{s.chat_template!r} but {len(missing)} documents have no conversation "
                               f"(e.g. {missing[0]})")
            docs = [{**d, "text": conversation_text(json.loads(d["turns"]), t)} for d in docs]
        out[s.label] = docs
    return out


def _quantile(values: list[float], q: float) -> float:
    """The value at rank ceil(q·n) of the sorted values (a document exactly at the cut is kept)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _take(order, items, target, label):
    rows, taken, epoch = [], 0, 0
    while taken < target:
        for i in order:
            if taken >= target:
                break
            d, n = items[i]
            rows.append((d, n, epoch))
            taken += n
        epoch += 1
    return rows, taken


def resolve_phase(spec: MixSpec, phase: MixPhase, sources: dict[str, SourceDocs], count_tokens,
                  replay_pool: list[dict] | None = None, quality=None, perplexity=None
                  ) -> tuple[list[dict], dict, dict[str, list[dict]]]:
    """`count_tokens(list[str]) -> list[int]`. Returns (selection rows, summary, phase documents by label)."""
    rows: list[dict] = []
    docs_by_label = phase_documents(spec, phase, sources, quality, perplexity)
    counts_by_label = {label: count_tokens([d["text"] for d in docs]) if docs else []
                       for label, docs in docs_by_label.items()}
    left_out = {}
    for s in phase.sources:
        usable = [n for d, n in zip(docs_by_label[s.label], counts_by_label[s.label])
                  if not is_heldout(d["doc_id"], phase.heldout_fraction)]
        if s.optional and not sum(usable):
            src = sources[s.pool]
            left_out[s.label] = (src.blocked or "it has no documents" if not src.docs
                                 else "no training documents match its selectors")
    budgets = _budgets(spec, phase, left_out)
    summary: dict = {"phase": phase.name, "sequence_length": phase.sequence_length, "sources": {},
                     "left_out": left_out}
    for s in phase.sources:
        if s.label in left_out:
            docs_by_label[s.label] = []
            continue
        docs = docs_by_label[s.label]
        counts = counts_by_label[s.label]
        train, held = [], []
        for d, n in zip(docs, counts):
            (held if is_heldout(d["doc_id"], phase.heldout_fraction) else train).append((d, n))
        for d, n in held:
            rows.append({"source": s.label, "doc_id": d["doc_id"], "lang": d.get("lang") or "", "split": "heldout",
                         "epoch": 0, "n_tokens": n})
        target = budgets[s.label]
        available = sum(n for _, n in train)
        where = f"mix {spec.name}: phase {phase.name!r}: source {s.label!r}"
        if target > 0 and available == 0:
            why = f" ({sources[s.pool].blocked})" if sources[s.pool].blocked else ""
            raise MixError(f"{where} has a budget of {target} tokens but no training documents{why}; give it data, "
                           f"or declare it `optional: true` to train this phase without it")
        if available and target / available > s.max_epochs + 1e-9:
            raise MixError(f"{where} needs {target / available:.2f} epochs for {target} tokens but has {available} "
                           f"tokens and max_epochs={s.max_epochs:g}; lower its budget or allow more epochs")
        order = list(range(len(train)))
        random.Random(f"{phase.seed}:{s.label}").shuffle(order)
        picked, taken = _take(order, train, target, s.label)
        rows += [{"source": s.label, "doc_id": d["doc_id"], "lang": d.get("lang") or "", "split": "train",
                  "epoch": e, "n_tokens": n} for d, n, e in picked]
        summary["sources"][s.label] = {
            "asset": s.pool, "weight": s.weight, "budget_tokens": target, "lang": s.lang,
            "quality_bucket": [s.min_quality, s.max_quality] if s.uses_quality else None,
            "max_perplexity": s.max_perplexity, "max_perplexity_quantile": s.max_perplexity_quantile,
            "chat_template": s.chat_template, "loss_mask": s.loss_mask,
            "upstream_versions": sources[s.pool].versions, "documents_available": len(docs),
            "train_tokens_available": available, "tokens_selected": taken,
            "epochs": round(taken / available, 3) if available else 0.0,
            "heldout_documents": len(held), "heldout_tokens": sum(n for _, n in held)}
    replay_target = phase.replay_tokens()
    if replay_target:
        pool = [r for r in (replay_pool or []) if r["split"] == "train"]
        available = sum(r["n_tokens"] for r in pool)
        if available < replay_target:
            raise MixError(f"mix {spec.name}: phase {phase.name!r}: replay needs {replay_target} tokens but the "
                           f"earlier phases selected only {available}")
        order = list(range(len(pool)))
        random.Random(f"{phase.seed}:replay").shuffle(order)
        picked, taken = _take(order, [(r, r["n_tokens"]) for r in pool], replay_target, "replay")
        rows += [{"source": "replay", "doc_id": r["doc_id"], "lang": r["lang"], "split": "train", "epoch": 0,
                  "n_tokens": r["n_tokens"], "replay_of": r["source"]} for r, _, _ in picked]
        summary["sources"]["replay"] = {"asset": "earlier phases", "budget_tokens": replay_target,
                                        "tokens_selected": taken, "replay_fraction": phase.replay_fraction}
    summary["tokens_selected"] = sum(v["tokens_selected"] for v in summary["sources"].values())
    return rows, summary, docs_by_label


def _budgets(spec: MixSpec, phase: MixPhase, left_out: dict[str, str]) -> dict[str, int]:
    """Token budget per source label once optional sources without data are left out."""
    budgets = phase.source_tokens()
    kept = [s for s in phase.sources if s.label not in left_out]
    if not kept and not phase.replay_tokens():
        raise MixError(f"mix {spec.name}: phase {phase.name!r} has no data left: every source was left out ("
                       + "; ".join(f"{k}: {v}" for k, v in left_out.items()) + ")")
    if left_out and phase.sources[0].weight is not None and kept:
        total = sum(s.weight for s in kept)
        if total == 0:
            raise MixError(f"mix {spec.name}: phase {phase.name!r}: the sources left after leaving out "
                           f"{', '.join(left_out)} all have weight 0")
        base = round(phase.total_tokens * (1 - phase.replay_fraction))
        budgets = {s.label: round(s.weight / total * base) for s in kept}
    return {**budgets, **{k: 0 for k in left_out}}


def selected_documents(phase: MixPhase, rows: list[dict], docs_by_label: dict[str, list[dict]],
                       previous_docs: dict[tuple[str, str], dict]) -> list[dict]:
    """The documents the selection references (each once), with what packing needs: text, conversation turns,
    chat template and loss mask. Replayed documents are copied from the previous phase's documents."""
    used = {(r["source"], r["doc_id"]) for r in rows}
    meta = {s.label: (s.chat_template, s.loss_mask) for s in phase.sources}
    docs = [{"source": label, "doc_id": d["doc_id"], "lang": d.get("lang") or "", "text": d["text"],
             "turns": d.get("turns"), "chat_template": meta[label][0], "loss_mask": meta[label][1]}
            for label, ds in docs_by_label.items() for d in ds if (label, d["doc_id"]) in used]
    for key in sorted({(r["replay_of"], r["doc_id"]) for r in rows if r["source"] == "replay"}):
        docs.append({**previous_docs[key], "source": "replay"})
    return docs
