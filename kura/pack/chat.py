"""Chat formatting: a conversation (turns of {role, content}) rendered with a template into token ids plus a
loss mask (1 = the token is trained on). With `assistant_only`, prefixes and user/system turns carry no loss, the
assistant's content and its turn separator do (the model learns to answer and to end its turn). Segments are
tokenized separately so the mask boundaries are exact."""
from __future__ import annotations

import json

from kura.mix.spec import ChatTemplate


def conversation_text(turns: list[dict], t: ChatTemplate) -> str:
    return "".join(_prefix(x["role"], t) + x["content"] + t.turn_separator for x in turns)


def _prefix(role: str, t: ChatTemplate) -> str:
    return {"user": t.user_prefix, "assistant": t.assistant_prefix, "system": t.system_prefix}.get(role, f"{role}: ")


def render_conversation(turns: list[dict] | str, t: ChatTemplate, encode, assistant_only: bool
                        ) -> tuple[list[int], list[int]]:
    if isinstance(turns, str):
        turns = json.loads(turns)
    ids: list[int] = []
    mask: list[int] = []
    for x in turns:
        train = (not assistant_only) or x["role"] == "assistant"
        for text, m in ((_prefix(x["role"], t), 0 if assistant_only else 1), (x["content"] + t.turn_separator, int(train))):
            seg = encode(text)
            ids += seg
            mask += [m] * len(seg)
    return ids, mask
