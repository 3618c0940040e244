"""Evaluation: task scoring and format compliance, judge parsing and retries, Bradley–Terry recovery, contamination
(planted, at the function and the asset level), evaluation data from S3, and judge + candidate through real vLLM
OpenAI-compatible servers."""
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from kura.eval import arena, contamination, judge, tasks

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ("user: ", "assistant: ", "\n")


# ----------------------------------------------------------------------------------------------- tasks

def _items():
    return tasks.load_task_dir({f.name: f.read_text() for f in (ROOT / "pipelines" / "evals" / "tasks").iterdir()})


def test_shipped_tasks_load():
    t = _items()
    assert set(t) == {"ja_choice", "arithmetic", "ja_reading"} and all(len(v) >= 5 for v in t.values())


@pytest.mark.parametrize("line,message", [
    ("not json", "t.jsonl:1: not JSON"),
    ('{"instruction": "x", "output": "1"}', "missing metric"),
    ('{"instruction": "x", "output": "1", "metric": "bleu"}', "metric 'bleu'"),
    ('{"instruction": "x", "output": "5", "metric": "choice", "choices": ["a", "b"]}', "index of the right choice"),
])
def test_bad_task_files_name_file_and_line(line, message):
    with pytest.raises(tasks.TaskFileError, match=message):
        tasks.load_task_dir({"t.jsonl": line})


def test_score_format_and_lenient_are_separate():
    """Tanuki's failure: the right answer in free text gets 0 strict, counts as non-compliant, but lenient 1."""
    item = tasks.TaskItem("c", 0, "番号で答えてください。", "首都は?", "1", "choice", ["大阪", "東京", "京都"])
    assert tasks.score_item(item, "1") == {"answer": "1", "score": 1.0, "compliant": True, "lenient": 1.0}
    free = tasks.score_item(item, "正解は東京です。")
    assert free["score"] == 0.0 and not free["compliant"] and free["lenient"] == 1.0
    wrong = tasks.score_item(item, "2")
    assert wrong["score"] == 0.0 and wrong["compliant"] and wrong["lenient"] == 0.0
    em = tasks.TaskItem("a", 0, "計算", "2+3", "5", "exact_match")
    assert tasks.score_item(em, " 5。\nおわり")["score"] == 1.0
    assert tasks.score_item(em, "答えは5になると思います、なぜなら二足す三は五だからです。長い説明が続きます。")["lenient"] == 1.0
    f1 = tasks.TaskItem("r", 0, "", "", "第二会議室", "char_f1")
    assert tasks.score_item(f1, "第二会議室")["score"] == 1.0 and 0 < tasks.score_item(f1, "会議室")["score"] < 1


def test_run_tasks_summarizes_per_task():
    t = _items()
    answers = {it.instruction + it.input: it.output for items in t.values() for it in items}

    def perfect(prompts):  # an oracle that answers in the required format
        out = []
        for p in prompts:
            it = next(it for items in t.values() for it in items if tasks.render(it, *PLAIN) == p)
            out.append(it.output)
        return out

    res = tasks.run_tasks(t, perfect, *PLAIN)
    assert res["overall"] == {"items": sum(len(v) for v in t.values()), "score": 1.0, "format_compliance": 1.0,
                              "lenient_score": 1.0}
    assert answers and len(res["records"]) == res["overall"]["items"]


# ----------------------------------------------------------------------------------------------- judge

def _text(conv):  # what a judge conversation says (system + user turns)
    return "\n".join(m["content"] for m in conv)


