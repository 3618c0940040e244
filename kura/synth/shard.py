"""One synthetic shard: pick source documents for a partition, render prompts, generate, parse and validate.

Kept records and quarantined completions (with the reason) come back together, so the caller can write both and
count every prompt: `len(kept) + len(rejected) == len(prompts)`.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

from kura.synth.generators import GenerationResult, Generator, SamplingConfig
from kura.synth.recipes import QADialogueRecipe


@dataclass
class ShardResult:
    kept: list[dict]
    rejected: list[dict]
    reasons: Counter = field(default_factory=Counter)
    generation: GenerationResult | None = None


def pick_documents(docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
    """A seeded draw per partition: each day rewrites different documents, reproducibly."""
    return random.Random(f"{seed}:{partition}").sample(docs, min(n, len(docs)))


def teacher_examples(docs: list[dict], recipe: QADialogueRecipe, n: int, seed: int) -> list[str]:
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    return [recipe.render(d["text"], d["lang"]) + recipe.reference_completion(d["text"], d["lang"]) for d in docs[:n]]


def generate_shard(docs: list[dict], recipe: QADialogueRecipe, generator: Generator, sampling: SamplingConfig,
                   partition: str) -> ShardResult:
    prompts = [recipe.render(d["text"], d["lang"]) for d in docs]
    gen = generator.generate(prompts, sampling)
    res = ShardResult([], [], Counter(), gen)
    for i, (d, p, c) in enumerate(zip(docs, prompts, gen.completions)):
        try:
            turns = recipe.parse(c)
            ok, reason = recipe.validate(turns)
        except ValueError as e:
            ok, reason, turns = False, f"unparseable: {e}", []
        if ok:
            res.kept.append({"doc_id": f"synthetic:{partition}:{i}", "source": f"synthetic/{partition}",
                             "text": recipe.to_text(turns), "lang": d["lang"], "source_doc_id": d["doc_id"],
                             "turns": json.dumps(turns, ensure_ascii=False), "prompt": p, "completion": c})
        else:
            res.reasons[reason.split(":")[0]] += 1
            res.rejected.append({"source_doc_id": d["doc_id"], "reason": reason, "prompt": p, "completion": c})
    return res
