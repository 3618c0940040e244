"""SentencePiece tokenizer trained on a reproducible sample of the corpus.

Settings chosen so text round-trips exactly (a pretraining tokenizer must not silently change the data):
identity normalization (NFKC already ran in `cleaned`), no whitespace collapsing, no dummy prefix, byte fallback
(unseen characters become byte pieces, never <unk>), digits split into single pieces. Size: ~2 MB of text and a
4k vocabulary train in a few seconds on one core.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

SPECIAL = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}


class TokenizerConfig(BaseModel):
    """SentencePiece training settings."""

    model_type: Literal["unigram", "bpe"] = Field("unigram", description="SentencePiece algorithm.")
    vocab_size: int = Field(2000, ge=300, description="Vocabulary size including specials and byte pieces.")
    sample_chars: int = Field(2_000_000, gt=0, description="Characters of text sampled (seeded) for training.")
    character_coverage: float = Field(0.9995, gt=0, le=1, description="Share of characters covered by pieces; "
                                                                     "the rest fall back to bytes.")
    seed: int = Field(0, description="Seed of the training sample.")
    sample_weights: dict[str, float] = Field(
        default_factory=lambda: {"deduplicated": 0.9, "synthetic": 0.1},
        description="The tokenizer's own mix: share of the sampled characters drawn from each source (sum 1). "
                    "A source with less text than its share contributes all it has.")
    model_max_length: int = Field(8192, gt=0, description="Longest sequence the tokenizer is declared for (HF "
                                                          "model_max_length); a mix phase may not exceed it.")


def sample_mix(groups: dict[str, list[str]], weights: dict[str, float], max_chars: int, seed: int) -> list[str]:
    """A reproducible sample with each source's share of characters given by `weights`."""
    unknown = set(weights) - set(groups)
    if unknown:
        raise ValueError(f"tokenizer sample_weights name unknown sources {sorted(unknown)} (known: {sorted(groups)})")
    if abs(sum(weights.values()) - 1.0) > 1e-6 or any(w < 0 for w in weights.values()):
        raise ValueError(f"tokenizer sample_weights must be non-negative and sum to 1, got {weights}")
    out: list[str] = []
    for name, w in sorted(weights.items()):
        out += sample_texts(groups[name], int(w * max_chars), seed)
    return out


def sample_texts(texts: list[str], max_chars: int, seed: int) -> list[str]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        if n >= max_chars:
            break
        out.append(texts[i])
        n += len(texts[i])
    return out


def train_sentencepiece(texts: list[str] | dict[str, list[str]], out_dir: str | Path, cfg: TokenizerConfig) -> dict:
    """`texts`: one list, or {source: texts} sampled with cfg.sample_weights."""
    import sentencepiece as spm

    if isinstance(texts, dict):
        sample = sample_mix(texts, cfg.sample_weights, cfg.sample_chars, cfg.seed)
    else:
        sample = sample_texts(texts, cfg.sample_chars, cfg.seed)
    lines = [ln for t in sample for ln in t.split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type=cfg.model_type, vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, max_sentence_length=16384, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=1, minloglevel=2, **SPECIAL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    return {"sample_documents": len(sample), "sample_chars": sum(map(len, sample)), "sample_lines": len(lines)}


class SpmTokenizer:
    """Thin wrapper: encode/decode with the newline preserved (SentencePiece splits on nothing, but its trainer
    saw lines; `\\n` is encoded through byte fallback)."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()
        self.vocab_size = self.sp.get_piece_size()
        card = Path(model_path).with_name("kura_tokenizer.json")
        self.model_max_length = (json.loads(card.read_text())["config"].get("model_max_length", 8192)
                                 if card.exists() else 8192)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


def tokenizer_stats(tok: SpmTokenizer, held_out: dict[str, list[str]]) -> dict:
    """Characters per token per language, and the share of tokens that are byte-fallback pieces (coverage)."""
    stats = {}
    for lang, texts in held_out.items():
        if not texts:
            continue
        ids = [i for t in texts for i in tok.encode(t)]
        chars = sum(map(len, texts))
        byte = sum(1 for i in ids if tok.sp.is_byte(i))
        stats[lang] = {"chars_per_token": round(chars / max(1, len(ids)), 3),
                       "byte_fallback_fraction": round(byte / max(1, len(ids)), 4),
                       "roundtrip_exact": all(tok.decode(tok.encode(t)) == t for t in texts[:200])}
    return stats


def write_tokenizer_card(out_dir: Path, cfg: TokenizerConfig, stats: dict, lineage: dict) -> None:
    (Path(out_dir) / "kura_tokenizer.json").write_text(json.dumps(
        {"format": "sentencepiece", "config": cfg.model_dump(), "special_ids": SPECIAL, "stats": stats,
         "lineage": lineage}, indent=1, ensure_ascii=False, sort_keys=True))
