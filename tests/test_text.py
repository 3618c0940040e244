"""Level 1: normalization, language id, rule filters, exact dedup, the GX suite."""
from __future__ import annotations

import pandas as pd

from kura.dedup.exact import dedup_key
from kura.dedup.incremental import DedupState, dedup_shard
from kura.dedup.minhash import MinHashConfig, MinHasher
from kura.quality.expectations import validate_documents
from kura.text.filters import CleanConfig, clean_documents, strip_ad_lines
from kura.text.normalize import detect_language, normalize_text

JA = "今日は東京で歴史について学びました。多くの人が鉄道に興味を持っていますが、その文化はあまり知られていません。"
EN = "Yesterday my neighbour studied the history of railways in Osaka. It is an interesting tradition."


def test_normalize_nfkc_whitespace_and_mojibake():
    text, _ = normalize_text("ＡＢＣ１２３　ｶﾀｶﾅ  \n\n\n\n次の\x00段落\x07")
    assert text == "ABC123 カタカナ\n\n次の段落"
    broken = JA.encode("utf-8").decode("cp1252", errors="ignore")
    fixed, repaired = normalize_text("schÃ¶n")
    assert fixed == "schön" and repaired
    assert detect_language(broken)[0] != "ja"


def test_language_id():
    assert detect_language(JA)[0] == "ja"
    assert detect_language(EN)[0] == "en"
    assert detect_language(JA + " Tokyo station")[0] == "ja"
    assert detect_language("Ceci est une phrase en français, évidemment très élégante.")[0] == "other"
    assert detect_language("这是一个关于历史和文化的中文句子，没有日文假名。")[0] == "other", "kanji without kana"
    assert detect_language("12345 !!!")[0] == "other"
    lang, score = detect_language(EN)
    assert lang == "en" and 0.5 < score <= 1.0


def test_ad_lines_removed_and_counted():
    text, removed, nonblank = strip_ad_lines(f"{JA}\n送料無料！今すぐクリック\n{EN}", ["送料無料"])
    assert removed == 1 and nonblank == 3 and "送料無料" not in text


def test_filters_give_reasons_and_account_for_everything():
    docs = [JA, EN, "短い", "", "送料無料\nカートに入れる\n今すぐ購入", "x" * 30000,
            "\n".join([JA] * 6), JA[:20] + "\ufffd" * 5 + JA]
    res = clean_documents([{"doc_id": str(i), "text": t, "source": "s"} for i, t in enumerate(docs)], CleanConfig())
    assert [d["doc_id"] for d in res.kept] == ["0", "1"]
    assert {r["doc_id"]: r["reason"] for r in res.rejected} == {
        "2": "doc_too_short", "3": "doc_empty", "4": "boilerplate_ads", "5": "gopher_dup_ngrams",
        "6": "gopher_dup_lines", "7": "doc_replacement_chars"}
    assert sum(res.drops.values()) + len(res.kept) == len(docs)


def test_clean_config_rejects_contradictions():
    import pytest

    with pytest.raises(ValueError, match="must be in"):
        CleanConfig(min_hiragana_fraction=1.5)
    with pytest.raises(ValueError, match="unknown rule.*no_such_rule"):
        CleanConfig(rules=["doc_empty", "no_such_rule"])


def test_exact_dedup_across_shards_first_copy_wins():
    a = [{"doc_id": "a1", "text": "Hello, world"}, {"doc_id": "a2", "text": "unique"}]
    b = [{"doc_id": "b1", "text": "hello  world!"}, {"doc_id": "b2", "text": "Hello, world"}]
    state, h = DedupState(MinHashConfig(), near=False), MinHasher(MinHashConfig())
    kept = {name: dedup_shard(state, h, rows)[0] for name, rows in (("a", a), ("b", b))}
    dups = [{**r, "duplicate_of": state.exact.seen[dedup_key(r["text"])]} for r in b]
    assert [r["doc_id"] for r in kept["a"]] == ["a1", "a2"] and kept["b"] == []
    assert {d["doc_id"]: d["duplicate_of"] for d in dups} == {"b1": "a1", "b2": "a1"}
    assert dedup_key("ＨＥＬＬＯ world") == dedup_key("hello world")


def test_gx_suite_passes_clean_and_fails_bad_shards():
    good = pd.DataFrame([{"doc_id": "1", "source": "s", "text": JA, "lang": "ja", "lang_score": 1.0,
                          "n_chars": len(JA)}])
    assert validate_documents(good, min_chars=10, max_chars=1000, languages=["ja"]).success
    bad = pd.concat([good, good.assign(text="壊れ\ufffd", lang="xx")])
    r = validate_documents(bad, min_chars=10, max_chars=1000, languages=["ja"])
    assert not r.success
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_be_in_set",
            "expect_column_values_to_not_match_regex"} <= set(r.failed)


