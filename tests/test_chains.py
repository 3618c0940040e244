"""Level 1: the multi-call recipes (chain, conversation, translate, similar problems) through generate_shard with a
scripted generator — the bookkeeping of rounds, the request log's resume at the call a run died in, quarantine with
the call that failed — and their specs refused with file and field. Level 2 (a real vLLM teacher) is in
test_synth.py."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from kura.synth.chains import (ChainRecipe, ConversationRecipe, SimilarProblemsRecipe, TranslateRecipe,
                               char_jaccard, japanese_share)
from kura.synth.checks import OutputChecks
from kura.synth.generators import GenerationResult, Generator, SamplingConfig
from kura.synth.requestlog import RequestLog
from kura.synth.shard import generate_shard

# the record checks that look at content across records are exercised in test_synth; here: the calls
LIGHT = OutputChecks(checks=["truncated", "refusal"])


class Scripted(Generator):
    """A stand-in teacher that answers by what the prompt asks (deterministic, so the bookkeeping is testable);
    `die_after` raises after that many requests, like a server that went away mid-shard."""

    name = "scripted"

    def __init__(self, answer, die_after: int | None = None):
        self.answer, self.die_after, self.requests = answer, die_after, 0

    def generate(self, prompts, sampling):
        if self.die_after is not None and self.requests + len(prompts) > self.die_after:
            raise ConnectionError("teacher went away")
        self.requests += len(prompts)
        return GenerationResult([self.answer(p) for p in prompts], 10 * len(prompts), 20 * len(prompts), 0.1,
                                "scripted")


def chain_teacher(p: str) -> str:
    if "問題を一つ作って" in p:
        topic, aspect = re.search(r"話題: (.+)（観点: (.+)）", p).groups()
        return f"問題: {topic}の{aspect}について、何がいちばん大切ですか？"
    if "対話調" in p:
        problem = re.search(r"問題: (.+)", p).group(1)
        return f"回答: いい質問ですね。「{problem}」なら、まず基本から考えてみましょう。"
    if "追加の質問" in p:
        return "質問: " + ("それは家でも試せますか？" if "歴史" not in p else "歴史の本を一冊挙げると")
    if "レポート形式" in p:
        q = re.search(r"質問: (.+)", p).group(1)
        return f"# {q}\n- 要点を三つにまとめます\n- 身近な例で確かめます"
    raise AssertionError(p)


def test_chain_feeds_each_output_into_the_next_call_and_resumes_at_the_call_it_died_in(tmp_path):
    recipe = ChainRecipe(topics=["鉄道", "料理", "歴史"], aspects=["仕組み", "例"])
    src = recipe.sources([], 6, 0, "2026-11-01")
    assert len({(s["text"], s["aspect"]) for s in src}) == 6, "each record gets a (topic, aspect) pair of its own"
    log = RequestLog(tmp_path / "log.jsonl")
    with pytest.raises(ConnectionError):  # dies in round 2 (after 6 + 6 + 2 requests)
        generate_shard(src, recipe, Scripted(chain_teacher, die_after=14), SamplingConfig(), "d", log=log,
                       checks=LIGHT, batch_size=2)
    assert len(RequestLog(tmp_path / "log.jsonl").done) == 14
    teacher = Scripted(chain_teacher)
    res = generate_shard(src, recipe, teacher, SamplingConfig(), "d", log=RequestLog(tmp_path / "log.jsonl"),
                         checks=LIGHT, batch_size=2)
    assert (res.resumed, res.generated, teacher.requests) == (14, 10, 10), "only the calls not in the log are sent"
    # the history-topic records ask a follow-up that is no question: dropped, counted, the rest kept
    hist = sum(s["text"] == "歴史" for s in src)
    assert len(res.kept) == 6 - hist and dict(res.reasons) == {"not_a_question": hist}
    rec = res.kept[0]
    turns = json.loads(rec["turns"])
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["content"] in turns[1]["content"], "the answer call saw the problem call's output"
    assert turns[3]["content"].startswith("# " + turns[2]["content"]), "the report call saw the follow-up"
    calls = json.loads(rec["meta"])["calls"]
    assert len(calls) == 4 and calls[0]["prompt"] == rec["prompt"] and calls[3]["completion"] == rec["completion"]
    assert not turns[0]["content"].startswith("問題:"), "the label the teacher repeated is stripped"
    again = generate_shard(src, recipe, Scripted(chain_teacher, die_after=0), SamplingConfig(), "d",
                           log=RequestLog(tmp_path / "log.jsonl"), checks=LIGHT)
    assert [r["turns"] for r in again.kept] == [r["turns"] for r in res.kept], "a finished shard rebuilds from the log"


def test_a_call_that_fails_ends_its_record_with_the_call_named_and_takes_no_more_calls():
    def flaky(p):
        return "" if "追加の質問" in p and "料理" in p else chain_teacher(p)

    recipe = ChainRecipe(topics=["鉄道", "料理"], aspects=["仕組み"], report_call=None)
    teacher = Scripted(flaky)
    res = generate_shard(recipe.sources([], 2, 0, "d"), recipe, teacher, SamplingConfig(), "d", checks=LIGHT)
    assert teacher.requests == 4 + 3, "the failed record took no report call"
    [bad] = res.rejected
    assert bad["reason"] == "unparseable: call 2 (followup): empty output" and len(res.kept) == 1
    assert len(res.kept) + len(res.rejected) == 2

    def long(p):  # stopped at max_tokens before the last call: the next prompt would carry a cut text
        return chain_teacher(p)

    class Truncating(Scripted):
        def generate(self, prompts, sampling):
            r = super().generate(prompts, sampling)
            r.finish_reasons = ["length" if "対話調" in p else "stop" for p in prompts]
            return r

    res = generate_shard(recipe.sources([], 2, 0, "d"), recipe, Truncating(long), SamplingConfig(), "d",
                         checks=LIGHT)
    assert {r["reason"].split(": ", 1)[1] for r in res.rejected} == {
        "call 1 (answer): stopped at max_tokens; the next call would build on a cut output"}


def test_conversation_teacher_plays_both_sides_and_keeps_only_its_own_turn():
    def both_sides(p):
        n = p.count("ユーザー:") + p.count("アシスタント:")
        if p.rstrip().endswith("ユーザー:"):
            return f"質問その{n}です、{p[-30:-6]}について教えて\nアシスタント: (the teacher kept going)"
        return f"お答えします。その{n}として、順番に説明しますね。\nユーザー: ありがとう"

    recipe = ConversationRecipe(turns=3)
    src = recipe.sources([], 4, 0, "d")
    teacher = Scripted(both_sides)
    res = generate_shard(src, recipe, teacher, SamplingConfig(), "d", checks=LIGHT)
    assert teacher.requests == 4 * 6 and len(res.kept) == 4
    turns = json.loads(res.kept[0]["turns"])
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert not any("ユーザー:" in t["content"] or "アシスタント:" in t["content"] for t in turns)
    calls = json.loads(res.kept[0]["meta"])["calls"]
    assert turns[0]["content"] in calls[1]["prompt"] and turns[1]["content"] in calls[2]["prompt"]
    assert src[0]["aspect"] in calls[0]["prompt"], "the simulated user has the persona of its record"
    same = [{"role": "user", "content": "同じ"}, {"role": "assistant", "content": "はい"},
            {"role": "user", "content": "同じ"}, {"role": "assistant", "content": "はい、そうです"}]
    assert recipe.validate(same) == (False, "repeated_turn")


def test_translate_keeps_both_sides_and_drops_untranslated_output(tmp_path):
    src = tmp_path / "dolly_en.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Name three rivers in Japan.", "input": "", "output": "Shinano, Tone and Ishikari."},
        {"instruction": "Summarize the text.", "input": "Tokyo is the capital of Japan.",
         "output": "Tokyo is Japan's capital."},
        {"messages": [{"role": "user", "content": "What is sushi?"},
                      {"role": "assistant", "content": "A Japanese dish of vinegared rice."}]},
    ]) + "\n")
    ja = {"Name three rivers in Japan.": "日本の川を三つ挙げてください。", "Shinano, Tone and Ishikari.": "信濃川、利根川、石狩川です。",
          "Summarize the text.": "文章を要約してください。", "Tokyo is the capital of Japan.": "東京は日本の首都です。",
          "Tokyo is Japan's capital.": "東京は日本の首都。", "What is sushi?": "寿司とは何ですか。",
          "A Japanese dish of vinegared rice.": "A Japanese dish of vinegared rice."}  # the last one not translated

    def translator(p):
        return "訳文: " + ja[re.search(r"英文: (.+)\n訳文:", p).group(1)]

    recipe = TranslateRecipe(path=str(src))
    picked = recipe.sources([], 10, 0, "d")
    res = generate_shard(picked, recipe, Scripted(translator), SamplingConfig(), "d", checks=LIGHT)
    assert len(res.kept) == 2 and dict(res.reasons) == {"not_japanese": 1}
    by_src = {r["source_doc_id"]: r for r in res.kept}
    two = by_src["en:2"]
    assert json.loads(two["turns"]) == [{"role": "user", "content": "文章を要約してください。\n\n東京は日本の首都です。"},
                                        {"role": "assistant", "content": "東京は日本の首都。"}]
    meta = json.loads(two["meta"])
    assert meta["source_lang"] == "en" and meta["original"]["input"] == "Tokyo is the capital of Japan."
    assert len(meta["calls"]) == 3 and two["lang"] == "ja"
    assert japanese_share("東京は日本の首都です。") == 1.0 and japanese_share("Tokyo") == 0.0
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not an instruction record"):
        TranslateRecipe(path=str(tmp_path / "bad.jsonl")).sources([], 1, 0, "d")


def test_similar_problems_drop_copies_and_drift_and_need_a_worked_answer():
    seed = "りんごが12個あります。3人で同じ数ずつ分けると一人何個ですか。"

    def teacher(p):
        if "類題を一つ" in p:
            v = re.search(r"、(.+)を変えた", p).group(1)
            return {"数値": "類題: りんごが20個あります。4人で同じ数ずつ分けると一人何個ですか。",
                    "問い方": seed, "場面": "今日は晴れです。"}[v]
        return "20÷4=5なので、一人5個です。\n答え: 5"

    recipe = SimilarProblemsRecipe(seed_questions=[seed], variations=["数値", "問い方", "場面"])
    res = generate_shard(recipe.sources([], 3, 0, "d"), recipe, Scripted(teacher), SamplingConfig(), "d",
                         checks=LIGHT)
    assert dict(res.reasons) == {"copies_seed": 1, "off_topic": 1} and len(res.kept) == 1
    turns = json.loads(res.kept[0]["turns"])
    assert turns[0]["content"].startswith("りんごが20個") and "答え: 5" in turns[1]["content"]
    assert json.loads(res.kept[0]["meta"])["seed_question"] == seed
    assert 0.05 < char_jaccard(seed, turns[0]["content"]) < 0.8
    no_answer = generate_shard(recipe.sources([], 1, 0, "d"), recipe, Scripted(lambda p: "わかりません。"),
                               SamplingConfig(), "d", checks=LIGHT)
    assert no_answer.rejected[0]["reason"] == "unparseable: call 1 (answer): no 答え: line"


def test_bad_chain_specs_are_refused_with_file_and_field(tmp_path):
    from kura.synth.spec import SpecError, load_datasets, load_teachers

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "demo.yaml").write_text("kind: trained\n")
    teachers = load_teachers(tmp_path / "t")
    cases = {
        "unknown_ref": ({"calls": [{"name": "q", "role": "user", "template": "{topic}"},
                                   {"name": "a", "role": "assistant", "template": "{question}"}]},
                        r"params\.calls: .*calls\[1\] \(a\): template refers to \['question'\]"),
        "roles": ({"calls": [{"name": "q", "role": "user", "template": "{topic}"},
                             {"name": "q2", "role": "user", "template": "{q}"}], "report_call": None},
                  "roles must alternate"),
        "report": ({"report_call": "summary"}, "report_call: 'summary' is not one of the calls"),
    }
    for name, (params, msg) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / f"{name}.yaml").write_text(yaml.safe_dump({"recipe": "chain", "teacher": "demo", "params": params}))
        with pytest.raises(SpecError, match=msg) as e:
            load_datasets(d, teachers)
        assert f"{name}.yaml" in str(e.value)
