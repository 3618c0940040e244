"""LLM-as-judge the way FastChat's `llm_judge` runs MT-Bench (and Japanese MT-Bench): multi-turn questions in
FastChat's `question.jsonl` format, the candidate's answers turn by turn, a judge's 1–10 grade of each turn, and
pairwise verdicts for the arena.

What is FastChat's, and kept so scores compare with published Japanese MT-Bench numbers:
- Questions: `{"question_id", "category", "turns": [...], "reference": [...]}` (one JSON object per line); reference
  answers may also come from a FastChat answer file (`{"question_id", "choices": [{"turns": [...]}]}`, e.g.
  `reference_answer/gpt-4.jsonl`). Categories in `NEED_REF_CATS` (math, reasoning, coding) are graded against the
  reference; such a question without one is refused (file:line), as FastChat cannot grade it either.
- Four single-answer prompts (general / with reference × first turn / second turn); the second-turn prompt shows
  the whole two-turn conversation and asks about the second answer only. Pairwise prompts likewise, both orders.
- The judge is a chat model: a system prompt and a user prompt (`messages`), greedy decoding. A judge served behind
  an OpenAI-compatible chat endpoint (GPT-4-class, or an instruct model behind vLLM) gets the messages as they are;
  a completions-only judge gets them rendered with kura's chat template (system text at the head of the user turn,
  as FastChat does for judges without a system role).
- The grade is the first `[[N]]` (else the first `[N]`) in the reply; a reply without one is FastChat's −1: the item
  is excluded from every mean and counted (`ungraded`).
What kura adds: a reply without a grade is re-asked `max_retries` times with sampling (greedy decoding would only
repeat it), and can then be *forced*: "評価: [[" is appended to the judge's own reply and the grade is the judge's
constrained choice among "1]]" … "10]]" (vLLM guided choice; the highest log-likelihood locally). Forced grades are
counted (`forced`), so a judge that cannot follow the format is visible, not hidden.
The prompts are kura's own Japanese wording of FastChat's; their hash (`JUDGE_PROMPT_VERSION`) is in every result
and, with the judge model, in the grades' input version: another template or judge makes old scores incomparable.
Pairwise verdicts are asked in both orders (A/B and B/A) to cancel position bias; disagreeing orders are a tie.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

NEED_REF_CATS = ("math", "reasoning", "coding")
# FastChat's answer-generation temperatures per category (gen_model_answer.py); `sampling: fastchat` uses them
FASTCHAT_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}

_SYSTEM = "あなたは公平な審査員です。"
_GRADE = ("有用性、関連性、正確さ、深さ、創造性、詳しさ、日本語の自然さを考慮してください。まず短く理由を述べ、"
          "最後に1から10の整数で「評価: [[5]]」の形式で採点してください。")
_GRADE_REF = ("参考解答と比べて、回答の正確さと有用性を評価してください。まず回答と参考解答を比べて誤りを"
              "指摘し、最後に1から10の整数で「評価: [[5]]」の形式で採点してください。")
_PICK = ("どちらの回答がユーザーの指示によく従い、質問によく答えているかを判断してください。回答の順番、長さ、"
         "アシスタントの名前に影響されないでください。まず短く比べ、最後にAが良ければ「[[A]]」、Bが良ければ"
         "「[[B]]」、同程度なら「[[C]]」と書いてください。")
_PICK_REF = ("参考解答と比べて、どちらの回答が正しく有用かを判断してください。回答の順番や長さに影響されないで"
             "ください。まず短く比べ、最後にAが良ければ「[[A]]」、Bが良ければ「[[B]]」、同程度なら「[[C]]」と"
             "書いてください。")


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt, named as in FastChat's judge_prompts.jsonl (`single-math-v1-multi-turn`, …)."""
    name: str
    kind: str          # "single" (one answer, [[N]]) or "pair" (two answers, [[A]]/[[B]]/[[C]])
    ref: bool          # shows the reference answer(s)
    multi_turn: bool   # judges the second turn with the whole conversation
    system: str
    template: str


