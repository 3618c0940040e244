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

def test_judge_parsing_and_retries_are_counted():
    qs = [judge.Question("q1", "math", ["1+1?", "then 2+2?"]), judge.Question("q2", "writing", ["a poem"])]
    answers = {"q1": ["2", "4"], "q2": ["roses"]}
    calls = []

    def fake_judge(prompts, attempt):  # a scripted judge: first q1/turn-2 reply has no grade
        calls.append((len(prompts), attempt))
        out = []
        for p in prompts:
            if "then 2+2?" in p and attempt == 0:
                out.append("good answer but I forgot the format")
            else:
                out.append(f"reason... 評価: [[{7 if 'poem' in p else 9}]]")
        return out

    res = judge.grade(qs, answers, fake_judge, PLAIN, max_retries=2)
    assert calls == [(3, 0), (1, 1)], "only the unparsed reply is re-asked"
    assert res["graded"] == 3 and res["parse_failures"] == 0 and res["retries"] == 1
    assert res["per_category"] == {"math": 9.0, "writing": 7.0}
    assert res["judge_prompt_version"] == judge.JUDGE_PROMPT_VERSION
    assert judge.parse_score("x [[3]] then [[10]]") == 10 and judge.parse_score("[[11]]") is None
    assert judge.parse_verdict("I pick [[B]]") == "B" and judge.parse_verdict("B") is None


def test_pairwise_counts_disagreeing_orders_as_ties():
    qs = [judge.Question("q1", "c", ["?"])]
    answers = {"m1": {"q1": ["long good answer"]}, "m2": {"q1": ["bad"]}}

    def position_biased(prompts, attempt):
        return ["[[A]]"] * len(prompts)  # always picks the first answer shown

    votes = judge.pairwise(qs, answers, position_biased, PLAIN)
    assert votes == [{"model_a": "m1", "model_b": "m2", "question_id": "q1", "winner": "tie", "source": "judge",
                      "forced": False}]

    def fair(prompts, attempt):
        return ["[[A]]" if p.index("long good") < p.index("bad\n") else "[[B]]" for p in prompts]

    assert judge.pairwise(qs, answers, fair, PLAIN)[0]["winner"] == "a"


def test_a_judge_that_never_follows_the_format_is_forced_and_counted():
    qs = [judge.Question("q1", "math", ["1+1?"]), judge.Question("q2", "writing", ["a poem"])]
    answers = {"q1": ["2"], "q2": ["roses"]}
    forced_prompts = []

    def rambling(prompts, attempt):
        return [f"this answer is fine (attempt {attempt})"] * len(prompts)

    def force(prompts, choices):  # a scripted constrained decoder: always the 7th choice
        forced_prompts.extend(prompts)
        return [choices[6]] * len(prompts)

    plain = judge.grade(qs, answers, rambling, PLAIN, max_retries=1)
    assert plain["graded"] == 0 and plain["ungraded"] == plain["parse_failures"] == 2 and plain["forced"] == 0
    res = judge.grade(qs, answers, rambling, PLAIN, max_retries=1, force=force)
    assert res["graded"] == 2 and res["ungraded"] == 0 and res["forced"] == res["parse_failures"] == 2
    assert res["mean_score"] == 7.0 and res["retries"] == 2
    # the grade follows the judge's own (last) reply, as its rationale
    assert all(p.endswith("this answer is fine (attempt 1)\n" + judge.SCORE_PREFIX) for p in forced_prompts)
    assert all(r["forced"] and r["rationale"] == "this answer is fine (attempt 1)" for r in res["records"])

    two = {"m1": {"q1": ["2"], "q2": ["roses"]}, "m2": {"q1": ["3"], "q2": ["x"]}}
    votes = judge.pairwise(qs, two, rambling, PLAIN, force=lambda ps, cs: [cs[0]] * len(ps))
    assert len(votes) == 2 and all(v["forced"] and v["winner"] == "tie" for v in votes), votes


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
        assert j["judge_model"] == graph.out["teacher_model"]["version"]
        assert j["judge_prompt_version"] == judge.JUDGE_PROMPT_VERSION
        assert graph.out["contamination"][r]["training_documents"] > 100
    chain = graph.out["contamination"]["moe_1"]
    assert chain["phases"] == ["instruct", "web"], "moe_1's lineage reaches both phases through dense_2"
    assert graph.out["contamination"]["dense_1"]["phases"] == ["web"]
    a = graph.out["arena"]
    assert {r["model"] for r in a["leaderboard"]} == set(runs) and a["asked"] == 6 * 3 * 2
    assert a["judge_votes"] == 6 * 3, "one vote per question and pair once verdicts can be forced"
    board = graph.out["eval_leaderboard"]["rows"]
    assert [r["run"] for r in board] == list(runs) and all("ppl_web_ja" in r and "elo" in r for r in board)
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey("eval_leaderboard")).asset_materialization
    assert "plot" in mat.metadata and "leaderboard" in mat.metadata


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
def test_judge_and_candidate_through_real_vllm_servers(graph, tmp_path, monkeypatch):
    """Candidate (dense_2's HF export) and judge (the teacher) each served by vLLM's OpenAI-compatible server
    (CPU build) on 127.0.0.1; the task runner, the multi-turn answers and the grading go over HTTP."""
    from kura.synth.generators import OpenAICompatibleGenerator, SamplingConfig
    from tests.conftest import vllm_openai_server

    # the candidate's context is its phase's sequence length (vLLM refuses a longer max_model_len): dense_2, trained
    # on the instruct phase (128 tokens in the tests' mix)
    cand_dir = graph.out["hf_model"]["dense_2"]["uri"]
    ctx = json.loads((Path(cand_dir) / "config.json").read_text())["max_position_embeddings"]
    with vllm_openai_server(cand_dir, "dense_2", tmp_path / "cand", ctx) as cand_url, \
            vllm_openai_server(graph.out["teacher_model"]["uri"], "judge", tmp_path / "judge", 512) as judge_url:
        cand = OpenAICompatibleGenerator(cand_url, "dense_2", max_concurrency=4)
        jg = OpenAICompatibleGenerator(judge_url, "judge", max_concurrency=4)

        def gen(prompts):
            return cand.generate(prompts, SamplingConfig(max_tokens=16)).completions

        def judge_call(prompts, attempt):
            s = SamplingConfig(max_tokens=48, temperature=0.0 if attempt == 0 else 0.8, seed=attempt)
            return jg.generate(prompts, s).completions

        t = tasks.run_tasks(_items(), gen, *PLAIN, limit=2)
        assert t["overall"]["items"] == 6 and all(r["completion"] is not None for r in t["records"])
        qs = judge.load_questions((ROOT / "pipelines" / "evals" / "mt_bench_ja.jsonl").read_text(), "q")[:2]
        answers = judge.answer_questions(qs, gen, *PLAIN)
        assert all(len(a) == 2 for a in answers.values())
        res = judge.grade(qs, answers, judge_call, PLAIN, max_retries=1, force=jg.choose)
        assert res["graded"] == 4 and res["ungraded"] == 0, "forced through vLLM's guided choice over HTTP"
        assert res["forced"] == sum(r["parse_failed"] for r in res["records"])
        assert all(r["rationale"] is not None and 1 <= r["attempts"] <= 2 for r in res["records"])
        assert res["retries"] == res["parse_failures"] + sum(1 for r in res["records"] if r["attempts"] == 2
                                                              and not r["parse_failed"]), "every failure re-asked"

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

        # two questions and short replies: the tiny judge serves a 512-token context
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
        assert ident["served"]["root"] == str(graph.out["teacher_model"]["uri"])
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