def test_japanese_aware_rules():
    from kura.text.filters import is_navigation_line

    assert is_navigation_line("ホーム | 戻る | 次へ") and is_navigation_line("Home › News › 2024")
    assert not is_navigation_line("東京 | 大阪の歴史について長い説明をする文です。これは本文。")
    docs = [
        JA,                                                              # prose: kept
        "東京ホテル 格安予約 キャンペーン セール ランキング 口コミ 人気 ベスト 最安値 比較 今すぐ予約できます。",  # spam
        "\n".join(["東京の歴史と文化について", "大阪の食べ物と料理の話題", "京都の寺と神社の写真集",
                   "名古屋の鉄道と駅の案内", "福岡の祭りと季節の行事"]),  # headings, no sentences
        "\n".join(f"・項目{i}の説明です。" for i in range(12)),                  # bullets
        "ホーム | 戻る | 次へ\n" + JA,                                        # nav line removed, kept
    ]
    res = clean_documents([{"doc_id": str(i), "text": t, "source": "s"} for i, t in enumerate(docs)], CleanConfig())
    assert {r["doc_id"]: r["reason"] for r in res.rejected} == {
        "1": "ja_low_hiragana", "2": "ja_no_sentences", "3": "gopher_bullet_lines"}
    assert [d["text"] for d in res.kept] == [JA, JA] and res.stats["navigation_lines_removed"] == 1


def test_quality_classifier_learns_good_from_bad_and_round_trips(tmp_path):
    import numpy as np

    from kura.corpus.default import DefaultCorpusConfig, generate_labelled
    from kura.text.quality_model import QualityClassifier, QualityModelConfig, auc

    L = generate_labelled(DefaultCorpusConfig(n_docs=1500, seed=5))
    good = [t for t, lab in L if lab["kind"] == "clean"]
    bad = [t for t, lab in L if lab["kind"] in ("ads", "mojibake", "short") and t.strip()]
    cfg = QualityModelConfig(n_features=1 << 16)
    m = QualityClassifier.train(good[::2], bad[::2], cfg)
    s = m.scores(good[1::2] + bad[1::2])
    y = np.r_[np.ones(len(good[1::2])), np.zeros(len(bad[1::2]))]
    assert auc(s, y) > 0.9
    m.save(tmp_path)
    assert np.allclose(QualityClassifier.load(tmp_path).scores(good[:5]), m.scores(good[:5]))
    import pytest

    with pytest.raises(ValueError, match="both positive and negative"):
        QualityClassifier.train(good, [], cfg)


def test_char_ngram_lm_prefers_text_like_its_reference_and_round_trips(tmp_path):
    import random

    import numpy as np

    from kura.corpus.default import DefaultCorpusConfig, generate_labelled
    from kura.text.ngram_lm import CharNgramLM, NgramLMConfig

    clean = [t for t, lab in generate_labelled(DefaultCorpusConfig(seed=3, n_docs=600)) if lab["kind"] == "clean"]
    train, held = clean[: len(clean) // 2], clean[len(clean) // 2:]
    lm = CharNgramLM.train(train, NgramLMConfig(order=4, n_buckets=1 << 16))
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(t, len(t))) for t in held[:30]]
    p_held, p_shuf = np.median(lm.perplexities(held[:30])), np.median(lm.perplexities(shuffled))
    assert 1.0 < p_held < p_shuf / 5, (p_held, p_shuf)
    assert np.all(np.exp(lm.logprobs(held[0])) <= 1.0)
    assert lm.perplexity("") == float("inf")
    lm.save(tmp_path)
    assert np.allclose(CharNgramLM.load(tmp_path).perplexities(held[:5]), lm.perplexities(held[:5]))


def test_repeated_ngram_rule_and_length_alone_never_drops():
    from kura.text.filters import CleanConfig, clean_documents, duplicate_ngram_char_fraction

    spam = "本日限りの特別価格でご提供いたしますので、ぜひこの機会にお買い求めください。在庫に限りがあります。" * 4
    assert duplicate_ngram_char_fraction(spam, 50) > 0.9
    assert duplicate_ngram_char_fraction("一二三四五六七八九十" * 2, 50) == 0.0
    prose = "東京の歴史について学びました。" + "".join(f"第{i}章では{i * 7}年の出来事を扱います。" for i in range(12))
    assert duplicate_ngram_char_fraction(prose, 50) == 0.0
    long_prose = "\n\n".join(f"第{i}章では{i * 7}年の出来事と、その時代の人々の暮らしについて詳しく述べます。" for i in range(6000))
    docs = [{"doc_id": "a", "source": "s", "text": spam}, {"doc_id": "b", "source": "s", "text": "あ" * 300_000},
            {"doc_id": "c", "source": "s", "text": long_prose}]
    res = clean_documents(docs, CleanConfig())
    assert dict(res.drops) == {"gopher_dup_ngrams": 2}
    assert [d["doc_id"] for d in res.kept] == ["c"] and res.kept[0]["n_chars"] > 200_000  # long, kept whole