def _conv(who: str, multi: bool) -> str:
    """The conversation block of a prompt; `who` is "" (single) or "A"/"B" (pair)."""
    name = f"アシスタント{who}" if who else "アシスタント"
    a = f"answer_{who.lower()}_" if who else "answer_"
    if not multi:
        return f"[{name}の回答の始め]\n{{{a}1}}\n[{name}の回答の終わり]"
    return (f"[{name}との会話の始め]\n### ユーザー:\n{{question_1}}\n### {name}:\n{{{a}1}}\n### ユーザー:\n"
            f"{{question_2}}\n### {name}:\n{{{a}2}}\n[{name}との会話の終わり]")


def _refs(multi: bool) -> str:
    if not multi:
        return "[参考解答の始め]\n{ref_answer_1}\n[参考解答の終わり]\n"
    return ("[参考解答の始め]\n### ユーザー:\n{question_1}\n### 参考解答:\n{ref_answer_1}\n"
            "### ユーザー:\n{question_2}\n### 参考解答:\n{ref_answer_2}\n[参考解答の終わり]\n")


def _prompts() -> dict[str, JudgePrompt]:
    out = {}
    for ref in (False, True):
        for multi in (False, True):
            focus = "二つ目のユーザーの質問への回答に注目して" if multi else "ユーザーの質問へのアシスタントの回答を"
            q = "" if multi else "[質問]\n{question}\n"
            r = _refs(multi) if ref else ""
            name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if multi else "")
            out[name] = JudgePrompt(name, "single", ref, multi, _SYSTEM,
                                    f"[指示]\n{focus}評価してください。{_GRADE_REF if ref else _GRADE}\n\n{q}{r}"
                                    f"{_conv('', multi)}")
            name = ("pair-math-v1" if ref else "pair-v2") + ("-multi-turn" if multi else "")
            focus = "二つ目のユーザーの質問への二つのアシスタントの回答を比べて" if multi else \
                "ユーザーの質問への二つのアシスタントの回答を比べて"
            out[name] = JudgePrompt(name, "pair", ref, multi, _SYSTEM,
                                    f"[指示]\n{focus}、{_PICK_REF if ref else _PICK}\n\n{q}{r}"
                                    f"{_conv('A', multi)}\n\n{_conv('B', multi)}")
    return out


PROMPTS = _prompts()
JUDGE_PROMPT_VERSION = hashlib.sha256(json.dumps(
    [(p.name, p.system, p.template) for p in PROMPTS.values()], ensure_ascii=False).encode()).hexdigest()[:12]
SCORE_PREFIX, SCORE_CHOICES = "評価: [[", [f"{i}]]" for i in range(1, 11)]
VERDICT_PREFIX, VERDICT_CHOICES = "[[", ["A]]", "B]]", "C]]"]
Messages = list[dict]  # [{"role": "system" | "user" | "assistant", "content": str}]
JudgeFn = Callable[[list[Messages], int], list[str]]  # conversations, attempt → replies
Force = Callable[[list[Messages], list[str]], list[str]]  # conversations ending in a partial reply, choices
_SCORE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SCORE_BACKUP = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


@dataclass
class Question:
    qid: str
    category: str
    turns: list[str]
    reference: Optional[list[str]] = None


