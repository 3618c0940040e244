"""The `cleaned` stage's text pass: normalize once, remove ad and navigation lines, then run the profile's ordered
rules (kura.text.rules) and count the first reason per document.

Defaults are adapted to Japanese: English-tuned rules (words per sentence, alpha ratios on space-separated tokens —
Gopher, C4) drop almost all Japanese pages, so lengths count characters, and the Japanese-specific rules look at
what Japanese prose has and spam lacks: hiragana (particles and inflections) and sentences ending in 。 on prose lines.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from pydantic import BaseModel, Field, model_validator

from kura.text.normalize import normalize_text
from kura.text.rules import (DEFAULT_RULES, RULES, TextView, duplicate_line_fractions,  # noqa: F401 - re-exported
                             duplicate_ngram_char_fraction, unknown_rules)

DEFAULT_AD_PHRASES = ["送料無料", "今すぐクリック", "【公式】", "カートに入れる", "ポイント10倍", "今すぐ購入",
                      "click here", "buy now", "free shipping", "cookie settings", "privacy policy"]


class CleanConfig(BaseModel):
    """Rule-filter profile of the `cleaned` stage: the ordered rule list and every rule's threshold."""

    rules: list[str] = Field(default_factory=lambda: list(DEFAULT_RULES),
                             description="Rules applied in this order (names registered in kura.text.rules); the "
                                         "first that returns a reason drops the document. Leave one out to disable "
                                         "it.")
    min_chars: int = Field(30, ge=0, description="doc_too_short: fewer characters than this after cleanup.")
    ad_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_AD_PHRASES),
                                  description="Lines containing any of these (case-insensitive) are removed as ads "
                                              "or boilerplate.")
    max_boilerplate_line_fraction: float = Field(
        0.5, description="boilerplate_ads: more than this fraction of the lines were ad/boilerplate lines.")
    max_duplicate_line_fraction: float = Field(
        0.5, description="gopher_dup_lines: more than this fraction of the lines (of ≥ min_dup_line_chars) repeat an "
                         "earlier line (Gopher and Swallow: 0.30; on real documentation, captions and short code lines "
                         "repeat, so 0.5).")
    max_duplicate_line_char_fraction: float = Field(
        0.25, description="gopher_dup_lines: more than this share of the characters lie in repeated lines (Gopher "
                          "and Swallow: 0.20; 0.25 keeps manuals whose figure captions repeat a line).")
    min_dup_line_chars: int = Field(10, ge=1, description="Lines shorter than this (`}`, 戻る, a lone number) are "
                                                          "not counted by gopher_dup_lines.")
    min_dup_rule_lines: int = Field(5, ge=2, description="gopher_dup_lines judges only documents with at least "
                                                         "this many counted lines.")
    max_duplicate_ngram_char_fraction: float = Field(
        0.5, description="gopher_dup_ngrams: more than this share of the characters lie in character n-grams "
                         "(length duplicate_ngram_chars) that occur more than once — Gopher's duplicated-n-gram rule "
                         "(0.10–0.15 over 5–10 words), on characters so that it works without word boundaries. Real "
                         "manuals repeat whole sentences (captions, see-also blocks): 0.3 dropped 17 of 1,308 "
                         "documentation pages, 13 of them good; spam pages are > 0.9.")
    duplicate_ngram_chars: int = Field(50, ge=5, description="n of the duplicated character n-gram rule (~10 "
                                                             "English words, ~2 Japanese sentences).")
    max_replacement_char_fraction: float = Field(
        0.0, description="doc_replacement_chars: more than this fraction of the characters are U+FFFD (bytes lost "
                         "in a bad decode that ftfy cannot restore).")
    min_hiragana_fraction: float = Field(
        0.2, description="ja_low_hiragana: Japanese documents with less hiragana than this among Japanese letters "
                         "(hiragana + katakana + kanji; Swallow corpus v1: 0.2).")
    min_prose_line_chars: int = Field(20, ge=1, description="A prose line has at least this many characters and is "
                                                            "not a list item, numbered heading or code.")
    min_ja_sentences: int = Field(1, ge=0, description="ja_no_sentences: Japanese documents with fewer sentences "
                                                       "(。！？ on prose lines) than this: menus, link lists, tables "
                                                       "of contents.")
    min_mixed_en_sentences: int = Field(3, ge=1, description="ja_no_sentences keeps a page with Japanese "
                                                             "headings and at least this many English sentences "
                                                             "(an untranslated page of a Japanese manual).")
    min_sentence_end_fraction: float = Field(
        0.3, description="ja_few_sentence_ends: minimum share of Japanese prose lines (with hiragana) ending like a "
                         "sentence (。！？」』)…:); headings, lists, code and table rows are not counted.")
    min_sentence_rule_lines: int = Field(10, ge=1, description="ja_few_sentence_ends judges only documents with at "
                                                               "least this many Japanese prose lines.")
    max_bullet_line_fraction: float = Field(0.9, description="gopher_bullet_lines: more than this share of the "
                                                             "lines are bullets (Gopher: 0.9).")
    remove_navigation_lines: bool = Field(True, description="Remove navigation lines before the rules: short items "
                                                            "joined by | or ・ (ホーム | 戻る | 次へ), rows of short "
                                                            "table cells and [bracketed][links].")
    languages: list[str] = Field(default_factory=lambda: ["ja", "en"],
                                 description="Languages to keep (others dropped as lang_<id>).")
    repair_mojibake: bool = Field(True, description="Repair UTF-8-read-as-cp1252 mojibake with ftfy before filtering.")

    @model_validator(mode="after")
    def _check(self) -> "CleanConfig":
        unknown = unknown_rules(self.rules)
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}: known rules are {sorted(RULES)}")
        for name in ("max_boilerplate_line_fraction", "max_duplicate_line_fraction", "max_replacement_char_fraction",
                     "max_duplicate_ngram_char_fraction", "max_duplicate_line_char_fraction",
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
_CELLS = re.compile(r"\t+| {3,}")
_BRACKETED = re.compile(r"(?:\s*\[[^\[\]]{0,60}\]\s*){2,}")


def is_navigation_line(line: str) -> bool:
    """'ホーム | 戻る | 次へ', 'Home › News › 2024': three or more short items joined by separators; a row of short
    table cells without a sentence ('戻る\t\tカスタマイズ\t\t次へ', as extraction writes layout tables); a run of
    [bracketed][links] ('[トップ][目次][インデックス]')."""
    s = line.strip()
    if not s:
        return False
    parts = [p for p in _NAV_SPLIT.split(s) if p]
    if len(parts) >= 3 and max(len(p) for p in parts) <= 12 and len(_NAV_SPLIT.findall(s)) >= 2:
        return True
    cells = [c.strip() for c in _CELLS.split(s) if c.strip()]
    if len(cells) >= 2 and all(len(c) <= 40 and not c.endswith(("。", "！", "？")) for c in cells):
        return True
    return bool(_BRACKETED.fullmatch(s))


def clean_documents(docs: Iterable[dict], cfg: CleanConfig) -> CleanResult:
    """`docs`: dicts with doc_id, text, source. Kept documents gain `lang`, `lang_score`, `n_chars`."""
    res = CleanResult()
    rules = [RULES[name] for name in cfg.rules]
    for d in docs:
        res.stats["documents_in"] += 1
        text, repaired = normalize_text(d["text"], cfg.repair_mojibake)
        res.stats["mojibake_repaired"] += repaired
        text, removed, nonblank = strip_ad_lines(text, cfg.ad_phrases)
        res.stats["ad_lines_removed"] += removed
        if cfg.remove_navigation_lines:
            lines = text.split("\n")
            kept_lines = [ln for ln in lines if not is_navigation_line(ln)]
            res.stats["navigation_lines_removed"] += len(lines) - len(kept_lines)
            text = "\n".join(kept_lines).strip()
        view = TextView(text, removed, nonblank)
        reason = next((r for r in (fn(view, cfg) for fn in rules) if r), None)
        if reason:
            res.drops[reason] += 1
            res.rejected.append({"doc_id": d["doc_id"], "source": d["source"], "reason": reason,
                                 "text": d["text"][:20_000]})
        else:
            lang, score = view.language
            res.kept.append({"doc_id": d["doc_id"], "source": d["source"], "text": text, "lang": lang,
                             "lang_score": score, "n_chars": len(text)})
    return res
