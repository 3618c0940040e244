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
        for text, m in ((_prefix(x["role"], t), 0 if assistant_only else 1),
                        (x["content"] + t.turn_separator, int(train))):
            seg = encode(text)
            ids += seg
            mask += [m] * len(seg)
    return ids, mask


def jinja_template(t: ChatTemplate) -> str:
    """The template as a Hugging Face / vLLM chat template (Jinja): a kura model served behind an OpenAI-compatible
    chat endpoint (`vllm serve --chat-template`) sees the same text as `conversation_text` renders, with the
    assistant prefix as the generation prompt."""
    def lit(s: str) -> str:
        return json.dumps(s)  # ASCII escapes: a valid Jinja string literal

    return ("{%- for m in messages -%}"
            f"{{%- if m['role'] == 'system' -%}}{{{{ {lit(t.system_prefix)} }}}}"
            f"{{%- elif m['role'] == 'user' -%}}{{{{ {lit(t.user_prefix)} }}}}"
            f"{{%- else -%}}{{{{ {lit(t.assistant_prefix)} }}}}{{%- endif -%}}"
            f"{{{{ m['content'] }}}}{{{{ {lit(t.turn_separator)} }}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {lit(t.assistant_prefix)} }}}}{{%- endif -%}}")
