"""Post-training: trial specs and grids, the 4-trial grid on the tiny model (adapters reload exactly, merged
logits match base+adapter, replay visible in the data manifest, DPO pairs), merges, the trial Job."""
import json
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from kura.train.trials import PostTrainingError, expand, load_post_training

ROOT = Path(__file__).resolve().parents[1]
TRIALS = ["dpo-beta0.1", "dpo-beta0.5", "sft-r4", "sft-r8"]


def test_grid_expands_to_named_trials():
    trials, merges = load_post_training(ROOT / "pipelines" / "post_training", ["dense_1", "dense_2", "moe_1"])
    assert sorted(trials) == TRIALS
    assert trials["sft-r4"].lora.r == 4 and trials["sft-r8"].lora.r == 8 and trials["dpo-beta0.5"].beta == 0.5
    assert [m.name for m in merges] == ["sft_average"]
    two = expand({"name": "x", "base": "b", "method": "sft", "grid": {"lora.r": [2, 4], "optim.lr": [1e-3, 1e-4]}},
                 "f")
    assert [t for t, _ in two] == ["x-r2-lr0.001", "x-r2-lr0.0001", "x-r4-lr0.001", "x-r4-lr0.0001"]


@pytest.mark.parametrize("doc,message", [
    ({"trials": [{"name": "a", "base": "nope", "method": "sft"}]}, "base 'nope' is not a pretraining run"),
    ({"trials": [{"name": "a", "base": "dense_1", "method": "ppo"}]}, "method"),
    ({"trials": [{"name": "a", "base": "dense_1", "method": "sft", "grid": {"lora.rank": [1]}}]}, "rank"),
    ({"trials": [{"name": "a", "base": "dense_1", "method": "sft"}],
      "merges": [{"name": "m", "method": "linear", "trials": ["a", "a"], "weights": [0.7, 0.7]}]}, "sum to 1"),
    ({"trials": [{"name": "a", "base": "dense_1", "method": "sft"}],
      "merges": [{"name": "m", "method": "task_arithmetic", "trials": ["a", "b"], "weights": [1, 1]}]},
     "unknown trials"),
    ({"trails": []}, "unknown keys"),
])
def test_bad_post_training_specs_are_refused(tmp_path, doc, message):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(PostTrainingError, match=message):
        load_post_training(tmp_path, ["dense_1"])


def test_grid_trials_are_partitions_of_the_adapter(graph):
    job = graph.defs.resolve_job_def("post_training_job")
    assert job.partitions_def.get_partition_keys() == TRIALS
    assert set(graph.out["adapter"]) == set(TRIALS) == set(graph.out["trial_eval"])
    for t in TRIALS:
        assert graph.instance.get_latest_materialization_event(
            dg.AssetKey("adapter")) is not None and t in graph.instance.get_materialized_partitions(
            dg.AssetKey("adapter"))


def test_adapters_reload_bit_for_bit_and_describe_themselves(graph):
    import torch
    from safetensors.torch import load_file

    from kura.train.lora import load_adapter

    base = Path(graph.out["hf_model"]["dense_2"]["uri"])
    for t in TRIALS:
        a = graph.out["adapter"][t]
        d = Path(a["uri"])
        assert (d / "adapter" / "adapter_config.json").exists()
        assert (d / "adapter" / "adapter_model.safetensors").exists()
        info = json.loads((d / "kura_adapter.json").read_text())
        assert info["trial"] == t and info["data"]["base_model"] == graph.out["hf_model"]["dense_2"]["version"]
        saved = load_file(str(d / "adapter" / "adapter_model.safetensors"))
        model, _ = load_adapter(base, d / "adapter")
        live = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert len(saved) == len(live) > 0
        for k, v in saved.items():
            match = [lk for lk in live if lk.replace(".default", "") == k]
            assert match and torch.equal(live[match[0]], v), k
        cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
        assert cfg["r"] == info["spec"]["lora"]["r"] and cfg["lora_alpha"] == info["spec"]["lora"]["alpha"]


