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

import pyarrow as pa

from kura.synth.generators import GenerationResult, Generator, SamplingConfig
from kura.synth.checks import OutputChecks, check_records
from kura.synth.recipes import QADialogueRecipe
from kura.synth.requestlog import RequestLog, generate_resumable


# a kept record: `text` is the plain rendering mixes read, `turns` the chat turns (JSON), `meta` what a recipe keeps
# beside them (JSON: a translation's English original, a multi-call record's prompts and outputs per call)
RECORD_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                           ("lang", pa.string()), ("source_doc_id", pa.string()), ("turns", pa.string()),
                           ("prompt", pa.string()), ("completion", pa.string()), ("meta", pa.string())])
# a quarantined completion, with why (for a multi-call record: the first prompt and the last completion)
QUARANTINE_SCHEMA = pa.schema([("source_doc_id", pa.string()), ("reason", pa.string()), ("prompt", pa.string()),
                               ("completion", pa.string())])


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
    if log is None:
        log = RequestLog(Path(tempfile.mkdtemp(prefix="kura-requests-")) / "log.jsonl")
    if getattr(recipe, "multi_call", False):
        calls, gen, generated, resumed = _run_calls(docs, recipe, generator, sampling, log, model_id, batch_size)
    else:
        prompts = [recipe.render(d["text"], d["lang"]) for d in docs]
        run = generate_resumable(generator, prompts, sampling, log, model_id, recipe.template_hash(), batch_size)
        gen, generated, resumed = run.generation, run.generated, run.resumed
        calls = [_Calls([p], [c], [f]) for p, c, f in
                 zip(prompts, gen.completions, gen.finish_reasons or ["stop"] * len(prompts))]
    res = ShardResult([], [], Counter(), gen, generated, resumed)
    parsed: list[tuple[int, dict, list[dict], str]] = []
    for i, (d, c) in enumerate(zip(docs, calls)):
        p, last = c.prompts[0], c.completions[-1] if c.completions else ""
        try:
            if c.error:
                raise ValueError(c.error)
            turns = recipe.assemble(d, c.outputs) if c.outputs is not None else recipe.parse(last)
            ok, reason = recipe.validate(turns, d)
        except ValueError as e:
            ok, reason, turns = False, f"unparseable: {e}", []
        if ok:
            meta = recipe.meta(d) if hasattr(recipe, "meta") else {}
            if c.outputs is not None:
                meta["calls"] = [{"prompt": cp, "completion": cc} for cp, cc in zip(c.prompts, c.completions)]
            parsed.append((i, {"doc_id": f"synthetic:{partition}:{i}", "source": f"synthetic/{partition}",
                               "text": recipe.to_text(turns), "lang": d["lang"], "source_doc_id": d["doc_id"],
                               "turns": json.dumps(turns, ensure_ascii=False), "prompt": p, "completion": last,
                               "meta": json.dumps(meta, ensure_ascii=False) if meta else None},
                           turns, c.finish_reasons[-1]))
        else:
            res.reasons[reason.split(":")[0]] += 1
            res.rejected.append({"source_doc_id": d["doc_id"], "reason": reason, "prompt": p, "completion": last})
    checks = checks or OutputChecks()
    recs = [r for _, r, _, _ in parsed]
    kept, rejected = check_records(
        recs, [docs[i]["text"] for i, _, _, _ in parsed], [f for _, _, _, f in parsed],
        ["\n".join(t["content"] for t in turns if t["role"] == "assistant") for _, _, turns, _ in parsed], checks)
    res.kept = [recs[j] for j in kept]
    for j, reason in rejected:
        r = recs[j]
        res.reasons[reason] += 1
        res.rejected.append({"source_doc_id": r["source_doc_id"], "reason": reason, "prompt": r["prompt"],
                             "completion": r["completion"]})
    return res


@dataclass
class _Calls:
    """The calls of one record: prompts and raw completions in order; `outputs` the cleaned outputs of a
    multi-call recipe (None for a single-call one); `error` why the record stopped early."""
    prompts: list[str]
    completions: list[str]
    finish_reasons: list[str]
    outputs: list[str] | None = None
    error: str | None = None


def _run_calls(docs, recipe, generator, sampling, log, model_id, batch_size):
    """Round k sends the k-th call of every record still alive, as one resumable batch; a record whose output
    does not clean, or that stopped at max_tokens before its last call (the next prompt would carry a cut text),
    stops there with the reason."""
    calls = [_Calls([], [], [], []) for _ in docs]
    p_tok = c_tok = generated = resumed = 0
    seconds, backend, extra = 0.0, generator.name, {}
    k = 0
    while True:
        alive = [i for i, d in enumerate(docs) if calls[i].error is None and k < recipe.n_calls(d)]
        if not alive:
            break
        prompts = [recipe.render_call(docs[i], k, calls[i].outputs) for i in alive]
        run = generate_resumable(generator, prompts, sampling, log, model_id, recipe.template_hash(), batch_size)
        g = run.generation
        p_tok, c_tok, seconds = p_tok + g.prompt_tokens, c_tok + g.completion_tokens, seconds + g.seconds
        generated, resumed = generated + run.generated, resumed + run.resumed
        if run.generated:
            backend, extra = g.backend, g.extra
        for i, p, c, f in zip(alive, prompts, g.completions, g.finish_reasons or ["stop"] * len(alive)):
            rec = calls[i]
            rec.prompts.append(p)
            rec.completions.append(c)
            rec.finish_reasons.append(f)
            where = f"call {k} ({recipe.call_name(docs[i], k)})"
            try:
                rec.outputs.append(recipe.clean_call(docs[i], k, c))
            except ValueError as e:
                rec.error = f"{where}: {e}"
                continue
            if f == "length" and k + 1 < recipe.n_calls(docs[i]):
                rec.error = f"{where}: stopped at max_tokens; the next call would build on a cut output"
        k += 1
    for c in calls:
        if not c.prompts:  # a record with no calls (n_calls 0): nothing to assemble
            c.prompts, c.completions, c.finish_reasons, c.error = [""], [""], ["stop"], "no calls"
    return calls, GenerationResult([c.completions[-1] for c in calls], p_tok, c_tok, seconds, backend, extra,
                                   [c.finish_reasons[-1] for c in calls]), generated, resumed
