"""Exact-match task runner (jaster / llm-jp-eval style) that scores answers and output format separately.

A task is a JSONL file; each line: {"instruction", "input", "output", "metric"} with metric one of
`exact_match`, `char_f1` or `choice` (then `choices: [...]` and `output` = the index of the right choice, answers
expected as that number). Prompts are rendered with the model's chat template (the mix's `chat_templates`), the
completion's first line is the answer.

Why format compliance is its own number: Tanuki's dialogue-tuned model was punished by jaster for answering
multiple-choice questions in free text ("正解は東京です") instead of the required label. The runner reports
- `score`: strict (what llm-jp-eval counts),
- `format_compliance`: share of answers in the required format (a bare choice number; one short line),
- `lenient_score`: the right answer anywhere in the text (the model knew, the format failed),
so a low score with high lenient score and low compliance reads as a formatting problem, not a knowledge one.
Bad task files are refused with file, line and field.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

METRICS = ("exact_match", "char_f1", "choice")


@dataclass
class TaskItem:
    task: str
    index: int
    instruction: str
    input: str
    output: str
    metric: str
    choices: list[str] = field(default_factory=list)

    def text(self) -> str:
        """Everything an evaluation item shows a model (for the contamination check)."""
        return "\n".join([self.instruction, self.input, *self.choices, self.output])


class TaskFileError(ValueError):
    pass


def parse_tasks(name: str, text: str, where: str) -> list[TaskItem]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{where}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in ("instruction", "output", "metric") if k not in r]
        if missing:
            raise TaskFileError(f"{where}:{n}: missing {', '.join(missing)}")
        if r["metric"] not in METRICS:
            raise TaskFileError(f"{where}:{n}: metric {r['metric']!r} is not one of {METRICS}")
        choices = [str(c) for c in r.get("choices") or []]
        if r["metric"] == "choice":
            if len(choices) < 2:
                raise TaskFileError(f"{where}:{n}: a choice item needs at least two choices")
            if not str(r["output"]).isdigit() or not 0 <= int(r["output"]) < len(choices):
                raise TaskFileError(f"{where}:{n}: output must be the index of the right choice "
                                    f"(0..{len(choices) - 1})")
        items.append(TaskItem(name, len(items), str(r["instruction"]), str(r.get("input", "")), str(r["output"]),
                              r["metric"], choices))
    if not items:
        raise TaskFileError(f"{where}: no items")
    return items


def load_task_dir(files: dict[str, str]) -> dict[str, list[TaskItem]]:
    """{task name: items} from {file name: contents} (files read from a folder or an S3 prefix by the caller)."""
    return {Path(f).stem: parse_tasks(Path(f).stem, text, f) for f, text in sorted(files.items())
            if f.endswith(".jsonl")}


def render(item: TaskItem, user_prefix: str, assistant_prefix: str, sep: str) -> str:
    body = item.instruction
    if item.choices:
        body += "\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(item.choices))
    if item.input:
        body += "\n" + item.input
    return f"{user_prefix}{body}{sep}{assistant_prefix}"


def norm(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).strip().lower()
    return re.sub(r"^[\s「『\"'(（]+|[\s。．.、,!！?？」』\"')）]+$", "", s)


def char_f1(pred: str, gold: str) -> float:
    p, g = Counter(norm(pred).replace(" ", "")), Counter(norm(gold).replace(" ", ""))
    common = sum((p & g).values())
    if not common:
        return 0.0
    prec, rec = common / sum(p.values()), common / sum(g.values())
    return 2 * prec * rec / (prec + rec)


def score_item(item: TaskItem, completion: str) -> dict:
    first = completion.strip().splitlines()[0].strip() if completion.strip() else ""
    if item.metric == "choice":
        m = re.fullmatch(r"\(?([0-9]+)[.)）]?", norm(first)) if first else None
        pred = int(m.group(1)) if m else None
        compliant = pred is not None and 0 <= pred < len(item.choices)
        gold = int(item.output)
        right_text = norm(item.choices[gold])
        others = [norm(c) for i, c in enumerate(item.choices) if i != gold]
        full = norm(completion)
        lenient = (pred == gold) or (right_text in full and not any(o and o in full for o in others))
        return {"answer": first, "score": float(pred == gold), "compliant": compliant, "lenient": float(lenient)}
    limit = max(24, 3 * len(item.output))
    compliant = bool(first) and len(first) <= limit
    if item.metric == "exact_match":
        score = float(norm(first) == norm(item.output))
        lenient = float(score == 1.0 or norm(item.output) in norm(completion))
    else:
        score = char_f1(first, item.output)
        lenient = max(score, char_f1(completion, item.output))
    return {"answer": first, "score": score, "compliant": compliant, "lenient": lenient}


def run_tasks(tasks: dict[str, list[TaskItem]], generate: Callable[[list[str]], list[str]], user_prefix: str,
              assistant_prefix: str, sep: str, limit: Optional[int] = None) -> dict:
    """Generate every item's answer (one batched call) and score it; per-task and overall summaries."""
    flat = [it for items in tasks.values() for it in items[:limit]]
    completions = generate([render(it, user_prefix, assistant_prefix, sep) for it in flat])
    records = [{"task": it.task, "index": it.index, "metric": it.metric, "expected": it.output,
                "completion": c, **score_item(it, c)} for it, c in zip(flat, completions)]
    summary = {}
    for name in tasks:
        rs = [r for r in records if r["task"] == name]
        summary[name] = {"items": len(rs), "score": round(sum(r["score"] for r in rs) / len(rs), 4),
                         "format_compliance": round(sum(r["compliant"] for r in rs) / len(rs), 4),
                         "lenient_score": round(sum(r["lenient"] for r in rs) / len(rs), 4),
                         "metric": rs[0]["metric"]}
    n = len(records)
    overall = {"items": n, "score": round(sum(r["score"] for r in records) / n, 4),
               "format_compliance": round(sum(r["compliant"] for r in records) / n, 4),
               "lenient_score": round(sum(r["lenient"] for r in records) / n, 4)}
    return {"tasks": summary, "overall": overall, "records": records}
