"""The other recipe families (Tanuki's synthetic data): rewrite as textbook or dialogue with an optional paired
English translation, multi-turn instructions from seed topics (optionally with JSON answers), re-answering an
existing instruction set, and math / logic / code-reading problems with worked answers checked against the known
result.

Every recipe has the same four pure parts as `QADialogueRecipe`: `sources` (what one partition draws: documents,
seed topics, questions or generated problems), `render` (source → prompt), `parse` (completion → chat turns, or
ValueError) and `validate` (turns, source → keep/drop + reason; for recipes whose prompt is the source itself —
a question, a problem — it also fills the user turn from the source, which the completion does not repeat).
`reference_completion` writes the output a competent teacher would give; it teaches the tiny test teacher the
format (real teachers need no such help).
"""
from __future__ import annotations

import json
import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kura.io.hashing import stable_hash
from kura.synth.recipes import QADialogueRecipe, recipe_kind


class RecipeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt param in a dataset spec is refused, not ignored

    name: str = "base"

    def template_hash(self) -> str:
        return stable_hash({k: v for k, v in self.model_dump().items() if "template" in k or k == "name"})

    to_text = staticmethod(QADialogueRecipe.to_text)  # one plain `role: content` rendering for every recipe

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        """What one partition works on: by default a seeded draw of documents (doc_id, text, lang)."""
        return random.Random(f"{seed}:{self.name}:{partition}").sample(docs, min(n, len(docs)))


_EN = re.compile(r"^\s*(English|英訳)\s*[:：]\s*", re.M)


@recipe_kind("rewrite")
class RewriteRecipe(RecipeBase):
    """Rewrite a web document as a textbook passage or a two-person dialogue, dropping ads and noise; optionally
    followed by an English translation, kept in the same record as a second exchange."""

    name: str = Field("rewrite", description="Recipe name, recorded in every record.")
    style: Literal["textbook", "dialogue"] = Field("textbook", description="Target form of the rewrite.")
    translate_en: bool = Field(False, description="Also ask for an English translation (paired in the record).")
    template_textbook: str = Field("文章:\n{document}\n"
                                   "広告や不要な部分を除き、教科書の一節として書き直してください。\n",
                                   description="Prompt for style=textbook.")
    template_dialogue: str = Field("文章:\n{document}\n内容を保ったまま、AとBの対話に書き直してください。\n",
                                   description="Prompt for style=dialogue.")
    template_translate: str = Field("最後に「English:」に続けて英訳を書いてください。\n",
                                    description="Appended when translate_en is set.")
    max_source_chars: int = Field(240, description="Source documents are cut to this many characters.")
    min_chars: int = Field(20, description="Drop rewrites shorter than this.")
    banned_phrases: list[str] = Field(default_factory=lambda: ["送料無料", "今すぐクリック", "click here"],
                                      description="Drop rewrites that keep ad phrases.")

    def render(self, text: str, lang: str) -> str:
        tpl = self.template_textbook if self.style == "textbook" else self.template_dialogue
        return tpl.format(document=text[: self.max_source_chars]) + (self.template_translate if self.translate_en
                                                                     else "")

    def parse(self, completion: str) -> list[dict]:
        parts = _EN.split(completion, maxsplit=1)  # [body, marker, english] when the marker is present
        body, english = parts[0].strip(), (parts[2] if len(parts) == 3 else None)
        if not body:
            raise ValueError("empty rewrite")
        instruction = "教科書風に書き直してください。" if self.style == "textbook" else "対話に書き直してください。"
        turns = [{"role": "user", "content": instruction}, {"role": "assistant", "content": body}]
        if self.translate_en:
            if not english or not english.strip():
                raise ValueError("no English translation")
            turns += [{"role": "user", "content": "英語に翻訳してください。"},
                      {"role": "assistant", "content": english.strip()}]
        return turns

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        body = turns[1]["content"]
        if len(body) < self.min_chars:
            return False, "answer_too_short"
        if any(p.lower() in body.lower() for p in self.banned_phrases):
            return False, "banned_phrase"
        if self.style == "dialogue" and not re.search(r"^(A|B)\s*[:：]", body, re.M):
            return False, "format_violation"
        return True, "ok"

    def reference_completion(self, text: str, lang: str) -> str:
        sents = [s + "。" for s in text[: self.max_source_chars].split("。") if s.strip()][:3]
        if self.style == "dialogue":
            out = "\n".join(f"{'AB'[i % 2]}: {s}" for i, s in enumerate(sents))
        else:
            out = "".join(sents)
        return out + ("\nEnglish: (translation)\n" if self.translate_en else "\n")


