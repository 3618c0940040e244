"""Document rules as an ordered list: each rule is one small function `(view, cfg) -> reason | None`, registered by
name with `@rule`; a profile (`CleanConfig.rules`) is the ordered list of names and the thresholds in `CleanConfig`.
`clean_documents` normalizes a document once, builds one `TextView` (lines and script counts computed lazily, once)
and stops at the first rule that returns a reason.

Reasons are prefixed by family: `doc_` (empty, short, broken characters), `boilerplate_` (ads), `gopher_` (Gopher /
Swallow repetition and list rules), `lang_` (a language not kept: `lang_<id>`), `ja_` (Japanese prose rules after
Swallow corpus v1: sentences and the hiragana share on prose lines). Length alone never drops a document: packing
cuts a document longer than a sequence into full sequences, and the reader bounds giant ones (`document_too_large`).

Why the rules look at *prose lines*: real documentation (1,308 pages of eight Japanese Debian documentation
packages, `benchmarks/rules_real.py`) is full of headings, numbered menu entries, code, tables and page navigation
that never end with `。` and repeat from page top to page bottom; the previous line-level rules kept 693 of those
pages. A prose line is a line of at least `min_prose_line_chars` characters that is not a list item, numbered
heading or code; the repetition rules skip code lines and the page title's repeat as the first heading.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import numpy as np

from kura.registry import Registry
from kura.text.normalize import detect_language, script_counts

if TYPE_CHECKING:
    from kura.text.filters import CleanConfig

FAMILIES = ("doc_", "boilerplate_", "gopher_", "lang_", "ja_")
RuleFn = Callable[["TextView", "CleanConfig"], "str | None"]
RULES: Registry[RuleFn] = Registry("rule", FAMILIES)


def rule(name: str) -> Callable[[RuleFn], RuleFn]:
    """Register a rule under `name` (which starts with its family prefix); the name is also its default reason."""
    return RULES.register(name)


def unknown_rules(names: list[str]) -> list[str]:
    return RULES.unknown(names)


_SENTENCE_END = ("。", "！", "？", "!", "?", "」", "』", "）", ")", "…", ".", ":", "：")
_EN_SENTENCE = re.compile(r"[a-z]{2,}[.!?](?:\s|$)")
_JA_STOP = re.compile(r"[。！？!?]|[:：]$")  # NFKC has folded ！？ to !?; a line ending in : introduces an example
_BULLETS = ("・", "•", "●", "■", "◆", "-", "*", "※", "→", "▶", "►", "○", "◇", "□")
# list item, numbered heading (1. / 2.3.4 / 第16章 / 図16.213 / (3)) at the start of a line
_LIST_OR_HEADING = re.compile(r"^(?:[・•●■◆*※→▶►○◇□-]|\d+(?:\.\d+)*\.?(?:\s|$)|第[\d一二三四五六七八九十]+[章節部項]|"
                              r"[図表例]\s?\d|[(（\[]\s?\d+\s?[)）\]])")
_CODE_CHARS = re.compile(r"[{}\[\]();=<>\\/#$%&|_`^~@]")
_HIRAGANA = re.compile("[\u3041-\u309f]")
# x = …, \command, a final { } ;, a comment (%% …, ;; …) or an s-expression line ((finger-code …, #(define …)
_CODE_SHAPE = re.compile(r"^[A-Za-z_][\w.:]*\s*[:+-]?=\s|\\[A-Za-z]{2,}|[{};]$|^(?:%|;|//|#?\()")


def _has_hiragana(line: str, n: int = 2) -> bool:
    return len(_HIRAGANA.findall(line)) >= n if n > 1 else _HIRAGANA.search(line) is not None


def is_code_like(line: str) -> bool:
    """A line with many programming symbols (≥ 10%), an assignment, a \\command, a final { } ;, a comment, an
    s-expression or a shell prompt: code, markup or configuration. A line with Japanese prose in it (≥ 4 hiragana)
    is prose that mentions code."""
    if _has_hiragana(line, 4):
        return False
    if line.startswith(("$ ", "# ", "% ", ">>> ", "\\")) or _CODE_SHAPE.search(line):
        return True
    return len(_CODE_CHARS.findall(line)) >= 0.1 * len(line)


@dataclass
class TextView:
    """One normalized document, with everything the rules share computed at most once."""

    text: str
    ad_lines_removed: int = 0
    nonblank_before: int = 0
    _memo: dict = field(default_factory=dict, repr=False)

    @cached_property
    def lines(self) -> list[str]:
        return [ln.strip() for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def language(self) -> tuple[str, float]:
        return detect_language(self.text) if self.text else ("other", 0.0)

    @cached_property
    def scripts(self) -> dict[str, int]:
        return script_counts(self.text)

    @cached_property
    def text_lines(self) -> list[str]:
        """Lines that are neither code nor markup, without the page title's repeat as the first heading (what the
        repetition rules judge: a code sample legitimately repeats `\\relative {`)."""
        lines = [ln for ln in self.lines if not is_code_like(ln)]
        return lines[1:] if len(lines) > 1 and lines[0] in lines[1:] else lines

    def ja_sentences(self, min_chars: int) -> int:
        key = ("ja_sentences", min_chars)
        if key not in self._memo:
            self._memo[key] = sum(len(_JA_STOP.findall(ln)) for ln in self.prose_lines(min_chars)
                                  if _has_hiragana(ln))
        return self._memo[key]

    def english_under_japanese_headings(self, cfg: "CleanConfig") -> bool:
        """An untranslated page of a Japanese manual: Japanese headings, no Japanese sentence, English prose. Its
        content is the English; the Japanese prose rules do not judge it."""
        if self.ja_sentences(cfg.min_prose_line_chars) >= cfg.min_ja_sentences:
            return False
        en = sum(len(_EN_SENTENCE.findall(ln)) for ln in self.prose_lines(cfg.min_prose_line_chars)
                 if not _has_hiragana(ln, 1))
        return en >= cfg.min_mixed_en_sentences

    def prose_lines(self, min_chars: int) -> list[str]:
        key = ("prose", min_chars)
        if key not in self._memo:  # 第3章では…。 is a sentence, 3.1. 概要 not
            self._memo[key] = [ln for ln in self.lines if len(ln) >= min_chars and not is_code_like(ln)
                               and ("。" in ln or not _LIST_OR_HEADING.match(ln))]
        return self._memo[key]


def duplicate_line_fractions(lines: list[str], min_chars: int = 1) -> tuple[float, float]:
    """(share of lines, share of characters) in lines that repeat an earlier line, over lines of ≥ min_chars
    characters (Gopher's dup_line_frac and dup_line_char_frac; short lines such as `}` or 戻る are not evidence)."""
    lines = [ln for ln in lines if len(ln) >= min_chars]
    if len(lines) < 2:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for ln in lines:
        if ln in seen:
            dup += 1
            dup_chars += len(ln)
        seen.add(ln)
    return dup / len(lines), dup_chars / sum(len(ln) for ln in lines)


def duplicate_ngram_char_fraction(text: str, n: int) -> float:
    """Share of characters covered by character n-grams that occur more than once in the text (vectorized: rolling
    hash of every n-gram, repeated hashes found with one np.unique, coverage by a difference array)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
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


# ---- the rules, in their default order ------------------------------------------------------------------------

@rule("doc_empty")
def doc_empty(v: TextView, cfg: "CleanConfig") -> str | None:
    """Nothing left after cleanup (an ad-only page is boilerplate_ads, anything else doc_empty)."""
    if not v.text:
        return "boilerplate_ads" if v.ad_lines_removed else "doc_empty"
    return None


@rule("boilerplate_ads")
def boilerplate_ads(v: TextView, cfg: "CleanConfig") -> str | None:
    frac = v.ad_lines_removed / v.nonblank_before if v.nonblank_before else 0.0
    return "boilerplate_ads" if frac > cfg.max_boilerplate_line_fraction else None


@rule("doc_too_short")
def doc_too_short(v: TextView, cfg: "CleanConfig") -> str | None:
    return "doc_too_short" if len(v.text) < cfg.min_chars else None


@rule("gopher_dup_lines")
def gopher_dup_lines(v: TextView, cfg: "CleanConfig") -> str | None:
    """Repeated text lines (TextView.text_lines; list items are left out too: a reference page repeats
    `• word-space`); pages of fewer than min_dup_rule_lines counted lines are too short to judge."""
    lines = [ln for ln in v.text_lines if not _LIST_OR_HEADING.match(ln)]
    if len([ln for ln in lines if len(ln) >= cfg.min_dup_line_chars]) < cfg.min_dup_rule_lines:
        return None
    frac, chars = duplicate_line_fractions(lines, cfg.min_dup_line_chars)
    bad = frac > cfg.max_duplicate_line_fraction or chars > cfg.max_duplicate_line_char_fraction
    return "gopher_dup_lines" if bad else None


@rule("gopher_dup_ngrams")
def gopher_dup_ngrams(v: TextView, cfg: "CleanConfig") -> str | None:
    """Repeated character n-grams over the text lines without list items and numbered headings (code samples that
    show one score growing step by step, and tables of contents, are not spam)."""
    text = "\n".join(ln for ln in v.text_lines if not _LIST_OR_HEADING.match(ln))  # a table of contents repeats
    frac = duplicate_ngram_char_fraction(text, cfg.duplicate_ngram_chars)           # the numbered headings
    return "gopher_dup_ngrams" if frac > cfg.max_duplicate_ngram_char_fraction else None


@rule("doc_replacement_chars")
def doc_replacement_chars(v: TextView, cfg: "CleanConfig") -> str | None:
    return "doc_replacement_chars" if v.text.count("\ufffd") / len(v.text) > cfg.max_replacement_char_fraction \
        else None


@rule("lang_not_kept")
def lang_not_kept(v: TextView, cfg: "CleanConfig") -> str | None:
    lang = v.language[0]
    return f"lang_{lang}" if lang not in cfg.languages else None


@rule("gopher_bullet_lines")
def gopher_bullet_lines(v: TextView, cfg: "CleanConfig") -> str | None:
    share = sum(ln.startswith(_BULLETS) for ln in v.lines) / len(v.lines) if v.lines else 0.0
    return "gopher_bullet_lines" if share > cfg.max_bullet_line_fraction else None


@rule("ja_low_hiragana")
def ja_low_hiragana(v: TextView, cfg: "CleanConfig") -> str | None:
    """Swallow v1: hiragana among the Japanese letters (kana + kanji; Latin letters of code or English do not count)
    of the prose lines (the whole text when there are none).
    Running Japanese prose is 30–50% hiragana; keyword spam and kanji/katakana lists have almost none."""
    if v.language[0] != "ja" or v.english_under_japanese_headings(cfg):
        return None
    prose = v.prose_lines(cfg.min_prose_line_chars)  # headings (設定ファイルの書式) are kanji/katakana-heavy
    c = script_counts("\n".join(prose)) if prose else v.scripts
    ja = c["hiragana"] + c["katakana"] + c["kanji"]
    return "ja_low_hiragana" if ja and c["hiragana"] / ja < cfg.min_hiragana_fraction else None


@rule("ja_no_sentences")
def ja_no_sentences(v: TextView, cfg: "CleanConfig") -> str | None:
    """A Japanese page with fewer than min_ja_sentences Japanese sentences (。!? or a final : on prose lines with
    hiragana): menus, tag clouds, tables of contents, link lists, empty section pages, untranslated pages."""
    if v.language[0] != "ja":
        return None
    if v.english_under_japanese_headings(cfg):
        return None
    n = v.ja_sentences(cfg.min_prose_line_chars)
    return "ja_no_sentences" if n < cfg.min_ja_sentences else None


@rule("ja_few_sentence_ends")
def ja_few_sentence_ends(v: TextView, cfg: "CleanConfig") -> str | None:
    """Among Japanese prose lines (with hiragana), the share that ends like a sentence or holds a 。 (layout wraps
    lines after a sentence); headings, list items, code and table rows are not prose lines and are not counted.
    Titles of linked articles and keyword lines fail it."""
    if v.language[0] != "ja" or v.english_under_japanese_headings(cfg):
        return None
    prose = [ln for ln in v.prose_lines(cfg.min_prose_line_chars) if _has_hiragana(ln)]
    if len(prose) < cfg.min_sentence_rule_lines:
        return None  # too few lines to judge a share; ja_no_sentences decides pages without sentences
    ends = sum(ln.endswith(_SENTENCE_END) or "。" in ln for ln in prose) / len(prose)  # layout may wrap after 。
    return "ja_few_sentence_ends" if ends < cfg.min_sentence_end_fraction else None


DEFAULT_RULES = ["doc_empty", "boilerplate_ads", "doc_too_short", "gopher_dup_lines", "gopher_dup_ngrams",
                 "doc_replacement_chars", "lang_not_kept", "gopher_bullet_lines", "ja_no_sentences",
                 "ja_low_hiragana", "ja_few_sentence_ends"]