def test_judge_parsing_and_retries_are_counted():
    qs = [judge.Question("q1", "math", ["1+1?", "then 2+2?"], ["2", "4"]), judge.Question("q2", "writing", ["a poem"])]
    answers = {"q1": ["2", "4"], "q2": ["roses"]}
    calls, seen = [], []

    def fake_judge(convs, attempt):  # a scripted judge: first q1/turn-2 reply has no grade
        calls.append((len(convs), attempt))
        seen.extend(convs)
        out = []
        for c in convs:
            if "then 2+2?" in _text(c) and attempt == 0:
                out.append("good answer but I forgot the format")
            else:
                out.append(f"reason... 評価: [[{7 if 'poem' in _text(c) else 9}]]")
        return out

    res = judge.grade(qs, answers, fake_judge, max_retries=2)
    assert calls == [(3, 0), (1, 1)], "only the unparsed reply is re-asked"
    assert res["graded"] == 3 and res["parse_failures"] == 0 and res["retries"] == 1
    assert res["per_category"] == {"math": 9.0, "writing": 7.0}
    assert res["per_turn"] == {"1": 8.0, "2": 9.0}
    assert res["category_table"][0] == {"category": "math", "turn_1": 9.0, "turn_2": 9.0, "score": 9.0, "graded": 2}
    assert res["judge_prompt_version"] == judge.JUDGE_PROMPT_VERSION
    # FastChat's four single-answer prompts: math is graded against the reference, turn 2 sees both turns
    assert [r["judge_prompt"] for r in res["records"]] == ["single-math-v1", "single-math-v1-multi-turn",
                                                            "single-v1"]
    t2 = _text(seen[1])
    assert all(x in t2 for x in ("1+1?", "then 2+2?", "[参考解答の始め]")) and seen[1][0]["role"] == "system"
    assert judge.parse_score("x [[3]] then [[10]]") == 3, "FastChat takes the first grade"
    assert judge.parse_score("[[11]]") is None and judge.parse_score("評価: [8.5]") == 8.5
    assert judge.parse_verdict("I pick [[B]]") == "B" and judge.parse_verdict("B") is None


def test_fastchat_question_files_load_and_reference_categories_need_references():
    shipped = judge.load_questions((ROOT / "pipelines" / "evals" / "mt_bench_ja.jsonl").read_text(), "q")
    assert len(shipped) == 6 and all(q.reference for q in shipped if q.category in judge.NEED_REF_CATS)
    line = json.dumps({"question_id": 81, "category": "math", "turns": ["1+1?", "and 2+2?"]})
    with pytest.raises(ValueError, match=r"q.jsonl:1: question 81 is a math question.*reference"):
        judge.load_questions(line, "q.jsonl")
    refs = judge.load_references(json.dumps({"question_id": 81, "model_id": "gpt-4",
                                             "choices": [{"index": 0, "turns": ["2", "4"]}]}), "ref.jsonl")
    assert judge.load_questions(line, "q.jsonl", refs)[0].reference == ["2", "4"]
    with pytest.raises(ValueError, match="ref.jsonl:1: .*choices"):
        judge.load_references('{"question_id": 1}', "ref.jsonl")
    with pytest.raises(ValueError, match="q.jsonl:2: question_id 81 appears twice"):
        judge.load_questions(line + "\n" + line, "q.jsonl", refs)


def test_a_completions_judge_gets_the_messages_in_kuras_chat_template():
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert judge.render(conv, *PLAIN) == "user: S\n\nU\nassistant: "
    assert judge.render(conv + [{"role": "assistant", "content": "R\n評価: [["}], *PLAIN) == \
        "user: S\n\nU\nassistant: R\n評価: [["


def test_pairwise_counts_disagreeing_orders_as_ties():
    qs = [judge.Question("q1", "writing", ["?"])]
    answers = {"m1": {"q1": ["long good answer"]}, "m2": {"q1": ["bad"]}}

    def position_biased(convs, attempt):
        return ["[[A]]"] * len(convs)  # always picks the first answer shown

    votes = judge.pairwise(qs, answers, position_biased)
    assert votes == [{"model_a": "m1", "model_b": "m2", "question_id": "q1", "turn": 1, "judge_prompt": "pair-v2",
                      "winner": "tie", "source": "judge", "forced": False}]

    def fair(convs, attempt):
        return ["[[A]]" if _text(c).index("long good") < _text(c).index("bad\n") else "[[B]]" for c in convs]

    assert judge.pairwise(qs, answers, fair)[0]["winner"] == "a"
    two = [judge.Question("q2", "reasoning", ["a?", "b?"], ["ra", "rb"])]
    both = {"m1": {"q2": ["x1", "x2"]}, "m2": {"q2": ["y1", "y2"]}}
    v = judge.pairwise(two, both, lambda cs, a: ["[[C]]"] * len(cs))
    assert [(x["turn"], x["judge_prompt"], x["winner"]) for x in v] == [
        (1, "pair-math-v1", "tie"), (2, "pair-math-v1-multi-turn", "tie")]


