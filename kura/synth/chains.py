"""Recipes whose record takes several teacher calls, each prompt built from the source and the earlier outputs
(the Tanuki deck's chains): a random problem → a dialogue-style answer → a follow-up question → a report-style
answer; N-turn conversations in which the teacher also plays the user; English → Japanese translation of an
English instruction set (one call per field, the record keeps both sides); similar problems (類題) from seed
questions, then their worked answers.

A multi-call recipe has, instead of `render`/`parse`:
- `n_calls(source)` — how many calls its record takes;
- `render_call(source, k, outputs)` — the k-th prompt, given the cleaned outputs of calls 0..k-1;
- `clean_call(source, k, completion)` — the k-th output as it enters the record, or ValueError (the record is
  quarantined as `unparseable: call k (<name>): …` and takes no further calls);
- `assemble(source, outputs)` — the chat turns; then `validate(turns, source)` as every recipe.
`kura.synth.shard.generate_shard` runs the calls round by round over the whole shard (round k batches the k-th
call of every record still alive), each round through the request log, so a killed run resumes at the call it
was in: earlier rounds' prompts are rebuilt from the logged outputs and hit the log.
"""
from __future__ import annotations

import json
import random
import re
import string
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from kura.synth.more_recipes import RecipeBase, _ANSWER
from kura.synth.recipes import recipe_kind
from kura.text.normalize import script_counts

_LABEL = re.compile(r"^\s*(問題|類題|回答|解答|質問|訳文|ユーザー|アシスタント|user|assistant)\s*[:：]\s*", re.I)


