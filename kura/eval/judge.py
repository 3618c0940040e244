"""LLM-as-judge, MT-Bench style: multi-turn questions, the candidate's answers turn by turn, a judge's 1–10 grade
with its rationale, and pairwise verdicts for the arena.

The judge is any kura `Generator` (a vLLM endpoint in production, the local engine in the demo). A grade is the
last `[[N]]` in the judge's text (N in 1..10); a reply without one is a parse failure, counted, and retried up to
`max_retries` times with sampling (greedy decoding would only repeat it). Judge prompts are fixed templates whose
hash (`JUDGE_PROMPT_VERSION`) goes into every result, with the judge model's version: a changed template or judge
makes old scores incomparable, and lineage shows it.
Pairwise verdicts are asked in both orders (A/B and B/A) to cancel position bias; disagreeing orders count as a tie.

A reply that still has no grade after the re-asks can be *forced*: the judge's own reply is kept as its rationale,
"評価: [[" is appended and the grade is the judge's constrained choice among "1]]" … "10]]" (vLLM guided choice on a
server, the highest log-likelihood locally). Forced grades are counted separately (`forced`), so a judge that cannot
follow the format is visible, not hidden; without a `force` function such answers stay ungraded.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

SINGLE = ("[指示]\n公平な審査員として、以下の会話の最後のアシスタントの回答を、有用性・正確さ・深さ・日本語の自然さで"
          "評価してください。短く理由を述べ、最後に1から10の整数で「評価: [[5]]」の形式で採点してください。\n"
          "[会話]\n{conversation}\n[会話の終わり]")
PAIR = ("[指示]\n公平な審査員として、ユーザーの質問に対する二つのアシスタントの回答を比べ、より良い方を選んでください。"
        "回答の順番や長さに影響されないでください。短く理由を述べ、最後に「[[A]]」「[[B]]」引き分けなら「[[C]]」と"
        "書いてください。\n[質問]\n{question}\n[アシスタントAの回答]\n{a}\n[アシスタントBの回答]\n{b}\n[終わり]")
JUDGE_PROMPT_VERSION = hashlib.sha256((SINGLE + PAIR).encode()).hexdigest()[:12]
SCORE_PREFIX, SCORE_CHOICES = "評価: [[", [f"{i}]]" for i in range(1, 11)]
VERDICT_PREFIX, VERDICT_CHOICES = "[[", ["A]]", "B]]", "C]]"]
Force = Callable[[list[str], list[str]], list[str]]
_SCORE = re.compile(r"\[\[\s*(10|[1-9])(?:\.\d+)?\s*\]\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


@dataclass
class Question:
    qid: str
    category: str
    turns: list[str]


def load_questions(text: str, where: str) -> list[Question]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            q = Question(str(r["question_id"]), str(r["category"]), [str(t) for t in r["turns"]])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{where}:{n}: a question needs question_id, category and turns ({e})") from None
        if not q.turns:
            raise ValueError(f"{where}:{n}: no turns")
        out.append(q)
    return out


def conversation(q: Question, answers: list[str], upto: int, user: str, assistant: str, sep: str) -> str:
    return "".join(f"{user}{q.turns[t]}{sep}{assistant}{answers[t]}{sep}" for t in range(upto + 1))


def answer_questions(questions: list[Question], generate: Callable[[list[str]], list[str]], user: str,
                     assistant: str, sep: str) -> dict[str, list[str]]:
    """The candidate's answers, turn by turn (turn t's prompt holds the candidate's own earlier answers)."""
    answers: dict[str, list[str]] = {q.qid: [] for q in questions}
    for t in range(max(len(q.turns) for q in questions)):
        qs = [q for q in questions if t < len(q.turns)]
        prompts = ["".join(f"{user}{q.turns[i]}{sep}{assistant}{answers[q.qid][i]}{sep}" for i in range(t))
                   + f"{user}{q.turns[t]}{sep}{assistant}" for q in qs]
        for q, a in zip(qs, generate(prompts)):
            answers[q.qid].append(cut_turn(a, user))
    return answers


def cut_turn(completion: str, user: str) -> str:
    """The assistant's turn only: a small model often goes on to write the next user turn itself."""
    lines = []
    for line in completion.strip().splitlines():
        if user.strip() and line.strip().startswith(user.strip()):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def parse_score(text: str) -> Optional[int]:
    found = _SCORE.findall(text)
    return int(found[-1]) if found else None


def parse_verdict(text: str) -> Optional[str]:
    found = _VERDICT.findall(text)
    return found[-1] if found else None