def test_a_judge_that_never_follows_the_format_is_forced_and_counted():
    qs = [judge.Question("q1", "math", ["1+1?"], ["2"]), judge.Question("q2", "writing", ["a poem"])]
    answers = {"q1": ["2"], "q2": ["roses"]}
    forced_convs = []

    def rambling(convs, attempt):
        return [f"this answer is fine (attempt {attempt})"] * len(convs)

    def force(convs, choices):  # a scripted constrained decoder: always the 7th choice
        forced_convs.extend(convs)
        return [choices[6]] * len(convs)

    plain = judge.grade(qs, answers, rambling, max_retries=1)
    assert plain["graded"] == 0 and plain["ungraded"] == plain["parse_failures"] == 2 and plain["forced"] == 0
    assert plain["mean_score"] is None and plain["per_category"] == {}, "FastChat's -1: ungraded items excluded"
    res = judge.grade(qs, answers, rambling, max_retries=1, force=force)
    assert res["graded"] == 2 and res["ungraded"] == 0 and res["forced"] == res["parse_failures"] == 2
    assert res["mean_score"] == 7.0 and res["retries"] == 2
    # the grade follows the judge's own (last) reply, as its rationale
    assert all(c[-1] == {"role": "assistant", "content": "this answer is fine (attempt 1)\n" + judge.SCORE_PREFIX}
               for c in forced_convs)
    assert all(r["forced"] and r["rationale"] == "this answer is fine (attempt 1)" for r in res["records"])

    two = {"m1": {"q1": ["2"], "q2": ["roses"]}, "m2": {"q1": ["3"], "q2": ["x"]}}
    votes = judge.pairwise(qs, two, rambling, force=lambda ps, cs: [cs[0]] * len(ps))
    assert len(votes) == 2 and all(v["forced"] and v["winner"] == "tie" for v in votes), votes


def test_metric_correlations():
    from kura.eval.correlation import correlations, spearman

    rows = [{"elo": 1000 + i * 10, "judge": 5 + i, "tasks": 0.9 - 0.1 * i, "flat": 1.0} for i in range(4)]
    rows.append({"elo": 990, "judge": None, "tasks": 1.0, "flat": 1.0})
    c = {(r["metric_a"], r["metric_b"]): r for r in correlations(rows, ["elo", "judge", "tasks", "flat"])}
    assert c[("elo", "judge")] == {"metric_a": "elo", "metric_b": "judge", "n": 4, "spearman": 1.0, "pearson": 1.0}
    assert c[("elo", "tasks")]["n"] == 5 and c[("elo", "tasks")]["spearman"] == -1.0
    assert c[("elo", "flat")]["spearman"] is None, "a metric that does not vary has no correlation"
    assert spearman([1, 2, 2, 3], [1, 3, 3, 4]) == pytest.approx(1.0) and spearman([1, 2], [2, 1]) is None


# ----------------------------------------------------------------------------------------------- arena

def test_bradley_terry_recovers_known_strengths_with_intervals():
    rng = np.random.default_rng(7)
    true = {"a": 1200.0, "b": 1100.0, "c": 1000.0, "d": 850.0, "e": 850.0 - 100}
    names = list(true)
    votes = []
    for _ in range(3000):
        i, j = rng.choice(len(names), 2, replace=False)
        pa = 1 / (1 + 10 ** ((true[names[j]] - true[names[i]]) / 400))
        u = rng.random()
        winner = "tie" if abs(u - pa) < 0.03 else ("a" if u < pa else "b")
        votes.append({"model_a": names[i], "model_b": names[j], "winner": winner})
    res = arena.ratings(votes, bootstrap=100)
    order = [r["model"] for r in res["leaderboard"]]
    assert order == ["a", "b", "c", "d", "e"]
    mean_true = np.mean(list(true.values()))
    for r in res["leaderboard"]:
        assert r["ci_low"] <= true[r["model"]] - mean_true + 1000 <= r["ci_high"], r
    gap = {r["model"]: r["elo"] for r in res["leaderboard"]}
    assert abs((gap["a"] - gap["c"]) - 200) < 40


def test_human_votes_file_is_validated():
    good = arena.load_votes('{"model_a": "x", "model_b": "y", "winner": "tie"}\n', "h.jsonl")
    assert good[0]["source"] == "human"
    with pytest.raises(ValueError, match="h.jsonl:2"):
        arena.load_votes('{"model_a": "x", "model_b": "y", "winner": "a"}\n{"model_a": "x", "winner": "a"}', "h.jsonl")


# ----------------------------------------------------------------------------------------------- contamination

