"""A Hugging Face tokenizer folder behind the same small interface as `SpmTokenizer` (encode, encode_batch, decode,
eos_id, pad_id, vocab_size, model_max_length), so a mix phase can pack with an imported base model's own tokenizer
(`tokenizer: base_model/<name>`) exactly as it packs with kura's SentencePiece model.

`vocab_size` is the model's embedding rows when the folder's config.json (or the caller) says so — a base model's
vocabulary is often padded beyond the tokenizer's ids — else the tokenizer's length. No special tokens are added
by encode: packing appends the end-of-document id itself, as it does for SentencePiece.
"""
from __future__ import annotations

import json
from pathlib import Path


class HfTokenizer:
    def __init__(self, folder: str | Path, vocab_size: int | None = None):
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        cfg = {}
        for c in (folder / "config.json", folder.parent / "config.json"):
            if c.is_file():
                cfg = json.loads(c.read_text())
                break
        self.vocab_size = int(vocab_size or cfg.get("vocab_size") or len(self.tok))
        eos = self.tok.eos_token_id
        self.eos_id = eos if eos is not None else self.vocab_size - 1
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id
        declared = self.tok.model_max_length if self.tok.model_max_length < 10**8 else None
        self.model_max_length = int(declared or cfg.get("max_position_embeddings") or 8192)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def load_tokenizer(path: str | Path):
    """A SentencePiece model file (kura's tokenizer asset) or a Hugging Face tokenizer folder."""
    path = Path(path)
    if path.is_dir():
        return HfTokenizer(path)
    from kura.tokenize.spm import SpmTokenizer

    return SpmTokenizer(path)