def load_references(text: str, where: str) -> dict[str, list[str]]:
    """Reference answers from a FastChat answer file: {question_id: turns} of each line's first choice."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out[str(r["question_id"])] = [str(t) for t in r["choices"][0]["turns"]]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{where}:{n}: a reference answer needs question_id and choices[0].turns "
                             f"(FastChat's answer format) ({type(e).__name__}: {e})") from None
    return out


def load_questions(text: str, where: str, references: Optional[dict[str, list[str]]] = None) -> list[Question]:
    """FastChat question.jsonl: question_id (int or str), category, turns, optional reference. A question of a
    category that needs a reference gets one from the line or from `references`, one per turn, or is refused."""
    out, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ref = r.get("reference")
            q = Question(str(r["question_id"]), str(r["category"]).lower(), [str(t) for t in r["turns"]],
                         [str(x) for x in ref] if isinstance(ref, list) and ref else None)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}:{n}: a question needs question_id, category and turns ({e})") from None
        if not q.turns:
            raise ValueError(f"{where}:{n}: question {q.qid} has no turns")
        if q.qid in seen:
            raise ValueError(f"{where}:{n}: question_id {q.qid} appears twice")
        seen.add(q.qid)
        if references and q.qid in references:
            q.reference = references[q.qid]
        if q.category in NEED_REF_CATS and (not q.reference or len(q.reference) < len(q.turns)):
            raise ValueError(f"{where}:{n}: question {q.qid} is a {q.category} question, which is graded against a "
                             f"reference answer per turn ({len(q.turns)} turns, "
                             f"{len(q.reference or [])} references): add \"reference\" to the line or give a "
                             f"reference answer file")
        out.append(q)
    return out


def answer_questions(questions: list[Question], generate: Callable[[list[str], float], list[str]], user: str,
                     assistant: str, sep: str, temperatures: Optional[dict[str, float]] = None
                     ) -> dict[str, list[str]]:
    """The candidate's answers, turn by turn (turn t's prompt holds the candidate's own earlier answers); with
    `temperatures` (category → temperature, e.g. FASTCHAT_TEMPERATURES) each category samples at its own."""
    answers: dict[str, list[str]] = {q.qid: [] for q in questions}
    def temp(q) -> float:
        return (temperatures or {}).get(q.category, 0.0)

    for t in range(max(len(q.turns) for q in questions)):
        qs = [q for q in questions if t < len(q.turns)]
        for tau in sorted({temp(q) for q in qs}):
            group = [q for q in qs if temp(q) == tau]
            prompts = ["".join(f"{user}{q.turns[i]}{sep}{assistant}{answers[q.qid][i]}{sep}" for i in range(t))
                       + f"{user}{q.turns[t]}{sep}{assistant}" for q in group]
            for q, a in zip(group, generate(prompts, tau)):
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


def render(messages: Messages, user: str, assistant: str, sep: str) -> str:
    """A judge conversation as one completion prompt with kura's chat template: the system text heads the user
    turn; a trailing assistant message is a reply to continue (forced grades)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    text = "".join(f"{user}{system + chr(10) * 2 if system else ''}{m['content']}{sep}"
                   for m in messages if m["role"] == "user")
    tail = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    return f"{text}{assistant}{tail}"


def parse_score(text: str) -> Optional[float]:
    """FastChat's rule: the first [[N]], else the first [N]; a grade outside 1..10 is no grade."""
    m = _SCORE.search(text) or _SCORE_BACKUP.search(text)
    if not m:
        return None
    v = float(m.group(1))
    return (int(v) if v.is_integer() else v) if 1 <= v <= 10 else None


def parse_verdict(text: str) -> Optional[str]:
    found = _VERDICT.findall(text)
    return found[-1] if found else None


def _fields(q: Question, turn: int, answers: dict[str, list[str]], cut: int) -> dict:
    """Template fields: question(s), answer(s) per model key ("" single, "a_"/"b_" pair), references."""
    f = {"question": q.turns[0], "question_1": q.turns[0], "question_2": q.turns[1] if len(q.turns) > 1 else ""}
    for key, ans in answers.items():
        for i in range(min(turn + 1, len(ans))):
            f[f"answer_{key}{i + 1}"] = ans[i][:cut]
    for i, r in enumerate((q.reference or [])[:2]):
        f[f"ref_answer_{i + 1}"] = r
    return f


def prompt_for(kind: str, q: Question, turn: int) -> JudgePrompt:
    ref = "math" if q.category in NEED_REF_CATS else ""
    name = {("single", ""): "single-v1", ("single", "math"): "single-math-v1", ("pair", ""): "pair-v2",
            ("pair", "math"): "pair-math-v1"}[(kind, ref)]
    return PROMPTS[name + ("-multi-turn" if turn == 1 else "")]


def messages(p: JudgePrompt, fields: dict) -> Messages:
    return [{"role": "system", "content": p.system}, {"role": "user", "content": p.template.format(**fields)}]


def _ask(convs: list[Messages], judge: JudgeFn, parse, max_retries: int, force: Optional[Force] = None,
         prefix: str = "", choices: Optional[list[str]] = None):
    """Judge every conversation; re-ask the ones that did not parse, up to max_retries more times (attempt number =
    seed offset, sampled); then, with `force`, constrain the still-unparsed ones to `prefix` + one of `choices`
    after their last reply. Returns [(text, parsed or None, attempts, forced)]."""
    out: list = [None] * len(convs)
    todo = list(range(len(convs)))
    for attempt in range(max_retries + 1):
        if not todo:
            break
        texts = judge([convs[i] for i in todo], attempt)
        left = []
        for i, t in zip(todo, texts):
            out[i] = (t, parse(t), attempt + 1, False)
            if out[i][1] is None:
                left.append(i)
        todo = left
    if todo and force is not None:
        partial = [convs[i] + [{"role": "assistant", "content": f"{out[i][0].rstrip()}\n{prefix}"}] for i in todo]
        for i, c in zip(todo, force(partial, choices)):
            v = parse(prefix + c)
            out[i] = (out[i][0], v, out[i][2], v is not None)
    return out