def test_planted_contamination_is_found_with_its_source():
    items = {"tasks/x": [("x:0", "富士山がある国はどこですか。日本の山について答えてください。"), ("x:1", "まったく別の問題文")]}
    docs = [("deduplicated", "d1", "今日は天気がいい。"),
            ("synthetic", "s7", "ユーザーの質問: 富士山がある国はどこですか。日本の山について答えてください。答え: 日本"),
            ("deduplicated", "d2", "富士山")]
    res = contamination.check(items, docs, n=8, min_hits=3)
    s = res["eval_sets"]["tasks/x"]
    assert s["contaminated"] == 1 and s["sources"] == ["synthetic"]
    assert s["examples"][0]["item"] == "x:0" and s["examples"][0]["sources"] == {"synthetic": ["s7"]}
    assert res["training_documents"] == 3


def test_planted_contamination_fails_the_asset_check(graph, tmp_path):
    """A task whose text was copied from a document that reached moe_1's training data (through dense_1's web
    phase) makes `no_contamination` fail, naming the source; with block: true it is an ERROR."""
    import pyarrow.parquet as pq

    mix = graph.out["data_mix"]["web"]
    doc = next(r for r in pq.read_table(Path(mix["uri"]) / "documents.parquet").to_pylist()
               if r["text"] and len(r["text"]) > 60 and r["source"].startswith("deduplicated"))
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"instruction": "要約してください。", "input": doc["text"][:80], "output": "x",
                                   "metric": "exact_match"}, ensure_ascii=False) + "\n")
    key = dg.AssetKey(["contamination", "moe_1"])
    res = graph.defs.resolve_job_def("model_job").execute_in_process(
        instance=graph.instance, asset_selection=[key], raise_on_error=False,
        run_config={"ops": {"contamination__moe_1": {"config": {"extra": [str(planted)], "block": True}}}})
    assert not res.success, "a failed blocking check with ERROR severity fails the step"
    ev = [e for e in res.get_asset_check_evaluations() if e.check_name == "no_contamination"][0]
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    assert "extra/planted" in ev.description and doc["source"] in ev.metadata["offending_sources"].value
    warn = graph.defs.resolve_job_def("model_job").execute_in_process(
        instance=graph.instance, asset_selection=[key], raise_on_error=False,
        run_config={"ops": {"contamination__moe_1": {"config": {"extra": [str(planted)]}}}})
    ev = [e for e in warn.get_asset_check_evaluations() if e.check_name == "no_contamination"][0]
    assert warn.success and not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN

    # leave the session's graph as it was: a failed blocking check on contamination/moe_1 would hold back the
    # leaderboard (all_deps_blocking_checks_passed) in every later automation test
    clean = graph.defs.resolve_job_def("model_job").execute_in_process(instance=graph.instance,
                                                                       asset_selection=[key])
    ev = [e for e in clean.get_asset_check_evaluations() if e.check_name == "no_contamination"][0]
    assert clean.success and ev.passed


# ------------------------------------------------------------------------------------------ whole graph

def test_every_run_has_all_evaluations_and_a_leaderboard(graph):
    runs = ("dense_1", "dense_2", "moe_1")
    for r in runs:
        t = graph.out["eval_tasks"][r]
        assert set(t["tasks"]) == {"ja_choice", "arithmetic", "ja_reading"}
        assert 0 <= t["overall"]["score"] <= t["overall"]["lenient_score"] <= 1
        j = graph.out["eval_judge"][r]
        assert j["graded"] + j["ungraded"] == 12, "6 questions × 2 turns, every one accounted for"
        # the tiny teacher never writes [[N]]: its grades are forced (constrained choice), and say so
        assert j["ungraded"] == 0 and j["forced"] <= j["parse_failures"]
        assert j["judge_model"] == graph.out["teacher"]["demo"]["version"]
        assert j["judge_prompt_version"] == judge.JUDGE_PROMPT_VERSION
        assert graph.out["contamination"][r]["training_documents"] > 100
    chain = graph.out["contamination"]["moe_1"]
    assert chain["phases"] == ["instruct", "web"], "moe_1's lineage reaches both phases through dense_2"
    assert graph.out["contamination"]["dense_1"]["phases"] == ["web"]
    a = graph.out["arena"]
    assert {r["model"] for r in a["leaderboard"]} == set(runs) and a["asked"] == 6 * 2 * 3 * 2
    assert a["judge_votes"] == 6 * 2 * 3, "one vote per question, turn and pair once verdicts can be forced"
    board = graph.out["eval_leaderboard"]["rows"]
    assert [r["run"] for r in board] == list(runs) and all("ppl_web_ja" in r and "elo" in r for r in board)
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey("eval_leaderboard")).asset_materialization
    assert "plot" in mat.metadata and "leaderboard" in mat.metadata
    corr = {(c["metric_a"], c["metric_b"]): c for c in graph.out["eval_leaderboard"]["correlations"]}
    assert corr[("elo", "judge_score")]["n"] == 3 and ("elo", "task_score") in corr, "which metric to trust"
    assert "metric_correlations" in mat.metadata
    jm = graph.instance.get_latest_materialization_event(dg.AssetKey(["eval_judge", "dense_1"])).asset_materialization
    assert "radar" in jm.metadata and "categories" in jm.metadata
    assert {r["category"] for r in graph.out["eval_judge"]["dense_1"]["category_table"]} == {
        "writing", "roleplay", "reasoning", "math", "coding", "stem"}