def test_merged_models_match_base_plus_adapter(graph):
    import torch
    from transformers import AutoModelForCausalLM

    from kura.train.lora import load_adapter

    base = Path(graph.out["hf_model"]["dense_2"]["uri"])
    x = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(3))
    for t in ("sft-r8", "dpo-beta0.1"):
        assert graph.out["merged_model"][t]["max_logit_diff_vs_adapter"] < 1e-4
        peft_model, _ = load_adapter(base, Path(graph.out["adapter"][t]["uri"]) / "adapter")
        merged = AutoModelForCausalLM.from_pretrained(graph.out["merged_model"][t]["uri"], dtype=torch.float32).eval()
        with torch.no_grad():
            a, b = peft_model(input_ids=x).logits, merged(input_ids=x).logits
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
        base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        with torch.no_grad():
            assert not torch.allclose(base_model(input_ids=x).logits, b, atol=1e-4), "training moved the weights"


def test_replay_and_preference_data_are_in_the_manifests(graph):
    for t in ("sft-r4", "sft-r8"):
        d = graph.out["adapter"][t]["data"]
        assert d["replay_requested"] == 0.2 and d["replay_examples"] > 0
        assert abs(d["replay_share"] - 0.2) < 0.05 and d["replay_source"] == "data_mix/web"
        assert d["replay_mix_version"] == graph.out["data_mix"]["web"]["version"]
        assert d["data_versions"]["human/ja_instruct"] == graph.out["human"]["ja_instruct"]["version"], \
            "the trial's spec adds the hand-written set to the synthetic conversations"
        assert any(k.startswith("synthetic[") for k in d["data_versions"])
    pairs = graph.out["preference_pairs"]
    assert pairs["pairs"] > 0 and pairs["rejected_model"] == graph.out["hf_model"]["dense_2"]["version"]
    for t in ("dpo-beta0.1", "dpo-beta0.5"):
        a = graph.out["adapter"][t]
        assert a["data"]["pairs"] > 0 and a["data"]["data_versions"] == {"preference_pairs": pairs["version"]}
        assert 0 <= a["reward_accuracy"] <= 1
        # Two epochs over the same pairs: the DPO loss (ln 2 at the start, adapter disabled = reference) must fall.
        assert len(a["epoch_losses"]) == 2 and a["epoch_losses"][1] < a["epoch_losses"][0] < 0.7


def test_linear_merge_is_the_average_of_the_trials(graph):
    from safetensors.torch import load_file

    m = graph.out["model_merge"]["sft_average"]
    assert m["method"] == "linear" and m["tensors_changed"] > 0
    a = load_file(str(Path(graph.out["merged_model"]["sft-r4"]["uri"]) / "model.safetensors"))
    b = load_file(str(Path(graph.out["merged_model"]["sft-r8"]["uri"]) / "model.safetensors"))
    avg = load_file(str(Path(m["uri"]) / "model.safetensors"))
    k = "model.layers.0.self_attn.q_proj.weight"
    assert (avg[k] - (a[k] + b[k]) / 2).abs().max() < 1e-6


def test_rank_trials_breaks_ties_by_perplexity_and_refuses_unknown_metrics():
    from kura.train.trials import rank_trials

    rows = [{"trial": "a", "task_score": 0.0, "ppl_web_ja": 3.0, "ppl_web_en": 5.0},
            {"trial": "b", "task_score": 0.5, "ppl_web_ja": 9.0, "ppl_web_en": 9.0},
            {"trial": "c", "task_score": 0.0, "ppl_web_ja": 2.0, "ppl_web_en": 4.0},
            {"trial": "d", "task_score": None, "ppl_web_ja": 1.0, "ppl_web_en": 1.0}]
    assert [(r["trial"], r["rank"]) for r in rank_trials(rows, "task_score")] == [("b", 1), ("c", 2), ("a", 3),
                                                                                  ("d", 4)]
    assert [r["trial"] for r in rank_trials(rows, "ppl_web_en")] == ["d", "c", "a", "b"]
    with pytest.raises(PostTrainingError, match="rank_by 'elo' is not a leaderboard column"):
        rank_trials(rows, "elo")