def _mean(v: list) -> Optional[float]:
    return round(sum(v) / len(v), 3) if v else None


def grade(questions: list[Question], answers: dict[str, list[str]], judge: JudgeFn, max_retries: int = 2,
          force: Optional[Force] = None, max_answer_chars: int = 2000) -> dict:
    """1–10 grades per (question, turn) with rationale, judge prompt, attempts, parse failures and forced grades;
    means per category and per turn over graded items only (FastChat's −1 items excluded, counted as ungraded).
    `max_answer_chars` cuts an answer shown to the judge (a small judge's context)."""
    keys, convs = [], []
    for q in questions:
        for t in range(len(q.turns)):
            p = prompt_for("single", q, t)
            keys.append((q, t, p.name))
            convs.append(messages(p, _fields(q, t, {"": answers[q.qid]}, max_answer_chars)))
    res = _ask(convs, judge, parse_score, max_retries, force, SCORE_PREFIX, SCORE_CHOICES)
    records = [{"question_id": q.qid, "category": q.category, "turn": t + 1, "answer": answers[q.qid][t],
                "score": s, "judge_prompt": name, "rationale": text.strip()[:2000], "attempts": n,
                "parse_failed": s is None or forced, "forced": forced}
               for (q, t, name), (text, s, n, forced) in zip(keys, res)]
    by_cat: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["score"] is not None:
            by_cat[r["category"]][r["turn"]].append(r["score"])
    scored = [r["score"] for r in records if r["score"] is not None]
    table = [{"category": c, "turn_1": _mean(v.get(1, [])), "turn_2": _mean(v.get(2, [])),
              "score": _mean(v.get(1, []) + v.get(2, [])), "graded": len(v.get(1, [])) + len(v.get(2, []))}
             for c, v in sorted(by_cat.items())]
    return {"records": records, "judge_prompt_version": JUDGE_PROMPT_VERSION,
            "per_category": {r["category"]: r["score"] for r in table}, "category_table": table,
            "per_turn": {str(t): _mean([r["score"] for r in records if r["turn"] == t and r["score"] is not None])
                         for t in sorted({r["turn"] for r in records})},
            "mean_score": _mean(scored),
            "graded": len(scored), "ungraded": len(records) - len(scored),
            "parse_failures": sum(r["parse_failed"] for r in records), "forced": sum(r["forced"] for r in records),
            "retries": sum(r["attempts"] - 1 for r in records)}


def pairwise(questions: list[Question], answers: dict[str, dict[str, list[str]]], judge: JudgeFn,
             max_retries: int = 1, force: Optional[Force] = None, turns: tuple[int, ...] = (1, 2),
             max_answer_chars: int = 2000) -> list:
    """Votes between every pair of models on every question, for each turn in `turns` the question has (the
    second with FastChat's multi-turn pair prompt), both orders; an order that does not parse after retries (and
    forcing, if given) is dropped, disagreeing orders are a tie.
    Returns [{model_a, model_b, winner, question_id, turn, judge_prompt, source, forced}]."""
    models = sorted(answers)
    jobs, convs = [], []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            for q in questions:
                for t in (t - 1 for t in turns if t <= len(q.turns)):
                    p = prompt_for("pair", q, t)
                    for first, second in ((a, b), (b, a)):
                        jobs.append((a, b, q.qid, t, p.name, first))
                        shown = {"a_": answers[first][q.qid], "b_": answers[second][q.qid]}
                        convs.append(messages(p, _fields(q, t, shown, max_answer_chars)))
    res = _ask(convs, judge, parse_verdict, max_retries, force, VERDICT_PREFIX, VERDICT_CHOICES)
    by_pair: dict[tuple, list] = defaultdict(list)
    for (a, b, qid, t, name, first), (_, v, _, forced) in zip(jobs, res):
        if v is None:
            continue
        winner = "tie" if v == "C" else (first if v == "A" else (b if first == a else a))
        by_pair[(a, b, qid, t, name)].append((winner, forced))
    votes = []
    for (a, b, qid, t, name), ws in sorted(by_pair.items()):
        w = ws[0][0] if len({x for x, _ in ws}) == 1 else "tie"
        votes.append({"model_a": a, "model_b": b, "question_id": qid, "turn": t + 1, "judge_prompt": name,
                      "winner": "a" if w == a else "b" if w == b else "tie", "source": "judge",
                      "forced": any(f for _, f in ws)})
    return votes


