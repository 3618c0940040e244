"""One synthetic shard: pick source documents for a partition, render prompts, generate, parse and validate.

Kept records and quarantined completions (with the reason: the recipe's parse/validate reasons, then the output
checks of kura.synth.checks) come back together, so the caller can write both and count every prompt:
`len(kept) + len(rejected) == len(prompts)`. Generation goes through the request log (kura.synth.requestlog), so a
killed run resumes without regenerating finished prompts.
"""
from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kura.synth.generators import GenerationResult, Generator, SamplingConfig
from kura.synth.checks import OutputChecks, check_records
from kura.synth.recipes import QADialogueRecipe
from kura.synth.requestlog import RequestLog, generate_resumable


@dataclass
class ShardResult:
    kept: list[dict]
    rejected: list[dict]
    reasons: Counter = field(default_factory=Counter)
    generation: GenerationResult | None = None
    generated: int = 0   # prompts sent to the generator by this run
    resumed: int = 0     # prompts answered from the request log (an interrupted earlier run)



def teacher_examples(docs: list[dict], recipe: QADialogueRecipe, n: int, seed: int) -> list[str]:
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    return [recipe.render(d["text"], d["lang"]) + recipe.reference_completion(d["text"], d["lang"]) for d in docs[:n]]


def generate_shard(docs: list[dict], recipe, generator: Generator, sampling: SamplingConfig,
                   partition: str, log: RequestLog | None = None, model_id: str = "",
                   checks: OutputChecks | None = None, batch_size: int = 64) -> ShardResult:
    """Generate (resumably, when a request log is given), parse, validate and check one shard. Every prompt ends
    up kept or rejected with a reason."""
    prompts = [recipe.render(d["text"], d["lang"]) for d in docs]
    if log is None:
        log = RequestLog(Path(tempfile.mkdtemp(prefix="kura-requests-")) / "log.jsonl")
    run = generate_resumable(generator, prompts, sampling, log, model_id, recipe.template_hash(), batch_size)
    gen = run.generation
    res = ShardResult([], [], Counter(), gen, run.generated, run.resumed)
    parsed: list[tuple[int, dict, list[dict]]] = []
    for i, (d, p, c) in enumerate(zip(docs, prompts, gen.completions)):
        try:
            turns = recipe.parse(c)
            ok, reason = recipe.validate(turns, d)
        except ValueError as e:
            ok, reason, turns = False, f"unparseable: {e}", []
        if ok:
            parsed.append((i, {"doc_id": f"synthetic:{partition}:{i}", "source": f"synthetic/{partition}",
                               "text": recipe.to_text(turns), "lang": d["lang"], "source_doc_id": d["doc_id"],
                               "turns": json.dumps(turns, ensure_ascii=False), "prompt": p, "completion": c},
                           turns))
        else:
            res.reasons[reason.split(":")[0]] += 1
            res.rejected.append({"source_doc_id": d["doc_id"], "reason": reason, "prompt": p, "completion": c})
    checks = checks or OutputChecks()
    recs = [r for _, r, _ in parsed]
    kept, rejected = check_records(
        recs, [docs[i]["text"] for i, _, _ in parsed], [gen.finish_reasons[i] if gen.finish_reasons else "stop"
                                                        for i, _, _ in parsed],
        ["\n".join(t["content"] for t in turns if t["role"] == "assistant") for _, _, turns in parsed], checks)
    res.kept = [recs[j] for j in kept]
    for j, reason in rejected:
        r = recs[j]
        res.reasons[reason] += 1
        res.rejected.append({"source_doc_id": r["source_doc_id"], "reason": reason, "prompt": r["prompt"],
                             "completion": r["completion"]})
    return res
