"""Level 1: the cleaning rules one by one (kura.text.rules), profiles as rule lists, and real Japanese pages."""
from __future__ import annotations

from pathlib import Path

import pytest

from kura.text import rules
from kura.text.filters import CleanConfig, clean_documents, is_navigation_line

JA = "今日は東京で歴史について学びました。多くの人が鉄道に興味を持っていますが、その文化はあまり知られていません。"
REAL = Path(__file__).parent / "data" / "real_ja"

# (rule, a document it drops, a document it keeps): every registered rule has its own case
CASES = {
    "doc_empty": ("   \n\n", JA),
    "boilerplate_ads": ("送料無料\nカートに入れる\n今すぐ購入\n" + JA[:20], JA + "\n送料無料"),
    "doc_too_short": ("短い文です。", JA),
    "gopher_dup_lines": ("\n".join([JA] * 6), "\n".join(f"{JA[:30]}第{i}の段落です。" for i in range(6))),
    "gopher_dup_ngrams": ("本日限りの特別価格でご提供いたしますので、ぜひこの機会にお買い求めください。" * 4, JA * 1),
    "doc_replacement_chars": (JA + "\ufffd", JA),
    "lang_not_kept": ("这是一个关于历史和文化的中文句子，没有日文假名，所以它不是日本语的文章。", JA),
    "gopher_bullet_lines": ("\n".join(f"・項目{i}の説明です。" for i in range(12)), JA),
    "ja_no_sentences": ("\n".join(["東京の歴史と文化について", "大阪の食べ物と料理の話題", "京都の寺と神社の写真集"]), JA),
    "ja_low_hiragana": ("東京ホテル 格安予約 キャンペーン セール ランキング 口コミ 人気 最安値 比較 今すぐ予約できます。", JA),
    "ja_few_sentence_ends": ("\n".join([JA] + [f"東京の歴史と文化についてのまとめ記事その{i}を読む" for i in range(12)]),
                             "\n".join([JA] + [f"東京の歴史と文化についての記事その{i}を読みました。" for i in range(12)])),
}


def _reason(text: str, cfg: CleanConfig) -> str | None:
    res = clean_documents([{"doc_id": "d", "source": "s", "text": text}], cfg)
    return res.rejected[0]["reason"] if res.rejected else None


def test_every_registered_rule_has_a_case():
    assert set(CASES) == set(rules.RULES)
    assert all(name.startswith(rules.FAMILIES) for name in rules.RULES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_drops_its_case_and_keeps_prose(name):
    bad, good = CASES[name]
    only = CleanConfig(rules=[name])
    reason = _reason(bad, only)
    assert reason == {"lang_not_kept": "lang_other"}.get(name, name), (name, reason)
    assert _reason(good, only) is None
    assert _reason(good, CleanConfig()) is None, "the good case passes the whole default profile"


def test_profile_is_an_ordered_list_and_unknown_rules_are_refused():
    spam = "\n".join([JA] * 6)
    assert _reason(spam, CleanConfig()) == "gopher_dup_lines"
    assert _reason(spam, CleanConfig(rules=[r for r in rules.DEFAULT_RULES if r != "gopher_dup_lines"])) \
        == "gopher_dup_ngrams"
    with pytest.raises(ValueError, match="unknown rule"):
        CleanConfig(rules=["ja_nonexistent"])
    with pytest.raises(ValueError, match="family"):
        rules.rule("nofamily")


def test_a_new_rule_is_one_function():
    @rules.rule("doc_mentions_lorem")
    def lorem(v, cfg):
        return "doc_mentions_lorem" if "lorem ipsum" in v.text.lower() else None

    try:
        cfg = CleanConfig(rules=[*rules.DEFAULT_RULES, "doc_mentions_lorem"])
        assert _reason(JA + " Lorem ipsum dolor sit amet.", cfg) == "doc_mentions_lorem"
        assert _reason(JA, cfg) is None
    finally:
        rules.RULES.pop("doc_mentions_lorem", None)


def test_navigation_lines_of_real_manuals():
    assert is_navigation_line("戻る \t\t aptitude のカスタマイズ\t\t 次へ")
    assert is_navigation_line("[ << テンプレート ]\t\t[トップ][目次][インデックス]\t\t[ GNU Free Documentation License >> ]")
    assert is_navigation_line("[トップ][目次][インデックス]")
    assert not is_navigation_line("[image of music]")
    assert not is_navigation_line("設定ファイルの書式\tこのファイルの各行は、オプションという形式になっているべきです。")


def test_japanese_rules_skip_headings_code_and_lists():
    page = "\n".join(["5.26. スクロールバーの表示", "図17.421 ブレンドフィルターの使用例", JA,
                      "\\set ContextName.propertyName = #value", "fn main() {", "    println!(\"{}\", x);", "}",
                      "  • 画像ウィンドウのメニューより 表示スクロールバーの表示", "5.26.1. コマンドの呼び出し方", JA[:40] + "。"])
    assert _reason(page, CleanConfig()) is None


def test_real_japanese_pages_are_kept_and_a_table_of_contents_is_not():
    from kura.corpus.readers import Document, read_corpus_file

    got = {}
    for p in sorted(REAL.glob("*.html")):
        docs = [d for d in read_corpus_file(p, p.name) if isinstance(d, Document)]
        assert len(docs) == 1
        got[p.name] = _reason(docs[0].text, CleanConfig())
    assert got.pop("rbe-toc.html") == "ja_no_sentences"
    assert got and all(r is None for r in got.values()), got


def test_drop_review_counts_every_reason_and_samples_reproducibly():
    from kura.text.drops import format_review, review_drops

    shards = [(f"shard-{s}", [{"doc_id": f"{s}:{i}", "source": "f", "text": f"text {i}",
                              "reason": ["ja_no_sentences", "ja_low_hiragana", "doc_empty"][i % 3]}
                             for i in range(300)]) for s in range(3)]
    r = review_drops(iter(shards), "ja_", sample=5, seed=1)
    assert dict(r.counts) == {"ja_no_sentences": 300, "ja_low_hiragana": 300} and r.partitions == 3
    assert all(len(v) == 5 for v in r.samples.values())
    again = review_drops(iter(shards), "ja_", sample=5, seed=1)
    assert [s.doc_id for s in again.samples["ja_no_sentences"]] == [s.doc_id for s in r.samples["ja_no_sentences"]]
    assert {s.partition for s in r.samples["ja_no_sentences"]} != {"shard-0"}, "samples come from every shard"
    assert "== ja_no_sentences: 300 dropped, 5 shown" in format_review(r)
    assert dict(review_drops(iter(shards), "doc_empty").counts) == {"doc_empty": 300}


def test_an_untranslated_page_of_a_japanese_manual_is_judged_by_its_english():
    headings = ["8.52. 色立体分析...", "8.52.1. 概観", "「色立体分析」フィルターの使用例", "色立体分析フィルター適用後"]
    english = ["This command displays info about your image. It counts the number of unique colors in your image.",
               "Besides that it shows what the predominant color usage is from the lighter to the darker areas."]
    assert _reason("\n".join(headings + english), CleanConfig()) is None
    assert _reason("\n".join(headings + english[:1]), CleanConfig()) == "ja_no_sentences", "a stub of two sentences"