def test_evaluation_data_loads_from_s3(s3_server):
    from assets.evaluation import read_text_files
    from kura.io import Storage
    from resources import StorageResource

    st = Storage(f"s3://{s3_server.bucket}/evals", endpoint_url=s3_server.endpoint, key=s3_server.key,
                 secret=s3_server.secret)
    for f in (ROOT / "pipelines" / "evals" / "tasks").iterdir():
        st.write_bytes(f"tasks/{f.name}", f.read_bytes())
    res = StorageResource(root=f"s3://{s3_server.bucket}/x", endpoint_url=s3_server.endpoint,
                          access_key_id=s3_server.key, secret_access_key=s3_server.secret)
    files = read_text_files(res, f"s3://{s3_server.bucket}/evals/tasks", ".jsonl")
    assert set(tasks.load_task_dir(files)) == {"ja_choice", "arithmetic", "ja_reading"}


# ------------------------------------------------------------------------------- real vLLM servers

@pytest.mark.slow
def test_judge_and_candidate_through_real_vllm_servers(graph, served_models, tmp_path, monkeypatch):
    """Candidate (dense_2's HF export) and judge (the teacher) each served by vLLM's OpenAI-compatible server
    (CPU build) on 127.0.0.1; the task runner, the multi-turn answers and the grading go over HTTP."""
    from kura.synth.generators import OpenAICompatibleGenerator, SamplingConfig

    cand_url, judge_url = served_models["dense_2"], served_models["judge"]
    cand = OpenAICompatibleGenerator(cand_url, "dense_2", max_concurrency=4)
    jg = OpenAICompatibleGenerator(judge_url, "judge", max_concurrency=4)

    def gen(prompts):
        return cand.generate(prompts, SamplingConfig(max_tokens=16)).completions

    judge_call, force = judge.judge_fns(jg, 48, PLAIN, force=True)

    # dense_2 serves a 128-token context: the items whose prompt and answer fit it (which do depends on the tokenizer)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(graph.out["hf_model"]["dense_2"]["uri"])
    ctx = served_models["dense_2_context"]
    fits = {k: [it for it in v if len(hf.encode(tasks.render(it, *PLAIN))) + 16 <= ctx] for k, v in _items().items()}
    fits = {k: v for k, v in fits.items() if v}
    n = sum(min(2, len(v)) for v in fits.values())
    t = tasks.run_tasks(fits, gen, *PLAIN, limit=2)
    assert n >= 4 and t["overall"]["items"] == n and all(r["completion"] is not None for r in t["records"])
    # the two shortest two-turn questions: the second turn's prompt (both questions, the first answer, 8 prefix
    # tokens) and its 16-token answer fit the 128-token context
    qs = sorted(judge.load_questions((ROOT / "pipelines" / "evals" / "mt_bench_ja.jsonl").read_text(), "q"),
                key=lambda q: len(hf.encode("".join(q.turns))))[:2]
    assert all(len(hf.encode("\n".join(q.turns))) + 40 <= ctx for q in qs), "no two questions fit the context"
    answers = judge.answer_questions(qs, lambda ps, temperature: gen(ps), *PLAIN)
    assert all(len(a) == 2 for a in answers.values())
    res = judge.grade(qs, answers, judge_call, max_retries=1, force=force)
    assert res["graded"] == 4 and res["ungraded"] == 0, "forced through vLLM's guided choice over HTTP"
    assert res["forced"] == sum(r["parse_failed"] for r in res["records"])
    assert all(r["rationale"] is not None and 1 <= r["attempts"] <= 2 for r in res["records"])
    assert res["retries"] == res["parse_failures"] + sum(1 for r in res["records"] if r["attempts"] == 2
                                                          and not r["parse_failed"]), "every failure re-asked"

    # Japanese MT-Bench as FastChat runs it: a FastChat-format file (integer ids, a math question with its
    # reference answers in FastChat's answer format), both turns, the judge asked through the chat API
    fq = tmp_path / "question.jsonl"
    fq.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in (
        {"question_id": 81, "category": "writing", "turns": ["春の短い詩を書いてください。", "もっと短くしてください。"]},
        {"question_id": 111, "category": "math", "turns": ["2+3は?", "では、その2倍は?"]})), encoding="utf-8")
    refs = judge.load_references(json.dumps({"question_id": 111, "model_id": "gpt-4", "choices": [
        {"index": 0, "turns": ["5です。", "10です。"]}]}, ensure_ascii=False), "gpt-4.jsonl")
    fqs = judge.load_questions(fq.read_text(encoding="utf-8"), str(fq), refs)
    chat_judge = OpenAICompatibleGenerator(judge_url, "judge", max_concurrency=4, api="chat")
    bench_answers, bench = judge.run_bench(fqs, cand, chat_judge, PLAIN, max_tokens=16, judge_max_tokens=32,
                                           max_retries=1, force=True)
    assert bench["judge_api"] == "chat" and bench["graded"] == 4 and bench["ungraded"] == 0, bench
    assert [r["judge_prompt"] for r in bench["records"]] == [
        "single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"]
    assert bench["forced"] == sum(r["parse_failed"] for r in bench["records"]), \
        "forced over the chat API (vLLM's continue_final_message + guided choice)"
    assert {r["category"] for r in bench["category_table"]} == {"writing", "math"}
    pair_call, pair_force = judge.judge_fns(chat_judge, 32, PLAIN, force=True)
    votes = judge.pairwise(fqs, {"x": bench_answers, "y": {k: v[::-1] for k, v in bench_answers.items()}},
                           pair_call, 1, pair_force)
    assert [(v["question_id"], v["turn"], v["judge_prompt"]) for v in votes] == [
        ("111", 1, "pair-math-v1"), ("111", 2, "pair-math-v1-multi-turn"), ("81", 1, "pair-v2"),
        ("81", 2, "pair-v2-multi-turn")]

    # the judge endpoint is in the grades' lineage: pointing KURA_JUDGE_URL at the served teacher rebuilds
    # eval_judge (through Dagster) with the endpoint's identity in its input version; the same judge again is
    # a no-op, and a result-neutral judge setting (request concurrency) changes nothing
    from pipelines.definitions import build_definitions
    from resources import GeneratorResource

    key = dg.AssetKey(["eval_judge", "dense_1"])
    local = graph.instance.get_latest_materialization_event(key).asset_materialization
    monkeypatch.setenv("KURA_JUDGE_URL", judge_url)
    monkeypatch.setenv("KURA_JUDGE_MODEL", "judge")
    monkeypatch.setenv("KURA_JUDGE_API_KEY", "EMPTY")
    defs = build_definitions()

    # two questions and short replies: the tiny judge is slow on long conversations
    two = tmp_path / "two_questions.jsonl"
    two.write_text("".join((ROOT / "pipelines" / "evals" / "mt_bench_ja.jsonl").read_text(
        encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    cfg = {"ops": {"eval_judge__dense_1": {"config": {"questions": str(two), "max_tokens": 16,
                                                      "judge_max_tokens": 32}}}}

    def grade_through_dagster(judge_resource=None):
        if judge_resource is None:  # the way the UI and `make demo` run it
            run = defs.resolve_job_def("model_job").execute_in_process(instance=graph.instance,
                                                                      asset_selection=[key], run_config=cfg)
        else:
            run = dg.materialize(list(defs.assets), selection=[key], instance=graph.instance, run_config=cfg,
                                 resources={**defs.resources, "judge": judge_resource})
        assert run.success
        return graph.instance.get_latest_materialization_event(key).asset_materialization

    served = grade_through_dagster()
    md = served.metadata
    assert md["reused_existing_output"].value is False and md["judge_model"].value == "endpoint:judge"
    ident = md["input_components"].value["resources"]["judge"]
    assert ident["backend"] == "openai" and ident["endpoint"] == judge_url
    assert ident["served"]["root"] == str(graph.out["teacher"]["demo"]["uri"])
    assert "resources.judge.backend: transformers → openai" in md["changes"].value
    assert served.tags["dagster/data_version"] != local.tags["dagster/data_version"] or \
        md["input_version"].value != local.metadata["input_version"].value
    again = grade_through_dagster()
    assert again.metadata["reused_existing_output"].value is True
    assert again.metadata["changes"].value == "- nothing (same inputs)"
    assert "api_key" not in json.dumps(again.metadata["input_components"].value)
    calmer = grade_through_dagster(GeneratorResource(backend="openai", base_url=judge_url, served_model="judge",
                                                     api_key="EMPTY", max_concurrency=1))
    assert calmer.metadata["reused_existing_output"].value is True, "concurrency cannot change a grade"

    # the same switch with the automation sensor's own conditions: the next observation of `resource/judge`
    # (another model behind the judge) makes every grade stale; tick after tick each eval_judge/<run>, the
    # arena, the leaderboard and the trials' evaluations (judged too) materialize exactly once, nothing else
    from tests.automation_driver import drive
    from tests.conftest import TINY_OPS

    def config_for(keys):
        names = {k.to_python_identifier() for k in keys}
        ops = {k: {"config": v} for k, v in TINY_OPS.items() if k in names}
        ops.update({n: {"config": {"questions": str(two), "max_tokens": 16, "judge_max_tokens": 32}}
                    for n in names if n.startswith("eval_judge__")})
        if "arena" in names:
            ops["arena"] = {"config": {"judge_max_tokens": 32, "bootstrap": 20}}
        return {"ops": ops}

    settle = drive(defs, graph.instance, run_config_for=config_for, observe=())
    switched = drive(defs, graph.instance, cursor=settle.cursor, run_config_for=config_for)
    agraph = defs.resolve_asset_graph()
    judged, frontier = set(), [dg.AssetKey(["resource", "judge"])]
    while frontier:
        for child in agraph.get(frontier.pop()).child_keys:
            if child not in judged:
                judged.add(child)
                frontier.append(child)
    assert switched.twice() == {} and switched.violations == []
    assert {k for k, _ in switched.materialized()} == {k.to_user_string() for k in judged} == {
        "eval_judge/dense_1", "eval_judge/dense_2", "eval_judge/moe_1", "arena", "eval_leaderboard",
        "trial_eval", "trial_leaderboard"}
    arena_md = graph.instance.get_latest_materialization_event(dg.AssetKey("arena")).asset_materialization
    assert arena_md.metadata["judge_votes"].value > 0 and "resources.judge.backend" in \
        arena_md.metadata["changes"].value

    # back to the local judge (the session's other tests expect it): the original grades are reused
    monkeypatch.delenv("KURA_JUDGE_URL")
    local_defs = build_definitions()
    back = drive(local_defs, graph.instance, cursor=switched.cursor,
                 run_config_for=lambda keys: {"ops": {k: {"config": v} for k, v in TINY_OPS.items()
                                                      if k in {x.to_python_identifier() for x in keys}}})
    assert back.twice() == {} and {k for k, _ in back.materialized()} == {k.to_user_string() for k in judged}
    restored = graph.instance.get_latest_materialization_event(key).asset_materialization
    assert restored.metadata["input_version"].value == local.metadata["input_version"].value

    # the judge's API is in the grades' lineage too: the same endpoint asked through its chat API regrades
    chatty = grade_through_dagster(GeneratorResource(backend="openai", base_url=judge_url, served_model="judge",
                                                     api_key="EMPTY", api="chat"))
    assert chatty.metadata["reused_existing_output"].value is False
    assert chatty.metadata["input_components"].value["resources"]["judge"]["api"] == "chat"
    assert chatty.metadata["categories"] and chatty.metadata["radar"]
    back_local = dg.materialize(list(local_defs.assets), selection=[key], instance=graph.instance,
                                resources=local_defs.resources)
    assert back_local.success
    again_local = graph.instance.get_latest_materialization_event(key).asset_materialization
    assert again_local.metadata["reused_existing_output"].value is True