def _strip_label(text: str) -> str:
    """Teachers often repeat the label the prompt ended with (`問題:` …); the record keeps the content only."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _ngrams(text: str, n: int = 3) -> set[str]:
    t = re.sub(r"\s+", "", text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def char_jaccard(a: str, b: str) -> float:
    """Character 3-gram Jaccard similarity (how much of a problem's wording a 類題 kept)."""
    x, y = _ngrams(a), _ngrams(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def japanese_share(text: str) -> float:
    """Share of kana and kanji among the letters (a translation that left English untranslated scores low)."""
    c = script_counts(text)
    ja = c.get("hiragana", 0) + c.get("katakana", 0) + c.get("kanji", 0)
    letters = ja + c.get("latin", 0)
    return ja / letters if letters else 0.0


class MultiCallRecipe(RecipeBase):
    """Base of the multi-call recipes (see the module docstring for the protocol)."""

    multi_call: ClassVar[bool] = True
    min_chars: int = Field(4, ge=1, description="A call whose cleaned output is shorter than this ends the record "
                                                "(quarantined as unparseable).")

    def call_name(self, source: dict, k: int) -> str:
        return f"call{k}"

    def clean_call(self, source: dict, k: int, completion: str) -> str:
        out = _strip_label(completion)
        if len(out) < self.min_chars:
            raise ValueError("empty output" if not out else f"output shorter than {self.min_chars} characters")
        return out

    def render(self, text: str, lang: str) -> str:  # single-call entry points do not apply
        raise TypeError(f"{self.name} is a multi-call recipe: use render_call")

    def parse(self, completion: str) -> list[dict]:
        raise TypeError(f"{self.name} is a multi-call recipe: use clean_call and assemble")

    def _draw(self, firsts: list[str], seconds: list[str], n: int, seed: int, partition: str,
              prefix: str) -> list[dict]:
        """n distinct (seed, aspect) pairs, a seeded draw per partition (cycled when n exceeds the pairs).
        Identical prompts share one request (and so one completion), so a record needs a pair of its own to
        differ from the others."""
        pairs = [(a, b) for a in firsts for b in seconds]
        random.Random(f"{seed}:{self.name}:{partition}").shuffle(pairs)
        if not pairs:
            return []
        return [{"doc_id": f"{prefix}:{partition}:{i}", "text": pairs[i % len(pairs)][0],
                 "aspect": pairs[i % len(pairs)][1], "lang": "ja"} for i in range(n)]


class ChainCall(BaseModel):
    """One call of a chain: its prompt (placeholders: {topic} and the names of earlier calls) and the role its
    output plays in the conversation."""

    name: str = Field(description="The call's name; later templates refer to its output as {name}.")
    role: Literal["user", "assistant"] = Field(description="The conversation turn its output becomes.")
    template: str = Field(description="The prompt; {topic} and {<earlier call>} are replaced.")


_CHAIN = [
    ChainCall(name="problem", role="user",
              template="話題: {topic}（観点: {aspect}）\nこの話題について、考えがいのある問題を一つ作ってください。"
                       "問題文だけを書いてください。\n問題:"),
    ChainCall(name="answer", role="assistant",
              template="問題: {problem}\nこの問題に、話しかけるような対話調で答えてください。\n回答:"),
    ChainCall(name="followup", role="user",
              template="問題: {problem}\n回答: {answer}\n"
                       "この回答を読んだ人が次に尋ねそうな追加の質問を一つ書いてください。\n質問:"),
    ChainCall(name="report", role="assistant",
              template="問題: {problem}\n質問: {followup}\n"
                       "この質問に、見出しや箇条書きを使ったレポート形式で答えてください。\n回答:"),
]
_ASPECTS = ["基本の仕組み", "歴史", "身近な例", "よくある誤解", "数字で考える", "比較", "これから", "注意点"]
_REPORT = re.compile(r"^\s*(#+\s|[-*・●]\s*|\d+[.)．、]\s*|【)", re.M)


@recipe_kind("chain")
class ChainRecipe(MultiCallRecipe):
    """A chain of calls, each fed the earlier outputs (default: random problem → dialogue-style answer →
    follow-up question → report-style answer). The calls' outputs become alternating user/assistant turns."""

    name: str = Field("chain", description="Recipe name, recorded in every record.")
    topics: list[str] = Field(default_factory=lambda: ["日本の歴史", "料理の科学", "天気と気候", "鉄道の仕組み",
                                                       "家計と貯金", "宇宙の観測", "健康な生活", "プログラミング入門"],
                              description="Seed topics, drawn per record ({topic} in the templates).")
    aspects: list[str] = Field(default_factory=lambda: list(_ASPECTS),
                               description="Aspects paired with topics ({aspect}); each record gets its own pair.")
    calls: list[ChainCall] = Field(default_factory=lambda: list(_CHAIN), description="The calls, in order.")
    report_call: str | None = Field("report", description="A call whose output must be report-shaped (a heading, "
                                                          "list or numbered line); none: no such check.")
    require_question: bool = Field(True, description="User turns after the first must read as a question (end "
                                                     "with ？/?/か。 or contain a question word).")

    @field_validator("calls")
    @classmethod
    def _chain(cls, calls: list[ChainCall]) -> list[ChainCall]:
        seen = {"topic", "aspect"}
        for i, c in enumerate(calls):
            missing = _fields(c.template) - seen
            if missing:
                raise ValueError(f"calls[{i}] ({c.name}): template refers to {sorted(missing)}, which no earlier "
                                 f"call defines (known: {sorted(seen)})")
            if c.name in seen:
                raise ValueError(f"calls[{i}]: name {c.name!r} is used twice")
            seen.add(c.name)
        roles = [c.role for c in calls]
        if not roles or roles[0] != "user" or roles[-1] != "assistant" or any(
                a == b for a, b in zip(roles, roles[1:])):
            raise ValueError(f"calls: roles must alternate user, assistant, … from user to assistant; got {roles}")
        return calls

    @model_validator(mode="after")
    def _report_known(self) -> "ChainRecipe":
        if self.report_call and self.report_call not in {c.name for c in self.calls}:
            raise ValueError(f"report_call: {self.report_call!r} is not one of the calls")
        return self

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        return self._draw(self.topics, self.aspects, n, seed, partition, "topic")

    def n_calls(self, source: dict) -> int:
        return len(self.calls)

    def call_name(self, source: dict, k: int) -> str:
        return self.calls[k].name

    def render_call(self, source: dict, k: int, outputs: list[str]) -> str:
        named = {"topic": source["text"], "aspect": source.get("aspect", ""),
                 **{c.name: o for c, o in zip(self.calls, outputs)}}
        return self.calls[k].template.format(**named)

    def assemble(self, source: dict, outputs: list[str]) -> list[dict]:
        return [{"role": c.role, "content": o} for c, o in zip(self.calls, outputs)]

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        by_name = {c.name: t["content"] for c, t in zip(self.calls, turns)}
        if self.report_call and not _REPORT.search(by_name[self.report_call]):
            return False, "format_violation"
        if self.require_question and any(not _is_question(t["content"]) for t in turns[2::2]):
            return False, "not_a_question"
        return True, "ok"

    def reference_outputs(self, source: dict) -> list[str]:
        """What a competent teacher returns for each default call (teaches the format; documents the shape)."""
        t = source["text"]
        return [f"{t}について、初心者が最初に知るべきことは何でしょうか。",
                f"いい質問ですね。{t}では、まず基本の考え方をつかむことが大切なんです。",
                f"{t}を実際に学ぶには、どんな順番で進めればよいですか？",
                f"# {t}の学び方\n- 基本用語を調べる\n- 身近な例で確かめる\n- 学んだことを記録する"]


def _is_question(text: str) -> bool:
    last = text.strip().split("\n")[-1].strip()
    return bool(re.search(r"[？?]$|か[。．]?$", last) or re.search(r"(何|どう|なぜ|どの|いつ|どこ|誰|教えて)", text))


@recipe_kind("conversation")
class ConversationRecipe(MultiCallRecipe):
    """N-turn conversations in which the teacher plays both sides: the user (asking, following up) and the
    assistant. Call 2i writes user turn i from the conversation so far, call 2i+1 the assistant's reply."""

    name: str = Field("conversation", description="Recipe name, recorded in every record.")
    turns: int = Field(3, ge=1, le=16, description="User/assistant exchanges per conversation.")
    topics: list[str] = Field(default_factory=lambda: ["旅行の計画", "料理の基本", "仕事の相談", "健康な生活",
                                                       "読書の習慣", "パソコンの使い方", "子育て", "家計の管理"],
                              description="Seed topics, drawn per conversation.")
    personas: list[str] = Field(default_factory=lambda: ["学生", "会社員", "高齢者", "子育て中の親", "初心者",
                                                         "専門家", "留学生", "自営業者"],
                                description="Who the simulated user is ({persona}); each conversation gets its own "
                                            "(topic, persona) pair.")
    template_first_user: str = Field("あなたはアシスタントに相談する{persona}のユーザーです。話題: {topic}\n"
                                     "最初の質問を一つだけ書いてください。\nユーザー:",
                                     description="Prompt of the first user turn; {topic} is replaced.")
    template_user: str = Field("あなたはアシスタントに相談する{persona}のユーザーです。これまでの会話:\n{history}\n"
                               "会話を続ける次の質問や返事を一つだけ書いてください。\nユーザー:",
                               description="Prompt of later user turns; {history} is the conversation so far.")
    template_assistant: str = Field("以下はユーザーとアシスタントの会話です。\n{history}\nアシスタント:",
                                    description="Prompt of assistant turns; {history} ends with the user's turn.")

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        return self._draw(self.topics, self.personas, n, seed, partition, "conversation")

    def n_calls(self, source: dict) -> int:
        return 2 * self.turns

    def call_name(self, source: dict, k: int) -> str:
        return f"{'user' if k % 2 == 0 else 'assistant'}{k // 2 + 1}"

    @staticmethod
    def history(outputs: list[str]) -> str:
        return "\n".join(f"{'ユーザー' if i % 2 == 0 else 'アシスタント'}: {o}" for i, o in enumerate(outputs))

    def render_call(self, source: dict, k: int, outputs: list[str]) -> str:
        persona = source.get("aspect", "")
        if k == 0:
            return self.template_first_user.format(topic=source["text"], persona=persona)
        tpl = self.template_user if k % 2 == 0 else self.template_assistant
        return tpl.format(history=self.history(outputs), persona=persona)

    def clean_call(self, source: dict, k: int, completion: str) -> str:
        """A teacher asked for one side often writes the other side's next line too: keep its own turn only."""
        own = re.split(r"\n\s*(ユーザー|アシスタント|user|assistant)\s*[:：]", completion.strip(), maxsplit=1,
                       flags=re.I)[0]
        return super().clean_call(source, k, own)

    def assemble(self, source: dict, outputs: list[str]) -> list[dict]:
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": o} for i, o in enumerate(outputs)]

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        users = [t["content"] for t in turns if t["role"] == "user"]
        if len(set(users)) < len(users):
            return False, "repeated_turn"
        if any(a["content"] == b["content"] for a, b in zip(turns, turns[1:])):
            return False, "echoes_previous_turn"
        return True, "ok"


@recipe_kind("translate")
class TranslateRecipe(MultiCallRecipe):
    """English → Japanese translation of an English instruction dataset (a JSONL file of Alpaca/Dolly-style
    records — instruction, optional input, output — or chat `messages`): one call per field or message; the
    record's turns are Japanese and its `meta.original` keeps the English record."""

    name: str = Field("translate", description="Recipe name, recorded in every record.")
    path: str = Field("", description="JSONL of English records (instruction/input/output, or messages).")
    template: str = Field("次の英文を自然な日本語に翻訳してください。訳文だけを書いてください。\n英文: {text}\n訳文:",
                          description="Prompt per field; {text} is replaced.")
    min_japanese_share: float = Field(0.5, ge=0, le=1, description="Drop translations whose letters are less than "
                                                                   "this share kana/kanji (`not_japanese`).")
    length_ratio: tuple[float, float] = Field((0.15, 2.0), description="Allowed Japanese/English character ratio "
                                                                       "per field (`length_ratio` outside).")

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        """Records of `path` as (role, English text) parts; a line that is not such a record is refused with
        file:line."""
        if not self.path:
            return []
        recs = []
        with open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    parts = _english_parts(rec)
                except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as e:
                    raise ValueError(f"{self.path}:{i}: not an instruction record ({e})") from None
                recs.append({"doc_id": f"en:{i}", "text": "\n".join(t for _, t in parts), "lang": "ja",
                             "parts": parts, "original": rec})
        return random.Random(f"{seed}:{self.name}:{partition}").sample(recs, min(n, len(recs)))

    def n_calls(self, source: dict) -> int:
        return len(source["parts"])

    def call_name(self, source: dict, k: int) -> str:
        return source["parts"][k][0]

    def render_call(self, source: dict, k: int, outputs: list[str]) -> str:
        return self.template.format(text=source["parts"][k][1])

    def assemble(self, source: dict, outputs: list[str]) -> list[dict]:
        """Consecutive parts of one role (instruction + input) become one turn."""
        turns: list[dict] = []
        for (field, _), ja in zip(source["parts"], outputs):
            role = "assistant" if field in ("output", "response") or field.startswith("assistant") else "user"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n\n" + ja
            else:
                turns.append({"role": role, "content": ja})
        return turns

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if any(japanese_share(t["content"]) < self.min_japanese_share for t in turns):
            return False, "not_japanese"
        if source is not None:
            en = sum(len(t) for _, t in source["parts"])
            ja = sum(len(t["content"]) for t in turns)
            lo, hi = self.length_ratio
            if en and not lo <= ja / en <= hi:
                return False, "length_ratio"
        return True, "ok"

    def meta(self, source: dict) -> dict:
        return {"source_lang": "en", "original": source["original"]}


def _english_parts(rec: dict) -> list[tuple[str, str]]:
    if "messages" in rec:
        parts = [(f"{m['role']}{i}", str(m["content"])) for i, m in enumerate(rec["messages"])
                 if m["role"] in ("user", "assistant") and str(m["content"]).strip()]
    else:
        parts = [(k, str(rec[k])) for k in ("instruction", "input", "output") if str(rec.get(k) or "").strip()]
    if not any(f in ("output", "response") or f.startswith("assistant") for f, _ in parts) or \
            not any(f.startswith(("instruction", "input", "user")) for f, _ in parts):
        raise ValueError("needs an instruction and an output (or user and assistant messages)")
    return parts


@recipe_kind("similar_problems")
class SimilarProblemsRecipe(MultiCallRecipe):
    """類題: from a seed question, the teacher writes a problem of the same kind with other numbers or setting,
    then a worked answer ending in `答え: X`. A 類題 that copies its seed or drifts off it is dropped."""

    name: str = Field("similar_problems", description="Recipe name, recorded in every record.")
    seed_questions: list[str] = Field(default_factory=lambda: [
        "りんごが12個あります。3人で同じ数ずつ分けると一人何個ですか。",
        "時速60kmで2時間走ると何km進みますか。",
        "1から10までの整数の和はいくつですか。",
        "定価1200円の品物が2割引きのとき、いくらですか。"], description="Seed questions (or questions_path).")
    questions_path: str = Field("", description="JSONL with a `question` field per line; replaces seed_questions.")
    variations: list[str] = Field(default_factory=lambda: ["数値", "登場する物や人", "場面", "問い方"],
                                  description="What a 類題 changes ({variation}); each record gets its own "
                                              "(seed, variation) pair.")
    template_problem: str = Field("次の問題と同じ種類で、{variation}を変えた類題を一つ作ってください。"
                                  "類題だけを書いてください。\n"
                                  "問題: {seed}\n類題:", description="Prompt of the 類題; {seed} and {variation} "
                                                                     "are replaced.")
    template_answer: str = Field("問題: {problem}\n"
                                 "途中の考え方を書き、最後に「答え: 」に続けて答えを書いてください。\n",
                                 description="Prompt of the worked answer; {problem} is replaced.")
    max_similarity: float = Field(0.8, gt=0, le=1, description="Drop a 類題 this similar to its seed (3-gram "
                                                               "Jaccard; `copies_seed`).")
    min_similarity: float = Field(0.05, ge=0, lt=1, description="Drop a 類題 less similar than this (`off_topic`).")

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        qs = list(self.seed_questions)
        if self.questions_path:
            qs = []
            with open(self.questions_path, encoding="utf-8") as f:
                for i, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            qs.append(str(json.loads(line)["question"]))
                        except (json.JSONDecodeError, KeyError, TypeError) as e:
                            raise ValueError(f"{self.questions_path}:{i}: not a JSON object with a question "
                                             f"({e})") from None
        return self._draw(qs, self.variations, n, seed, partition, "similar")

    def n_calls(self, source: dict) -> int:
        return 2

    def call_name(self, source: dict, k: int) -> str:
        return ("problem", "answer")[k]

    def render_call(self, source: dict, k: int, outputs: list[str]) -> str:
        if k == 0:
            return self.template_problem.format(seed=source["text"], variation=source.get("aspect", ""))
        return self.template_answer.format(problem=outputs[0])

    def clean_call(self, source: dict, k: int, completion: str) -> str:
        out = super().clean_call(source, k, completion)
        if k == 1 and not _ANSWER.search(out):
            raise ValueError("no 答え: line")
        return out

    def assemble(self, source: dict, outputs: list[str]) -> list[dict]:
        return [{"role": "user", "content": outputs[0]}, {"role": "assistant", "content": outputs[1]}]

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if source is not None:
            sim = char_jaccard(source["text"], turns[0]["content"])
            if sim >= self.max_similarity:
                return False, "copies_seed"
            if sim < self.min_similarity:
                return False, "off_topic"
        return True, "ok"

    def meta(self, source: dict) -> dict:
        return {"seed_question": source["text"]}