def candidate_fn(gen, max_tokens: int, seed: int = 0) -> Callable[[list[str], float], list[str]]:
    """A kura Generator as answer_questions' `generate(prompts, temperature)`."""
    from kura.synth.generators import SamplingConfig

    def call(prompts: list[str], temperature: float = 0.0) -> list[str]:
        return gen.generate(prompts, SamplingConfig(max_tokens=max_tokens, temperature=temperature,
                                                    seed=seed)).completions
    return call


def judge_fns(gen, max_tokens: int, tmpl: tuple[str, str, str], force: bool) -> tuple[JudgeFn, Optional[Force]]:
    """A kura Generator as a judge: messages through the chat API where the generator speaks it (`api="chat"`),
    else rendered with kura's chat template `tmpl` for the completions API. Attempt 0 is greedy (FastChat judges at
    temperature 0); re-asks sample (temperature 0.8, a new seed), since greedy would repeat the failure. With
    `force`, the constrained choice continues the judge's own reply (vLLM's guided choice; over the chat API this
    uses vLLM's `continue_final_message`, which other servers refuse: set force off for them)."""
    from kura.synth.generators import SamplingConfig

    chat = getattr(gen, "api", "completions") == "chat"

    def call(convs: list[Messages], attempt: int) -> list[str]:
        s = SamplingConfig(max_tokens=max_tokens, temperature=0.0 if attempt == 0 else 0.8, seed=attempt)
        if chat:
            return gen.chat(convs, s).completions
        return gen.generate([render(c, *tmpl) for c in convs], s).completions

    def forced(convs: list[Messages], choices: list[str]) -> list[str]:
        if chat:
            return gen.choose_chat(convs, choices)
        return gen.choose([render(c, *tmpl) for c in convs], choices)

    return call, (forced if force else None)


def run_bench(questions: list[Question], candidate, judge, tmpl: tuple[str, str, str], *, max_tokens: int,
              judge_max_tokens: int, max_retries: int, force: bool, sampling: str = "greedy",
              max_answer_chars: int = 2000) -> tuple[dict[str, list[str]], dict]:
    """One MT-Bench pass: the candidate Generator answers every turn, the judge Generator grades every turn.
    Shared by the runs' `eval_judge` and the trials' `trial_eval`, so both grade the same way."""
    temps = FASTCHAT_TEMPERATURES if sampling == "fastchat" else None
    answers = answer_questions(questions, candidate_fn(candidate, max_tokens), *tmpl, temperatures=temps)
    call, forced = judge_fns(judge, judge_max_tokens, tmpl, force)
    graded = grade(questions, answers, call, max_retries, forced, max_answer_chars)
    graded["judge_api"] = getattr(judge, "api", "completions")
    return answers, graded


def radar(table: list[dict], title: str):
    """FastChat's per-category radar picture (a matplotlib figure) of a category table (category, score)."""
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r.get("score") is not None]
    fig = plt.figure(figsize=(4.2, 4.2), dpi=90)
    ax = fig.add_subplot(projection="polar")
    if rows:
        angles = [2 * math.pi * i / len(rows) for i in range(len(rows))]
        vals = [r["score"] for r in rows]
        ax.plot(angles + angles[:1], vals + vals[:1], color="#4c72b0")
        ax.fill(angles + angles[:1], vals + vals[:1], color="#4c72b0", alpha=0.25)
        ax.set_xticks(angles, [r["category"] for r in rows], fontsize=8)
    ax.set_ylim(0, 10)
    ax.set_title(title, fontsize=9)
    return fig
