"""Human-written datasets (`pipelines/human/*.yaml` → asset `human/<name>`): instruction collections (Dolly-ja,
Ichikara, OASST — the sets Tanuki's pre-study fine-tuned with) and preference collections (chosen / rejected), as
SFT and DPO sources and as mix sources.

One JSON object per line. Accepted shapes:
- instruction: `{"instruction", "input"?, "output"}` (Alpaca / Dolly-ja; the field names are configurable, e.g.
  Dolly's `context` / `response` or Ichikara's `text` / `output`), `{"messages": [{"role", "content"}, …]}` (OASST
  and chat exports; system, then alternating user / assistant, ending with the assistant) or ShareGPT's
  `{"conversations": [{"from": "human"|"gpt", "value"}, …]}`;
- preference: `{"prompt": str | "messages": [...], "chosen": str, "rejected": str}`; `chosen` / `rejected` may also
  be whole conversations (HH-RLHF style) whose last turn is the assistant's answer and whose earlier turns are
  the prompt.

A line that is not valid UTF-8 or JSON, lacks a field, has an empty turn, a role out of order, or chosen equal to
rejected is quarantined as `<file>:<line>: <reason>` and counted, never silently dropped; the asset's blocking
check fails when more than `max_bad_fraction` of the lines are bad, naming the first ones.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from kura.synth.recipes import QADialogueRecipe

# a DPO pair: `prompt` the last user turn; `prompt_turns` (JSON) the whole prompt when it has several turns
PAIR_SCHEMA = pa.schema([("doc_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
                         ("rejected", pa.string()), ("prompt_turns", pa.string())])
# a quarantined line: its number, `<file>:<line>: <reason>`, and the line itself (cut at 2,000 bytes)
BAD_LINE_SCHEMA = pa.schema([("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())])


class HumanFields(BaseModel):
    """Field names of the instruction shape (the defaults are Alpaca's)."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field("instruction", description="The instruction field.")
    input: str = Field("input", description="Optional context appended to the instruction.")
    output: str = Field("output", description="The answer field.")


class HumanDatasetSpec(BaseModel):
    """One human-written dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="Asset name: human/<name>; mixes and trials name it.")
    kind: Literal["instruction", "preference"] = Field(description="Conversations (SFT, mixes) or chosen/rejected "
                                                                   "pairs (DPO; their chosen side also SFT/mixes).")
    path: str = Field(description="JSONL file; relative paths are from the repository root.")
    fields: HumanFields = Field(default_factory=HumanFields, description="Field names of the instruction shape.")
    lang: str = Field("ja", description="Language of the records (mix language selectors use it).")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="The blocking check fails above this share of "
                                                                  "quarantined lines.")
    licence: Optional[str] = Field(None, description="Licence of the collection (e.g. cc-by-sa-3.0 for Dolly).")
    tags: list[str] = Field(default_factory=list, description="Free tags.")
    description: str = Field("", description="What the collection is, for the UI.")
    source_file: Optional[str] = Field(None, exclude=True, description="Where the spec was read (not versioned).")

    def file(self, root: Path) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else root / p

    def version_text(self, root: Path) -> str:
        """The spec's result-relevant fields and the file's content hash: an edit to either makes it stale."""
        spec = self.model_dump(exclude={"licence", "tags", "description", "path", "max_bad_fraction"})
        f = self.file(root)
        digest = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "missing"
        return json.dumps({"spec": spec, "file_sha256": digest}, sort_keys=True)


@dataclass
class HumanData:
    """What one file held: conversations (every kind), pairs (preference), and the quarantined lines."""

    records: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    bad: list[dict] = field(default_factory=list)
    lines: int = 0

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / self.lines if self.lines else 0.0


class BadRecord(ValueError):
    pass


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "prompter": "user", "bot": "assistant"}


def _turns(msgs, what: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise BadRecord(f"{what} is not a non-empty list")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRecord(f"{what}[{i}] is not an object")
        role = _ROLES.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value"))
        if role is None:
            raise BadRecord(f"{what}[{i}]: unknown role {m.get('role', m.get('from'))!r}")
        if not isinstance(content, str) or not content.strip():
            raise BadRecord(f"{what}[{i}]: empty turn")
        turns.append({"role": role, "content": content.strip()})
    body = turns[1:] if turns[0]["role"] == "system" else turns
    roles = [t["role"] for t in body]
    if not roles or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles)):
        raise BadRecord(f"{what}: roles must alternate user, assistant, … (after an optional system turn); got "
                        f"{roles}")
    return turns


def _text(rec: dict, key: str, required: bool = True) -> str:
    v = rec.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise BadRecord(f"missing field {key!r}" if v is None else f"empty field {key!r}")
        return ""
    if not isinstance(v, str):
        raise BadRecord(f"field {key!r} is not a string")
    return v.strip()


def instruction_turns(rec: dict, f: HumanFields) -> list[dict]:
    for key in ("messages", "conversations"):
        if key in rec:
            turns = _turns(rec[key], key)
            if turns[-1]["role"] != "assistant":
                raise BadRecord(f"{key}: the last turn is not the assistant's")
            return turns
    ins, ctx, out = _text(rec, f.instruction), _text(rec, f.input, required=False), _text(rec, f.output)
    return [{"role": "user", "content": f"{ins}\n\n{ctx}" if ctx else ins}, {"role": "assistant", "content": out}]


def preference_pair(rec: dict) -> tuple[list[dict], str, str]:
    """(prompt turns, chosen answer, rejected answer)."""
    sides = {}
    for side in ("chosen", "rejected"):
        v = rec.get(side)
        if isinstance(v, list):
            turns = _turns(v, side)
            if turns[-1]["role"] != "assistant":
                raise BadRecord(f"{side}: the last turn is not the assistant's")
            sides[side] = (turns[:-1], turns[-1]["content"])
        else:
            sides[side] = (None, _text(rec, side))
    if "messages" in rec:
        prompt = _turns(rec["messages"] + [{"role": "assistant", "content": "-"}], "messages")[:-1]
    elif "prompt" in rec:
        prompt = [{"role": "user", "content": _text(rec, "prompt")}]
    else:
        prompt = sides["chosen"][0] or sides["rejected"][0]
        if not prompt:
            raise BadRecord("missing field 'prompt' (or 'messages', or conversations as chosen / rejected)")
    chosen, rejected = sides["chosen"][1], sides["rejected"][1]
    if chosen == rejected:
        raise BadRecord("chosen equals rejected")
    return prompt, chosen, rejected


def read_human(path: Path, spec: HumanDatasetSpec, shown_as: str | None = None) -> HumanData:
    """Every line of the file, as a record (and a pair) or a quarantined line with `<file>:<line>: <reason>`."""
    where = shown_as or path.name
    out = HumanData()
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            out.lines += 1
            try:
                try:
                    rec = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise BadRecord(f"not valid UTF-8 (byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise BadRecord(f"not JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise BadRecord("not a JSON object")
                doc_id = f"human:{spec.name}:{n}"
                if spec.kind == "instruction":
                    turns = instruction_turns(rec, spec.fields)
                else:
                    prompt, chosen, rejected = preference_pair(rec)
                    turns = prompt + [{"role": "assistant", "content": chosen}]
                    out.pairs.append({"doc_id": doc_id, "prompt": prompt[-1]["content"], "chosen": chosen,
                                      "rejected": rejected,
                                      "prompt_turns": json.dumps(prompt, ensure_ascii=False) if len(prompt) > 1
                                      else None})
            except BadRecord as e:
                out.bad.append({"line": n, "reason": f"{where}:{n}: {e}",
                                "raw": raw[:2000].decode("utf-8", "replace")})
                continue
            out.records.append({"doc_id": doc_id, "source": f"human/{spec.name}",
                                "text": QADialogueRecipe.to_text([t for t in turns if t["role"] != "system"]),
                                "lang": spec.lang, "source_doc_id": f"{where}:{n}",
                                "turns": json.dumps(turns, ensure_ascii=False), "prompt": None, "completion": None,
                                "meta": None})
    return out


def load_human(folder: str | Path, root: Path) -> dict[str, HumanDatasetSpec]:
    """All human dataset specs of a folder; a spec whose file does not exist is refused, naming both."""
    from kura.synth.spec import SpecError, load_spec_folder

    specs = load_spec_folder(Path(folder), HumanDatasetSpec, "human dataset") if Path(folder).is_dir() else {}
    for h in specs.values():
        if not h.file(root).is_file():
            raise SpecError(f"human dataset spec {h.source_file}: path: {h.file(root)} is not a file")
    return specs