_QA_N = re.compile(r"^\s*(Q|A|質問|回答)\s*([12])\s*[:：]\s*(.*)$")


@recipe_kind("instruct_seeds")
class InstructFromSeedsRecipe(RecipeBase):
    """Multi-turn instructions from seed topics: question 1, answer 1, a follow-up question 2, answer 2."""

    name: str = Field("instruct_seeds", description="Recipe name.")
    seeds: list[str] = Field(default_factory=lambda: ["日本の歴史", "料理の基本", "天気と気候", "鉄道の仕組み",
                                                      "読書の習慣", "宇宙の観測", "健康な生活", "経済の基礎"],
                             description="Seed topics (genres, curriculum units, keywords).")
    json_answers: bool = Field(False, description="Require each answer to be a JSON object {\"answer\": …}.")
    template: str = Field("話題: {topic}\n"
                          "この話題について、質問1と回答1、続けて関連する質問2と回答2を書いてください。\n",
                          description="Prompt; {topic} is replaced.")
    template_json: str = Field("回答は必ず {{\"answer\": \"...\"}} の形のJSONで書いてください。\n",
                               description="Appended when json_answers is set.")

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        r = random.Random(f"{seed}:{self.name}:{partition}")
        return [{"doc_id": f"seed:{partition}:{i}", "text": r.choice(self.seeds), "lang": "ja"} for i in range(n)]

    def render(self, text: str, lang: str) -> str:
        return self.template.format(topic=text) + (self.template_json if self.json_answers else "")

    def parse(self, completion: str) -> list[dict]:
        turns, seen = [], []
        for line in completion.strip().split("\n"):
            m = _QA_N.match(line)
            if m:
                role = "user" if m.group(1) in ("Q", "質問") else "assistant"
                turns.append({"role": role, "content": m.group(3).strip()})
                seen.append((role, m.group(2)))
            elif turns and line.strip():
                turns[-1]["content"] = (turns[-1]["content"] + "\n" + line.strip()).strip()
        if not turns:
            raise ValueError("no 質問1/回答1 turns")
        if seen != [("user", "1"), ("assistant", "1"), ("user", "2"), ("assistant", "2")]:
            raise ValueError(f"expected q1/a1/q2/a2, got {seen}")
        return turns

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if any(not t["content"] for t in turns):
            return False, "empty_turn"
        if self.json_answers:
            for t in turns[1::2]:
                try:
                    obj = json.loads(t["content"])
                except json.JSONDecodeError:
                    return False, "format_violation"
                if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str):
                    return False, "format_violation"
        return True, "ok"

    def reference_completion(self, text: str, lang: str) -> str:
        a1, a2 = f"{text}は身近で大切な分野です。", f"まず{text}の基本を調べることから始めましょう。"
        if self.json_answers:
            a1, a2 = json.dumps({"answer": a1}, ensure_ascii=False), json.dumps({"answer": a2}, ensure_ascii=False)
        return f"質問1: {text}とは何ですか。\n回答1: {a1}\n質問2: どう学べばよいですか。\n回答2: {a2}\n"


