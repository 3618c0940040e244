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
import numpy as np

from kura.text.langid import identify

_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls except tab and newlines, and DEL
_TRAILING = re.compile(r"[ \t\u3000]+\n")
# Every mojibake ftfy can undo (UTF-8 read as Windows-125x / Latin-1 / MacRoman / cp437) contains characters from
# these blocks, and its HTML/escape fixes need & or ESC; text without any of them skips ftfy (its detector alone
# costs ~0.2 ms per page).
_MAYBE_BAD = re.compile("[\u0080-\u03ff\u2010-\u2265\u2500-\u25ff\ufb01\ufb02&\x1b]")


def normalize_text(text: str, repair_mojibake: bool = True) -> tuple[str, bool]:
    """Return (normalized text, whether mojibake was repaired)."""
    repaired = False
    if repair_mojibake and _MAYBE_BAD.search(text):
        fixed = ftfy.fix_text(text, normalization=None)
        repaired = fixed != text and ftfy.badness.is_bad(text)
        text = fixed
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text).strip()
    return text, repaired


_SCRIPTS = ("none", "hiragana", "katakana", "kanji", "latin", "other")
_SCRIPT_TABLE: np.ndarray | None = None


def _script_table() -> np.ndarray:
    """uint8 script class per code point (index into _SCRIPTS); built once per process (~0.1 s)."""
    global _SCRIPT_TABLE
    if _SCRIPT_TABLE is None:
        t = np.fromiter((5 if chr(i).isalpha() else 0 for i in range(0x110000)), dtype=np.uint8, count=0x110000)
        t[[i for i in range(128) if chr(i).isalpha()]] = 4
        t[0x3040:0x30A0] = 1  # the whole blocks, marks included (ー, ・, ゛ count with their script)
        t[0x30A0:0x3100] = 2
        t[0x3400:0x4DC0] = 3
        t[0x4E00:0xA000] = 3
        _SCRIPT_TABLE = t
    return _SCRIPT_TABLE


def script_counts(text: str) -> dict[str, int]:
    """Letters by script: hiragana, katakana, kanji, latin (ASCII letters), other letters (one table lookup per
    character, vectorized)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    counts = np.bincount(_script_table()[cps], minlength=len(_SCRIPTS))
    return {name: int(counts[i]) for i, name in enumerate(_SCRIPTS) if i}


def detect_language(text: str, ja_min_fraction: float = 0.3) -> tuple[str, float]:
    """(language, score): 'ja', 'en' or 'other' (see kura.text.langid)."""
    return identify(text, script_counts(text), ja_min_fraction)
