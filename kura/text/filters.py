"""Rule filters for web text. Every filter is a function `(text) -> (keep, reason)`; `clean_documents` applies
them in order and counts the first failing reason per document.

Defaults are adapted to Japanese: English-tuned rules (words per sentence, alpha ratios on space-separated tokens —
Gopher, C4) drop almost all Japanese pages, so lengths count characters, and the Japanese-specific rules look at
what Japanese prose has and spam lacks: hiragana (particles and inflections) and sentence-final punctuation (。).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

import numpy as np
from pydantic import BaseModel, Field, model_validator

from kura.text.normalize import detect_language, normalize_text, script_counts

DEFAULT_AD_PHRASES = ["送料無料", "今すぐクリック", "【公式】", "カートに入れる", "ポイント10倍", "今すぐ購入",
                      "click here", "buy now", "free shipping", "cookie settings", "privacy policy"]


class CleanConfig(BaseModel):
    """Rule-filter thresholds for the `cleaned` stage."""

    min_chars: int = Field(30, description="Drop documents shorter than this many characters after cleanup.")
    max_chars: int = Field(20_000, description="Drop documents longer than this (giant pages, dumps, logs).")
    ad_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_AD_PHRASES),
                                  description="Lines containing any of these (case-insensitive) are removed as ads "
                                              "or boilerplate.")
    max_boilerplate_line_fraction: float = Field(
        0.5, description="Drop a document when more than this fraction of its lines were ad/boilerplate lines.")
    max_duplicate_line_fraction: float = Field(
        0.3, description="Drop a document when more than this fraction of its lines repeat an earlier line.")
    max_duplicate_ngram_char_fraction: float = Field(
        0.3, description="Drop a document when more than this share of its characters lie in character n-grams "
                         "(length duplicate_ngram_chars) that occur more than once — Gopher's duplicated-n-gram rule "
                         "(0.10–0.15 over 5–10 words), on characters so that it works without word boundaries.")
    duplicate_ngram_chars: int = Field(50, ge=5, description="n of the duplicated character n-gram rule (~10 "
                                                             "English words, ~2 Japanese sentences).")
    max_raw_chars: int = Field(200_000, description="Documents longer than this before cleanup are dropped as "
                                                    "too_long without being normalized (bounds the time spent on "
                                                    "giant pages).")
    max_replacement_char_fraction: float = Field(
        0.0, description="Drop a document when more than this fraction of its characters are U+FFFD (bytes that "
                         "were lost in a bad decode and that ftfy cannot restore).")
    min_hiragana_fraction: float = Field(
        0.1, description="Japanese documents: minimum share of hiragana among letters. Running Japanese prose is "
                         "~30–50% hiragana; keyword spam and kanji/katakana lists have almost none.")
    min_sentence_end_fraction: float = Field(
        0.3, description="Japanese documents: minimum share of lines (over 10 characters) ending like a sentence "
                         "(。！？」』)…). Menus, tag clouds and tables fail it.")
    max_bullet_line_fraction: float = Field(0.9, description="Drop documents whose lines are nearly all bullets.")
    remove_navigation_lines: bool = Field(True, description="Remove lines made of short items separated by | or ・ "
                                                            "(ホーム | 戻る | 次へ), which extraction keeps.")
    languages: list[str] = Field(default_factory=lambda: ["ja", "en"],
                                 description="Languages to keep (others are quarantined with reason language:<id>).")
    repair_mojibake: bool = Field(True, description="Repair UTF-8-read-as-cp1252 mojibake with ftfy before filtering.")

    @model_validator(mode="after")
    def _check(self) -> "CleanConfig":
        if not 0 <= self.min_chars < self.max_chars:
            raise ValueError(f"need 0 <= min_chars < max_chars, got {self.min_chars}, {self.max_chars}")
        for name in ("max_boilerplate_line_fraction", "max_duplicate_line_fraction", "max_replacement_char_fraction",
                     "max_duplicate_ngram_char_fraction",
                     "min_hiragana_fraction", "min_sentence_end_fraction", "max_bullet_line_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        return self


@dataclass
class CleanResult:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)


@lru_cache(maxsize=16)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive alternation for all phrases (one scan per line instead of one per phrase)."""
    return re.compile("|".join(re.escape(p) for p in phrases), re.IGNORECASE) if phrases else None


def strip_ad_lines(text: str, phrases: Iterable[str]) -> tuple[str, int, int]:
    """Remove lines containing an ad phrase; returns (text, removed lines, non-blank lines before)."""
    pattern = _phrase_pattern(tuple(phrases))
    lines = text.split("\n")
    nonblank = sum(1 for ln in lines if ln.strip())
    kept = [ln for ln in lines if not pattern.search(ln)] if pattern else lines
    return "\n".join(kept).strip(), len(lines) - len(kept), nonblank