@recipe_kind("reanswer")
class ReAnswerRecipe(RecipeBase):
    """Regenerate answers to an existing instruction dataset's questions (a JSONL file of {"question": …})."""

    name: str = Field("reanswer", description="Recipe name.")
    questions_path: str = Field("", description="JSONL with a `question` field per line (the dataset to re-answer).")
    template: str = Field("質問: {question}\n回答:", description="Prompt; {question} is replaced.")
    min_answer_chars: int = Field(8, description="Drop answers shorter than this.")

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        """Questions drawn from questions_path; none when it is not set (an empty shard, with a warning)."""
        if not self.questions_path:
            return []
        qs = []
        with open(self.questions_path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        qs.append({"doc_id": f"q:{i}", "text": json.loads(line)["question"], "lang": "ja"})
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"{self.questions_path}:{i}: not a JSON object with a question ({e})") \
                            from None
        return random.Random(f"{seed}:{self.name}:{partition}").sample(qs, min(n, len(qs)))

    def render(self, text: str, lang: str) -> str:
        return self.template.format(question=text)

    def parse(self, completion: str) -> list[dict]:
        answer = completion.strip()
        if not answer:
            raise ValueError("empty answer")
        return [{"role": "user", "content": ""}, {"role": "assistant", "content": answer}]

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if source is not None:
            turns[0]["content"] = source["text"]
        if len(turns[1]["content"]) < self.min_answer_chars:
            return False, "answer_too_short"
        return True, "ok"

    def reference_completion(self, text: str, lang: str) -> str:
        return f" {text.rstrip('？?')}については、基本から順に説明します。\n"


@recipe_kind("problems")
class ProblemsRecipe(RecipeBase):
    """Specialized data: math, logic and code-reading problems generated with their answers; the teacher writes
    a worked solution ending in `答え: X`, which must equal the known answer (`wrong_answer` otherwise)."""

    name: str = Field("problems", description="Recipe name.")
    domains: list[str] = Field(default_factory=lambda: ["math", "logic", "code"],
                               description="Problem domains, drawn in turn: math, logic, code.")
    template: str = Field("問題: {problem}\n途中の考え方を書き、最後に「答え: 」に続けて答えだけを書いてください。\n",
                          description="Prompt; {problem} is replaced.")

    @field_validator("domains")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in ("math", "logic", "code")]
        if bad or not v:
            raise ValueError(f"domains must be a non-empty list of math, logic, code; got {v}")
        return v

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        r = random.Random(f"{seed}:{self.name}:{partition}")
        out = []
        for i in range(n):
            domain = self.domains[i % len(self.domains)]
            if domain == "math":
                a, b, c = r.randint(2, 40), r.randint(2, 40), r.randint(2, 9)
                item = r.choice(["りんご", "本", "切符", "鉛筆"])
                text = (f"{item}が{a}個あり、{b}個もらいました。それを{c}人で同じ数ずつ分けると、余りを除いて一人"
                        f"何個ですか。")
                answer, work = str((a + b) // c), f"{a}+{b}={a + b}、{a + b}÷{c}={(a + b) // c}余り{(a + b) % c}"
            elif domain == "logic":
                names = r.sample(["佐藤", "鈴木", "高橋", "田中", "伊藤"], 3)
                text = (f"{names[0]}さんは{names[1]}さんより背が高く、{names[1]}さんは{names[2]}さんより背が高い"
                        f"です。一番背が低いのは誰ですか。")
                answer, work = f"{names[2]}さん", f"{names[0]}>{names[1]}>{names[2]}なので一番低いのは{names[2]}さん"
            else:
                a, b, c = r.randint(2, 9), r.randint(1, 20), r.randint(1, 12)
                text = f"Pythonの関数 def f(x): return x * {a} + {b} について、f({c}) の値はいくつですか。"
                answer, work = str(a * c + b), f"f({c}) = {c} * {a} + {b} = {a * c + b}"
            out.append({"doc_id": f"{domain}:{partition}:{i}", "text": text, "lang": "ja", "answer": answer,
                        "work": work, "domain": domain})
        return out

    def render(self, text: str, lang: str) -> str:
        return self.template.format(problem=text)

    def parse(self, completion: str) -> list[dict]:
        if not _ANSWER.search(completion):
            raise ValueError("no 答え: line")
        return [{"role": "user", "content": ""}, {"role": "assistant", "content": completion.strip()}]

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if source is not None:
            turns[0]["content"] = source["text"]
            got = _ANSWER.search(turns[1]["content"]).group(1).strip().rstrip("。.")
            if got != str(source["answer"]):
                return False, "wrong_answer"
        return True, "ok"

    @staticmethod
    def reference_for(source: dict) -> str:
        return f"{source['work']}。\n答え: {source['answer']}\n"


_ANSWER = re.compile(r"答え\s*[:：]\s*([^\n]+)")