def test_trial_leaderboard_ranks_every_trial(graph):
    rows = graph.out["trial_leaderboard"]["rows"]
    assert sorted(r["trial"] for r in rows) == TRIALS and [r["rank"] for r in rows] == [1, 2, 3, 4]
    scores = [r["task_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey("trial_leaderboard")).asset_materialization
    assert "plot" in mat.metadata and "metric_correlations" in mat.metadata
    corr = {(c["metric_a"], c["metric_b"]): c for c in graph.out["trial_leaderboard"]["correlations"]}
    c = corr[("judge_score", "task_score")]
    assert c["n"] == len(TRIALS) and (c["spearman"] is None or -1 <= c["spearman"] <= 1)


def test_every_trial_is_judged_and_checked_for_contamination(graph):
    st = graph.defs.resources["storage"].get()
    for tid in TRIALS:
        e = graph.out["trial_eval"][tid]
        j = e["judge"]
        assert e["judge_model"] == graph.out["teacher"]["demo"]["version"]
        grades = [json.loads(x) for x in (st.local_dir(e["dir"]) / "judge_grades.jsonl").read_text("utf-8").split("\n")
                  if x]
        # one grade record per (question, turn), each with the judge's rationale kept; unparsed ones are counted
        assert j["graded"] + j["ungraded"] == len(grades) > 0, j
        assert all("rationale" in g and "question_id" in g for g in grades)
        c = e["contamination"]
        # the trial's own fine-tuning data was scanned, not only its base's pretraining lineage
        a = graph.out["adapter"][tid]
        texts = [json.loads(x) for x in (st.local_dir(a["dir"]) / "training_texts.jsonl").read_text("utf-8").split("\n")
                 if x]
        kinds = {k: sum(r["kind"] == k for r in texts) for k in {r["kind"] for r in texts}}
        if tid.startswith("sft"):
            assert kinds == {"conversation": a["data"]["sft_examples"], "replay": a["data"]["replay_examples"]}
        else:
            assert kinds == {"dpo_chosen": a["data"]["pairs"], "dpo_rejected": a["data"]["pairs"]}
        assert c["fine_tuning_documents"] == len(texts) > 0
        assert {"tasks/ja_choice", "judge/mt_bench_ja"} <= set(c["eval_sets"]), c["eval_sets"].keys()
    rows = graph.out["trial_leaderboard"]["rows"]
    assert all("judge_score" in r and "contaminated_items" in r for r in rows)


def test_trial_pod_entry_point_trains_from_s3(graph, s3_server, monkeypatch):
    """`python -m kura.train.lora JOB RESULT` as the GPU pod runs it: job, base model, adapter and result all on a
    real S3 server (SeaweedFS); the adapter it uploads loads onto the base."""
    from kura.io import Storage
    from kura.train import lora

    for k, v in (("AWS_ACCESS_KEY_ID", s3_server.key), ("AWS_SECRET_ACCESS_KEY", s3_server.secret),
                 ("KURA_S3_ENDPOINT", s3_server.endpoint)):
        monkeypatch.setenv(k, v)
    st = Storage(f"s3://{s3_server.bucket}/trial-pod", endpoint_url=s3_server.endpoint, key=s3_server.key,
                 secret=s3_server.secret)
    base = Path(graph.out["hf_model"]["dense_2"]["uri"])
    for f in base.iterdir():
        if f.is_file():
            st.write_bytes(f"base/{f.name}", f.read_bytes())
    trials, _ = load_post_training(ROOT / "pipelines" / "post_training")
    spec = trials["sft-r4"].model_copy(update={"optim": trials["sft-r4"].optim.model_copy(update={"epochs": 1})})
    _, tok = lora.load_base(base)
    examples = [lora.render_chat([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                 ("user: ", "assistant: ", "\n"), tok, 64)
                for q, a in (("東京は?", "首都です。"), ("What is rain?", "Water falling."))]
    st.write_json("job.json", {"spec": spec.model_dump(), "base_dir": st.uri("base"), "examples": examples,
                               "pad_id": tok.pad_token_id or 0, "manifest": {"sft_examples": 2},
                               "out_uri": st.uri("out/adapter")})
    lora.main([st.uri("job.json"), st.uri("result.json")])
    result = st.read_json("result.json")
    assert result["steps"] == 1 and result["data"] == {"sft_examples": 2} and len(result["epoch_losses"]) == 1
    model, _ = lora.load_adapter(base, st.local_dir("out/adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == result["trainable_parameters"]


def test_trial_gpu_job_renders_and_validates():
    from kura.k8s.manifests import validate
    from resources.posttrainer import PostTrainerResource

    job = PostTrainerResource(backend="kubernetes", s3_endpoint="http://minio:9000").job_object(
        "kura-trial-abc", "s3://b/_posttrain/abc/job.json", "s3://b/_posttrain/abc/result.json")
    validate(job)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "kura.train.lora", "s3://b/_posttrain/abc/job.json",
                            "s3://b/_posttrain/abc/result.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "KURA_S3_ENDPOINT", "value": "http://minio:9000"} in c["env"]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "post-training"


@pytest.mark.slow
def test_a_trial_added_to_the_grid_is_trained_and_evaluated_exactly_once(graph, tmp_path, monkeypatch):
    """Add a trial to the grid → one new adapter partition. With declarative automation evaluated tick after tick
    (the automation sensor's own conditions) until nothing more is requested, the new trial's adapter, merged model
    and evaluation and the trial leaderboard materialize exactly once, in that order (never beside an ancestor in
    another run), and nothing else: no other trial, no merge (it names its trials), no pretraining asset."""
    import shutil

    from pipelines.definitions import build_definitions
    from tests.automation_driver import drive
    from tests.conftest import TINY_OPS

    def config_for(keys):
        names = {k.to_python_identifier() for k in keys}
        return {"ops": {k: {"config": v} for k, v in TINY_OPS.items() if k in names}}

    folder = tmp_path / "post_training"
    shutil.copytree(ROOT / "pipelines" / "post_training", folder)
    doc = yaml.safe_load((folder / "demo.yaml").read_text())
    doc["trials"][0]["grid"]["lora.r"] = [4, 8, 2]
    (folder / "demo.yaml").write_text(yaml.safe_dump(doc))
    settle = drive(graph.defs, graph.instance, run_config_for=config_for, observe=())
    monkeypatch.setenv("KURA_POST_TRAINING_DIR", str(folder))
    defs = build_definitions()
    assert "sft-r2" in defs.resolve_job_def("post_training_job").partitions_def.get_partition_keys()
    result = drive(defs, graph.instance, cursor=settle.cursor, run_config_for=config_for)
    print("materialized:", sorted(result.counts.items(), key=str), "ticks:", result.ticks)
    assert result.twice() == {} and result.violations == []
    assert result.materialized() == {("adapter", "sft-r2"), ("merged_model", "sft-r2"), ("trial_eval", "sft-r2"),
                                     ("trial_leaderboard", None)}
    board = graph.instance.get_latest_materialization_event(dg.AssetKey("trial_leaderboard")).asset_materialization
    assert board.metadata["trials"].value == len(TRIALS) + 1

    # the grid as it was: the leaderboard ranks the shipped trials again (the session's other tests read it)
    monkeypatch.delenv("KURA_POST_TRAINING_DIR")
    run = build_definitions().resolve_job_def("post_training_summary_job").execute_in_process(
        instance=graph.instance, asset_selection=[dg.AssetKey("trial_leaderboard")])
    assert run.success and run.output_for_node("trial_leaderboard")["rows"] and \
        len(run.output_for_node("trial_leaderboard")["rows"]) == len(TRIALS)


def test_an_adapter_trained_in_another_process_has_the_same_bytes(graph, tmp_path):
    """A killed trial is retrained by another process: its adapter must be the same content version. PEFT writes
    `target_modules` (a set) in the order of the process's string-hash seed; kura writes it canonically."""
    import subprocess
    import sys

    from kura.io.hashing import hash_dir

    base = Path(graph.out["hf_model"]["dense_2"]["uri"])
    trials, _ = load_post_training(ROOT / "pipelines" / "post_training")
    spec = trials["sft-r4"].model_copy(update={"optim": trials["sft-r4"].optim.model_copy(update={"epochs": 1})})
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from kura.train import lora\n"
        "from kura.train.trials import TrialSpec\n"
        "spec = TrialSpec(**json.loads(sys.argv[1])); base = Path(sys.argv[2]); out = Path(sys.argv[3])\n"
        "_, tok = lora.load_base(base)\n"
        "ex = [lora.render_chat([{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}],\n"
        "                       ('user: ', 'assistant: ', '\\n'), tok, 64)\n"
        "      for q, a in (('東京は?', '首都です。'), ('What is rain?', 'Water falling.'))]\n"
        "lora.train(spec, base, out, examples=ex, pad_id=tok.pad_token_id or 0, manifest={})\n")
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        subprocess.run([sys.executable, "-c", script, spec.model_dump_json(), str(base), str(out)], cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}, check=True)
        outs.append(out / "adapter")
    a, b = (hash_dir(o)[0] for o in outs)
    cfg = json.loads((outs[0] / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(cfg["target_modules"])
    assert a == b, "the same trial trained by two processes must give the same adapter bytes"


@pytest.mark.parametrize("trial", ["sft-r4", "dpo-beta0.1"])
def test_a_killed_trial_resumes_from_its_resume_point_with_the_same_bytes(graph, tmp_path, trial):
    """A trial stopped in step 5 (its resume point written every 2 steps) continues from step 4 in a new call
    and ends with the bytes and the loss curve of an uninterrupted trial; the resume point is replaced atomically."""
    from kura.io.hashing import hash_dir
    from kura.train import lora

    base = Path(graph.out["hf_model"]["dense_2"]["uri"])
    trials, _ = load_post_training(ROOT / "pipelines" / "post_training")
    spec = trials[trial].model_copy(update={"optim": trials[trial].optim.model_copy(update={"batch_size": 1})})
    _, tok = lora.load_base(base)
    qa = [("東京は?", "首都です。", "知らない。"), ("What is rain?", "Water falling.", "A cat."),
          ("一足す一は?", "二です。", "三です。"), ("Sky colour?", "Blue.", "Green."), ("犬は?", "動物です。", "石です。")]
    tmpl = ("user: ", "assistant: ", "\n")
    if spec.method == "sft":
        examples = [lora.render_chat([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tmpl, tok, 64) for q, a, _ in qa]
    else:
        examples, _ = lora.build_dpo_data([{"prompt": q, "chosen": a, "rejected": b} for q, a, b in qa], spec, tok,
                                          tmpl)
    kw = {"examples": examples, "pad_id": tok.pad_token_id or 0, "manifest": {}, "checkpoint_steps": 2}
    whole = lora.train(spec, base, tmp_path / "whole", **kw)

    class Killed(Exception):
        pass

    def kill_in_step_5(rec):
        if rec["step"] == 4:
            raise Killed

    work = tmp_path / "work"
    with pytest.raises(Killed):
        lora.train(spec, base, tmp_path / "first", work_dir=work, progress=kill_in_step_5, **kw)
    assert [p.name for p in work.iterdir()] == [lora.RESUME_NAME], "one resume point, no temp file left"
    resumed = lora.train(spec, base, tmp_path / "resumed", work_dir=work, **kw)
    assert resumed["resumed_from"] == 4 and "resumed_from" not in whole
    assert resumed["curve"] == whole["curve"] and resumed["steps"] == whole["steps"] > 4
    assert hash_dir(tmp_path / "resumed" / "adapter")[0] == hash_dir(tmp_path / "whole" / "adapter")[0]