def _ask(prompts: list[str], judge: Callable[[list[str], int], list[str]], parse, max_retries: int,
         force: Optional[Force] = None, prefix: str = "", choices: Optional[list[str]] = None):
    """Judge every prompt; re-ask the ones that did not parse, up to max_retries more times (attempt number = seed
    offset, sampled); then, with `force`, constrain the still-unparsed ones to `prefix` + one of `choices` after their
    last reply. Returns [(text, parsed or None, attempts, forced)]."""
    out: list = [None] * len(prompts)
    todo = list(range(len(prompts)))
    for attempt in range(max_retries + 1):
        if not todo:
            break
        texts = judge([prompts[i] for i in todo], attempt)
        left = []
        for i, t in zip(todo, texts):
            out[i] = (t, parse(t), attempt + 1, False)
            if out[i][1] is None:
                left.append(i)
        todo = left
    if todo and force is not None:
        picked = force([f"{prompts[i]}{out[i][0].rstrip()}\n{prefix}" for i in todo], choices)
        for i, c in zip(todo, picked):
            v = parse(prefix + c)
            out[i] = (out[i][0], v, out[i][2], v is not None)
    return out


def grade(questions: list[Question], answers: dict[str, list[str]], judge: Callable[[list[str], int], list[str]],
          tmpl: tuple[str, str, str], max_retries: int = 2, force: Optional[Force] = None) -> dict:
    """1–10 grades per (question, turn) with rationale, attempts, parse failures and forced grades; averages per
    category."""
    user, assistant, sep = tmpl
    keys, prompts = [], []
    for q in questions:
        for t in range(len(q.turns)):
            conv = conversation(q, answers[q.qid], t, "ユーザー: ", "アシスタント: ", "\n")
            keys.append((q, t))
            prompts.append(f"{user}{SINGLE.format(conversation=conv)}{sep}{assistant}")
    res = _ask(prompts, judge, parse_score, max_retries, force, SCORE_PREFIX, SCORE_CHOICES)
    records = [{"question_id": q.qid, "category": q.category, "turn": t + 1, "answer": answers[q.qid][t],
                "score": s, "rationale": text.strip()[:2000], "attempts": n, "parse_failed": s is None or forced,
                "forced": forced}
               for (q, t), (text, s, n, forced) in zip(keys, res)]
    by_cat: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r["score"] is not None:
            by_cat[r["category"]].append(r["score"])
    scored = [r["score"] for r in records if r["score"] is not None]
    return {"records": records, "judge_prompt_version": JUDGE_PROMPT_VERSION,
            "per_category": {c: round(sum(v) / len(v), 3) for c, v in sorted(by_cat.items())},
            "mean_score": round(sum(scored) / len(scored), 3) if scored else None,
            "graded": len(scored), "ungraded": len(records) - len(scored),
            "parse_failures": sum(r["parse_failed"] for r in records), "forced": sum(r["forced"] for r in records),
            "retries": sum(r["attempts"] - 1 for r in records)}


def pairwise(questions: list[Question], answers: dict[str, dict[str, list[str]]],
             judge: Callable[[list[str], int], list[str]], tmpl: tuple[str, str, str], max_retries: int = 1,
             force: Optional[Force] = None) -> list:
    """Votes between every pair of models on every question's first turn, both orders; an order that does not parse
    after retries (and forcing, if given) is dropped, disagreeing orders are a tie.
    Returns [{model_a, model_b, winner, question_id, source, forced}]."""
    user, assistant, sep = tmpl
    models = sorted(answers)
    jobs, prompts = [], []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            for q in questions:
                for first, second in ((a, b), (b, a)):
                    jobs.append((a, b, q.qid, first))
                    prompts.append(f"{user}{PAIR.format(question=q.turns[0], a=answers[first][q.qid][0], b=answers[second][q.qid][0])}{sep}{assistant}")  # noqa: E501
    res = _ask(prompts, judge, parse_verdict, max_retries, force, VERDICT_PREFIX, VERDICT_CHOICES)
    by_pair: dict[tuple, list] = defaultdict(list)
    for (a, b, qid, first), (_, v, _, forced) in zip(jobs, res):
        if v is None:
            continue
        winner = "tie" if v == "C" else (first if v == "A" else (b if first == a else a))
        by_pair[(a, b, qid)].append((winner, forced))
    votes = []
    for (a, b, qid), ws in sorted(by_pair.items()):
        w = ws[0][0] if len({x for x, _ in ws}) == 1 else "tie"
        votes.append({"model_a": a, "model_b": b, "question_id": qid,
                      "winner": "a" if w == a else "b" if w == b else "tie", "source": "judge",
                      "forced": any(f for _, f in ws)})
    return votes
