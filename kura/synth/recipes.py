"""Recipe: rewrite a source document as a Q&A dialogue (Tanuki's "rewrite" family, smallest form).

A recipe is three pure parts: `render` (document → prompt), `parse` (completion → turns) and `validate`
(turns → keep/drop + reason). Completions that do not parse or validate are kept in the shard's quarantine with
the reason, never silently dropped. The template's hash is part of every record, so a template edit yields a
new synthetic version.
"""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from kura.io.hashing import stable_hash
from kura.registry import Registry

# recipe kinds by name: a dataset spec's `recipe:` names one, its `params:` are the class's fields
RECIPES: Registry = Registry("recipe kind")


def recipe_kind(name: str):
    """Register a recipe class (a pydantic model with render/parse/validate/sources) under a kind name."""
    return RECIPES.register(name)

_TURN = re.compile(r"^(Q|A|質問|回答)\s*[:：]\s*(.*)$")


@recipe_kind("qa_dialogue")
class QADialogueRecipe(BaseModel):
    """Rewrite a document as a question/answer dialogue."""

    model_config = ConfigDict(extra="forbid")  # a misspelt param in a dataset spec is refused, not ignored

    name: str = Field("qa_dialogue", description="Recipe name, recorded in every record.")
    template_ja: str = Field("文章:\n{document}\n質問と回答に書き換えてください。\n",
                             description="Prompt for Japanese sources; {document} is replaced.")
    template_en: str = Field("Text:\n{document}\nRewrite as a question and an answer.\n",
                             description="Prompt for English sources; {document} is replaced.")
    max_source_chars: int = Field(240, description="Source documents are cut to this many characters (the tiny "
                                                   "teacher's context is 512 tokens).")
    min_answer_chars: int = Field(8, description="Drop dialogues whose answers are shorter than this.")
    banned_phrases: list[str] = Field(default_factory=lambda: ["送料無料", "今すぐクリック", "click here"],
                                      description="Drop outputs that reintroduce ad phrases.")

    def template_hash(self) -> str:
        return stable_hash([self.template_ja, self.template_en])

    def render(self, text: str, lang: str) -> str:
        tpl = self.template_ja if lang == "ja" else self.template_en
        return tpl.format(document=text[: self.max_source_chars])

    @staticmethod
    def parse(completion: str) -> list[dict]:
        """Lines starting `Q:`/`質問:` open a user turn and `A:`/`回答:` an assistant turn; other lines continue
        the current turn. Raises ValueError when no turn is found."""
        turns: list[dict] = []
        for line in completion.strip().split("\n"):
            m = _TURN.match(line.strip())
            if m:
                role = "user" if m.group(1) in ("Q", "質問") else "assistant"
                turns.append({"role": role, "content": m.group(2).strip()})
            elif turns and line.strip():
                turns[-1]["content"] = (turns[-1]["content"] + "\n" + line.strip()).strip()
        if not turns:
            raise ValueError("no Q:/A: turns")
        return turns

    def sources(self, docs: list[dict], n: int, seed: int, partition: str) -> list[dict]:
        """A seeded draw of documents per partition (each day rewrites different documents, reproducibly)."""
        import random

        return random.Random(f"{seed}:{partition}").sample(docs, min(n, len(docs)))

    def validate(self, turns: list[dict], source: dict | None = None) -> tuple[bool, str]:
        if turns[0]["role"] != "user":
            return False, "starts_with_answer"
        if not any(t["role"] == "assistant" for t in turns):
            return False, "no_answer"
        if any(not t["content"] for t in turns):
            return False, "empty_turn"
        if any(t["role"] == "assistant" and len(t["content"]) < self.min_answer_chars for t in turns):
            return False, "answer_too_short"
        low = " ".join(t["content"] for t in turns).lower()
        if any(p.lower() in low for p in self.banned_phrases):
            return False, "banned_phrase"
        return True, "ok"

    @staticmethod
    def to_text(turns: list[dict]) -> str:
        """Plain `user:` / `assistant:` rendering (the Tanuki chat format) used for pretraining mixes."""
        return "\n".join(f"{t['role']}: {t['content']}" for t in turns)

    def reference_completion(self, text: str, lang: str) -> str:
        """A rule-based rewrite (first sentences as the answer) used to *teach the tiny teacher the format*.
        Real teachers (Calm3, Mixtral) follow the instruction without this."""
        src = text[: self.max_source_chars]
        if lang == "ja":
            first = "".join(s + "。" for s in src.split("。")[:2] if s.strip())
            return f"質問: この文章は何について書かれていますか。\n回答: {first.strip()}\n"
        first = " ".join(s.strip() + "." for s in src.split(".")[:2] if s.strip())
        return f"Q: What is this text about?\nA: {first.strip()}\n"
