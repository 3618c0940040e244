"""Normalization applied before any filter: mojibake repair (ftfy), Unicode NFKC, control characters (NUL & co.)
removed, newline and whitespace cleanup.

NFKC folds full-width ASCII (ＡＢＣ１２３) and half-width katakana (ｶﾀｶﾅ) into their canonical forms, so that
filters, dedup hashes and the tokenizer see one spelling. Runs of blank lines collapse to one blank line (paragraph
breaks survive); trailing spaces go.
"""
from __future__ import annotations

import re
import unicodedata

import ftfy

from kura.text.langid import identify

_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls except tab and newlines, and DEL
_TRAILING = re.compile(r"[ \t\u3000]+\n")


def normalize_text(text: str, repair_mojibake: bool = True) -> tuple[str, bool]:
    """Return (normalized text, whether mojibake was repaired)."""
    repaired = False
    if repair_mojibake:
        fixed = ftfy.fix_text(text, normalization=None)
        repaired = fixed != text and ftfy.badness.is_bad(text)
        text = fixed
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text).strip()
    return text, repaired


def script_counts(text: str) -> dict[str, int]:
    """Letters by script: hiragana, katakana, kanji, latin (ASCII letters), other letters."""
    c = {"hiragana": 0, "katakana": 0, "kanji": 0, "latin": 0, "other": 0}
    for ch in text:
        o = ord(ch)
        if 0x3040 <= o <= 0x309F:
            c["hiragana"] += 1
        elif 0x30A0 <= o <= 0x30FF:
            c["katakana"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF:
            c["kanji"] += 1
        elif ch.isascii() and ch.isalpha():
            c["latin"] += 1
        elif ch.isalpha():
            c["other"] += 1
    return c


def detect_language(text: str, ja_min_fraction: float = 0.3) -> tuple[str, float]:
    """(language, score): 'ja', 'en' or 'other' (see kura.text.langid)."""
    return identify(text, script_counts(text), ja_min_fraction)