_NAV_SPLIT = re.compile(r"\s*[|｜・>›»/]\s*")
_SENTENCE_END = ("。", "！", "？", "!", "?", "」", "』", "）", ")", "…", ".")
_BULLETS = ("・", "•", "●", "■", "◆", "-", "*", "※", "→")


def is_navigation_line(line: str) -> bool:
    """'ホーム | 戻る | 次へ', 'Home › News › 2024': three or more short items joined by separators."""
    parts = [p for p in _NAV_SPLIT.split(line.strip()) if p]
    return len(parts) >= 3 and max(len(p) for p in parts) <= 12 and len(_NAV_SPLIT.findall(line)) >= 2


def line_stats(text: str) -> tuple[float, float]:
    """(share of lines over 10 characters ending like a sentence, share of bullet lines)."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return 0.0, 0.0
    long_lines = [ln for ln in lines if len(ln) > 10]
    ends = sum(ln.endswith(_SENTENCE_END) for ln in long_lines) / len(long_lines) if long_lines else 1.0
    bullets = sum(ln.startswith(_BULLETS) for ln in lines) / len(lines)
    return ends, bullets


def duplicate_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return 0.0
    seen: set[str] = set()
    dup = 0
    for ln in lines:
        dup += ln in seen
        seen.add(ln)
    return dup / len(lines)


def duplicate_ngram_char_fraction(text: str, n: int) -> float:
    """Share of characters covered by character n-grams that occur more than once in the text (vectorized: rolling
    hash of every n-gram, repeated hashes found with one np.unique, coverage by a difference array)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) <= n:
        return 0.0
    h = np.zeros(len(cps) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * np.uint64(1_000_003) + cps[k: len(cps) - n + 1 + k]
    _, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
    starts = np.nonzero(counts[inv] > 1)[0]
    if not len(starts):
        return 0.0
    diff = np.bincount(starts, minlength=len(cps) + 1) - np.bincount(starts + n, minlength=len(cps) + 1)
    return float(np.count_nonzero(np.cumsum(diff[:-1]))) / len(cps)


def clean_documents(docs: Iterable[dict], cfg: CleanConfig) -> CleanResult:
    """`docs`: dicts with doc_id, text, source. Kept documents gain `lang`, `lang_score`, `n_chars`."""
    res = CleanResult()
    for d in docs:
        res.stats["documents_in"] += 1
        if len(d["text"]) > cfg.max_raw_chars:
            res.drops["too_long"] += 1
            res.rejected.append({"doc_id": d["doc_id"], "source": d["source"], "reason": "too_long",
                                 "text": d["text"][:20_000]})
            continue
        text, repaired = normalize_text(d["text"], cfg.repair_mojibake)
        res.stats["mojibake_repaired"] += repaired
        text, removed, nonblank = strip_ad_lines(text, cfg.ad_phrases)
        res.stats["ad_lines_removed"] += removed
        if cfg.remove_navigation_lines:
            lines = text.split("\n")
            kept_lines = [ln for ln in lines if not is_navigation_line(ln)]
            res.stats["navigation_lines_removed"] += len(lines) - len(kept_lines)
            text = "\n".join(kept_lines).strip()
        reason = None
        if not text:
            reason = "boilerplate" if removed else "empty"
        elif nonblank and removed / nonblank > cfg.max_boilerplate_line_fraction:
            reason = "boilerplate"
        elif len(text) < cfg.min_chars:
            reason = "too_short"
        elif len(text) > cfg.max_chars:
            reason = "too_long"
        elif duplicate_line_fraction(text) > cfg.max_duplicate_line_fraction:
            reason = "repetitive"
        elif duplicate_ngram_char_fraction(text, cfg.duplicate_ngram_chars) > cfg.max_duplicate_ngram_char_fraction:
            reason = "repeated_ngrams"
        elif text.count("\ufffd") / len(text) > cfg.max_replacement_char_fraction:
            reason = "replacement_chars"
        lang, score = detect_language(text) if text else ("other", 0.0)
        if reason is None and lang not in cfg.languages:
            reason = f"language:{lang}"
        if reason is None:
            ends, bullets = line_stats(text)
            if bullets > cfg.max_bullet_line_fraction:
                reason = "bullet_list"
            elif lang == "ja":
                c = script_counts(text)
                if c["hiragana"] / max(1, sum(c.values())) < cfg.min_hiragana_fraction:
                    reason = "ja_low_hiragana"
                elif ends < cfg.min_sentence_end_fraction:
                    reason = "ja_few_sentence_ends"
        if reason:
            res.drops[reason] += 1
            res.rejected.append({"doc_id": d["doc_id"], "source": d["source"], "reason": reason,
                                 "text": d["text"][:20_000]})
        else:
            res.kept.append({"doc_id": d["doc_id"], "source": d["source"], "text": text, "lang": lang,
                             "lang_score": score, "n_chars": len(text)})
    return res
