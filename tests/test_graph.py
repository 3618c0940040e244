"""Level 3: the whole graph on tiny data, in-process, through Dagster."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from tests.conftest import TINY_DATASET, TINY_OPS, write_mix

PARTITIONED = ("raw_corpus", "cleaned", "adapter", "merged_model", "trial_eval")
PHASED = ("data_mix", "packed_dataset", "checkpoint", "hf_model", "eval_perplexity", "upcycled", "eval_tasks",
          "eval_judge", "contamination", "model_merge", "teacher")
DAYS = ("synthetic",)  # out["synthetic"][dataset][day]
SINGLE = ("deduplicated", "quality_examples", "quality_classifier", "reference_lm", "tokenizer",
          "mix_report", "arena", "eval_leaderboard", "preference_pairs", "trial_leaderboard")
RUNS = ("dense_1", "dense_2", "moe_1")
PHASES = ("web", "instruct")


def flat(out, name):
    m = out[name]
    if name in DAYS:
        return [x for days in m.values() for x in days.values()]
    return list(m.values()) if name in PARTITIONED + PHASED else [m]


def manifests(graph, name):
    return flat(graph.out, name)


def test_every_asset_materialized_with_content_version(graph):
    for name in PARTITIONED + PHASED + DAYS + SINGLE:
        ms = manifests(graph, name)
        assert ms, name
        for man in ms:
            assert (Path(man["uri"]) / "_MANIFEST.json").exists(), name
            assert man["dir"].endswith(man["version"]), "output lives under key/version"
            stored = json.loads((Path(man["uri"]) / "_MANIFEST.json").read_text())
            prov = stored["provenance"]  # what built it: commit, dirty tree, kura and the covered packages
            assert set(prov) == {"git_commit", "git_dirty", "kura_version", "packages"} and prov["kura_version"]
            assert man["input_components"]["code"]["hash"] and "resources" in man["input_components"], name
    assert set(graph.out["data_mix"]) == set(PHASES) == set(graph.out["packed_dataset"])
    assert set(graph.out["checkpoint"]) == set(RUNS) == set(graph.out["eval_perplexity"])
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey(["checkpoint", "moe_1"])).asset_materialization
    assert mat.tags["dagster/data_version"] == graph.out["checkpoint"]["moe_1"]["version"]
    covered = mat.metadata["input_components"].value["code"]
    assert "kura.train.pretrain" in covered["modules"] and "torch" in covered["packages"], covered
    assert mat.metadata["input_components"].value["resources"]["trainer"] == {"backend": "local"}
    assert mat.metadata["changes"].value


def test_every_document_accounted_for(graph):
    for pk, c in graph.out["cleaned"].items():
        raw = graph.out["raw_corpus"][pk]
        assert c["documents_in"] == raw["documents"]
        assert c["kept"] + c["dropped"] == c["documents_in"]
    total_kept = sum(c["kept"] for c in graph.out["cleaned"].values())
    d = graph.out["deduplicated"]
    assert d["documents_in"] == total_kept and d["kept"] + d["duplicates"] == total_kept
    assert d["duplicates"] > 0, "the default corpus plants exact duplicates"
    drops = {}
    for c in graph.out["cleaned"].values():
        for k, v in c["dropped_by_reason"].items():
            drops[k] = drops.get(k, 0) + v
    assert {"doc_too_short", "boilerplate_ads"} <= set(drops), drops


def test_quality_checks_passed(graph):
    keys = [dg.AssetCheckKey(dg.AssetKey("cleaned"), "gx_documents_suite")] + [
        dg.AssetCheckKey(dg.AssetKey(["packed_dataset", p]), "megatron_readback") for p in PHASES]
    recs = graph.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    assert {k: r.status.value for k, r in recs.items()} == {k: "SUCCEEDED" for k in keys}


def test_synthetic_shard_generated_by_vllm(graph):
    syn = graph.syn
    assert syn["backend"] == "vllm" and syn["prompts"] == TINY_DATASET["prompts_per_day"]
    assert syn["dataset"] == "qa" and syn["teacher_name"] == "demo"
    assert syn["kept"] + syn["rejected"] == syn["prompts"] and syn["kept"] > 0
    sidecar = json.loads((Path(syn["uri"]) / "generation.json").read_text())
    assert sidecar["teacher"] == graph.out["teacher"]["demo"]["version"] and sidecar["template_hash"]


def test_mix_phases_pin_versions_budgets_and_replay(graph):
    web, ins = graph.out["data_mix"]["web"], graph.out["data_mix"]["instruct"]
    s = web["summary"]["sources"]
    web_src = "deduplicated[q0.3-1][ppl<=20]"
    assert set(s) == {web_src, "synthetic/qa"}, "the quality bucket and perplexity cut are part of the source label"
    assert s[web_src]["quality_bucket"] == [0.3, None] and s[web_src]["max_perplexity"] == 20
    assert s[web_src]["upstream_versions"] == {"all": graph.out["deduplicated"]["version"]}
    assert s[web_src]["documents_available"] <= graph.out["deduplicated"]["kept"]
    assert s["synthetic/qa"]["upstream_versions"] == {graph.syn_pk: graph.syn["version"]}
    assert abs(web["summary"]["tokens_selected"] - 30000) < 1000
    si = ins["summary"]["sources"]
    sel = "synthetic{recipe=qa_dialogue}"  # a selector over datasets: every qa_dialogue dataset
    assert si[sel]["loss_mask"] == "assistant_only" and si[sel]["epochs"] > 1
    assert si[sel]["upstream_versions"] == {graph.syn_pk: graph.syn["version"]}
    replay, total = si["replay"]["tokens_selected"], ins["summary"]["tokens_selected"]
    assert 0.15 < replay / total < 0.3, "about 20% of the instruct phase replays phase web"


def test_packed_dataset_reads_back_with_megatron(graph):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    p = graph.out["packed_dataset"]["web"]
    blend = json.loads((Path(p["uri"]) / "blend.json").read_text())["train"]
    assert set(blend[1::2]) == {"train_deduplicated_q0.3-1_ppl_20", "train_synthetic_qa"}
    assert math.isclose(sum(map(float, blend[0::2])), 1.0, abs_tol=1e-4)
    ds = IndexedDataset(str(Path(p["uri"]) / "train_deduplicated_q0.3-1_ppl_20"))
    ded = p["train"]["deduplicated[q0.3-1][ppl<=20]"]
    assert len(ds) == ded["sequences"] > 0
    assert all(len(ds[i]) == 65 for i in range(len(ds)))
    assert int(np.max(ds[0])) < p["vocab_size"]
    assert ded["fitting_documents_split"] == 0
    ins = graph.out["packed_dataset"]["instruct"]
    t = ins["train"]["synthetic{recipe=qa_dialogue}"]
    assert 0 < t["loss_tokens"] < t["real_tokens"], "prompt tokens carry no loss"
    mask = IndexedDataset(str(Path(ins["uri"]) / "train_synthetic_recipe_qa_dialogue_mask"))
    assert set(np.unique(mask[0])) <= {0, 1} and len(mask) == t["sequences"]


def test_checkpoints_roll_up_tokens_by_source_along_their_chain(graph):
    """Every checkpoint reports the tokens seen along its whole init_from chain by named source and the synthetic
    share (the upcycle passes dense_2's through), and GPU-hours along the chain (0 on CPU)."""
    cks = graph.out["checkpoint"]
    r1, r2, r3 = (cks[r]["lineage"]["rollup"] for r in RUNS)
    assert abs(r1["tokens"] - cks["dense_1"]["stats"]["train_tokens"]) <= 2
    assert abs(r3["tokens"] - sum(cks[r]["stats"]["train_tokens"] for r in RUNS)) <= 6
    assert {"deduplicated[q0.3-1][ppl<=20]", "synthetic/qa"} <= set(r1["tokens_by_source"])
    assert "synthetic{recipe=qa_dialogue}" in r2["tokens_by_source"], "dense_2 trained on the instruct phase"
    assert all(r3["tokens_by_source"][k] >= n for k, n in r2["tokens_by_source"].items())
    assert 0 < r1["synthetic_share"] < r2["synthetic_share"] < 1 and r3["synthetic_tokens"] > r2["synthetic_tokens"]
    assert json.loads((Path(cks["moe_1"]["uri"]) / "lineage.json").read_text())["rollup"] == r3
    assert cks["moe_1"]["chain_gpu_hours"] == 0.0


def test_checkpoint_chain_describes_itself_and_eval_is_sane(graph):
    cks = graph.out["checkpoint"]
    for run in RUNS:
        ck = Path(cks[run]["uri"])
        for f in ("model.safetensors", "config.json", "tokenizer.model", "tokenizer_hf/tokenizer.json",
                  "lineage.json", "loss_curve.json"):
            assert (ck / f).exists(), (run, f)
    lin = {r: json.loads((Path(cks[r]["uri"]) / "lineage.json").read_text()) for r in RUNS}
    assert lin["dense_1"]["packed_dataset"] == graph.out["packed_dataset"]["web"]["version"]
    assert lin["dense_2"]["packed_dataset"] == graph.out["packed_dataset"]["instruct"]["version"]
    assert lin["dense_1"]["parent"] is None and lin["dense_2"]["parent"] == cks["dense_1"]["version"]
    assert lin["moe_1"]["parent"] == graph.out["upcycled"]["moe_1"]["version"]
    assert lin["moe_1"]["chain"] == ["dense_1", "dense_2", "moe_1"]
    up = graph.out["upcycled"]["moe_1"]
    assert up["lineage"]["upcycled_from"] == cks["dense_2"]["version"]
    assert up["info"]["max_logit_diff_vs_dense"] < 0.05, "small expert noise only"
    assert cks["moe_1"]["stats"]["parameters"] > cks["dense_2"]["stats"]["parameters"]
    assert [r["step"] for r in json.loads((Path(cks["dense_1"]["uri"]) / "loss_curve.json").read_text())][-1] == 5
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey(["checkpoint", "dense_1"])).asset_materialization
    assert "loss_and_lr" in mat.metadata and mat.metadata["train_tokens"].value > 0
    assert mat.metadata["chain"].value == "dense_1"
    for run in RUNS:
        ppl = graph.out["eval_perplexity"][run]["perplexity"]
        assert set(ppl) == set(PHASES) and set(ppl["web"]) == {"ja", "en"}
        for langs in ppl.values():
            for v in langs.values():
                assert 1.0 < v["perplexity"] < v["uniform_baseline"], run


def test_quality_classifier_separates_the_generated_examples(graph):
    qc = graph.out["quality_classifier"]
    assert qc["metrics"]["heldout_auc"] > 0.9 and qc["metrics"]["heldout_examples"] > 50


def test_reference_lm_scores_junk_above_clean_text(graph):
    m = graph.out["reference_lm"]["metrics"]
    assert m["reference_chars"] > 10_000
    assert m["negative_examples_median_ppl"] > m["heldout_reference_median_ppl"] > 1.0


def test_hf_tokenizer_export_loads_and_agrees(graph):
    from transformers import AutoTokenizer

    from kura.tokenize.spm import SpmTokenizer

    tok_dir = Path(graph.out["tokenizer"]["uri"])
    hf = AutoTokenizer.from_pretrained(tok_dir / "hf")
    sp = SpmTokenizer(tok_dir / "tokenizer.model")
    for text in ["今日は東京で歴史を学びました。", "Digits 2026 and  two spaces\n", "未知の字 𠮷 🍣"]:
        assert hf.encode(text, add_special_tokens=False) == sp.encode(text)
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == text
    assert graph.out["tokenizer"]["stats"]["hf_export_id_agreement"] == 1.0


def test_rerun_is_a_noop_with_identical_versions(graph):
    from pipelines.cli import run_pipeline

    again = run_pipeline(graph.instance, graph.defs, day=graph.day, ops_config=TINY_OPS, log=lambda *_: None)
    for name in PARTITIONED + PHASED + DAYS + SINGLE:
        assert [m["dir"] for m in manifests(graph, name)] == [m["dir"] for m in flat(again, name)], name
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey(["checkpoint", "moe_1"])).asset_materialization
    assert mat.metadata["reused_existing_output"].value is True


@pytest.mark.slow
def test_phase_edit_rebuilds_exactly_that_phase_and_downstream(graph):
    """Edit one phase's budget in the mix YAML → only that phase's data_mix is stale → one automation tick
    requests that phase's mix and packed dataset and what depends on them → executing that request runs exactly
    those steps; the other phase is untouched."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from pipelines.definitions import build_definitions

    # the automation sensor ticks continuously; its previous tick (before the edit) remembers code versions
    before = dg.evaluate_automation_conditions(defs=graph.defs, instance=graph.instance)
    assert before.total_requested == 0, "after a full materialization nothing is due"

    write_mix(graph.mix_file, instruct_tokens=2500)
    defs = build_definitions()
    graph_ = defs.resolve_asset_graph()
    keys = [k for k in graph_.get_all_asset_keys() if not graph_.get(k).is_partitioned]
    resolver = get_stale_status_resolver(graph.instance, list(graph_.assets_defs))
    stale = {k.to_user_string() for k in keys if resolver.get_status(k) == StaleStatus.STALE}
    assert stale == {"data_mix/instruct"}

    result = dg.evaluate_automation_conditions(defs=defs, instance=graph.instance, cursor=before.cursor)
    # observable sources (corpus_snapshot, resource/*) are observed on a minute cron: a tick that crosses a minute
    # boundary requests their observation too, which is not a rebuild (CI once crossed one between the two ticks)
    requested = {k.to_user_string() for k in graph_.get_all_asset_keys()
                 if result.get_num_requested(k) > 0 and graph_.get(k).is_materializable}
    expected = {"data_mix/instruct", "packed_dataset/instruct", "mix_report", "checkpoint/dense_2",
                "upcycled/moe_1", "checkpoint/moe_1", *(f"{a}/{r}" for a in ("hf_model", "eval_perplexity")
                                                        for r in ("dense_2", "moe_1")),
                "eval_perplexity/dense_1",  # every perplexity eval reads the held-out sets of both phases
                *(f"{a}/{r}" for a in ("eval_tasks", "eval_judge") for r in ("dense_2", "moe_1")),
                *(f"contamination/{r}" for r in ("dense_1", "dense_2", "moe_1")),  # they read every phase's mix
                "arena", "eval_leaderboard"}
    # unpartitioned post-training assets follow in the same tick; the trial partitions (another partitioning) on the
    # next one, after their base is rebuilt (tests/test_posttrain.py checks a new trial's automation)
    post = {"preference_pairs"}
    assert requested == expected | post

    run = defs.resolve_job_def("model_job").execute_in_process(
        instance=graph.instance, asset_selection=[dg.AssetKey.from_user_string(k) for k in sorted(expected)],
        run_config={"ops": {k: {"config": v} for k, v in TINY_OPS.items() if k.replace("__", "/") in expected}})
    assert run.success
    executed = {e.step_key for e in run.get_step_success_events()}
    assert executed == {k.replace("/", "__") for k in expected}
    new_mix = run.output_for_node("data_mix__instruct")
    assert new_mix["version"] != graph.out["data_mix"]["instruct"]["version"]
    assert new_mix["summary"]["sources"]["synthetic{recipe=qa_dialogue}"]["budget_tokens"] == 2500
    write_mix(graph.mix_file)  # leave the session's mix as it was


def test_synthetic_shard_request_log_and_reject_gate(graph):
    from assets.synthetic import request_log_path
    from kura.io import Storage
    from kura.synth.requestlog import RequestLog

    syn = graph.syn
    assert syn["generated"] + syn["resumed"] == syn["prompts"] and syn["kept"] + syn["rejected"] == syn["prompts"]
    assert syn["reject_rate"] == round(syn["rejected"] / syn["prompts"], 4)
    assert set(syn["rejected_by_reason"]) <= {"unparseable", "starts_with_answer", "no_answer", "empty_turn",
                                              "answer_too_short", "banned_phrase", "truncated", "refusal",
                                              "degenerate_repetition", "wrong_language", "copies_source",
                                              "near_duplicate"}
    log = request_log_path(Storage(str(graph.home / "storage")), graph.syn_pk, graph.out["teacher"]["demo"]["version"])
    assert 0 < len(RequestLog(log).done) <= syn["prompts"], "finished requests are in the durable log"
    ev = graph.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey(["synthetic", "qa"]), "reject_rate_within_limit"))
    assert ev is not None and ev.event.asset_check_evaluation.passed


def test_generation_reports_through_dagster_pipes(graph):
    """The vLLM worker was launched through Dagster Pipes: its progress lines are in the synthetic run's log (the
    same entry point reports the same way from a GPU pod through PipesK8sClient)."""
    runs = graph.instance.get_runs(filters=dg.RunsFilter(job_name="synthetic_job"))
    first = runs[-1]  # the oldest: the graph's own run
    messages = [e.user_message for e in graph.instance.all_logs(first.run_id)]
    assert any("kura.synth.vllm_worker: engine ready" in m for m in messages)
    assert any("kura.synth.vllm_worker: generated" in m for m in messages)


# last in this file on purpose: it adds a synthetic dataset to the session instance that the tests above do not expect
def test_another_dataset_on_another_day_is_gated_by_its_reject_rate(graph):
    """A `problems` dataset spec added beside the graph's (one file) becomes synthetic/problems; its 2026-11-18 shard
    through the synthetic job (vLLM): the demo teacher never learned the `答え: X` format, so every prompt is
    quarantined as unparseable and the blocking gate fails — the shard is recorded, the check says why."""
    import yaml

    from assets.tokenizer import gated_rows
    from kura.io import Storage
    from pipelines.definitions import build_definitions

    spec = Path(os.environ["KURA_SYNTHETIC_DIR"]) / "problems.yaml"
    spec.write_text(yaml.safe_dump({"recipe": "problems", "teacher": "demo", "prompts_per_day": 6,
                                    "sampling": {"max_tokens": 32}}))
    try:
        defs = build_definitions()
    finally:
        spec.unlink()
    key = dg.AssetKey(["synthetic", "problems"])
    r = defs.resolve_job_def("synthetic_job").execute_in_process(
        instance=graph.instance, partition_key="2026-11-18", asset_selection=[key], raise_on_error=False)
    assert not r.success
    [check] = r.get_asset_check_evaluations()
    assert check.check_name == "reject_rate_within_limit" and not check.passed
    assert check.metadata["reject_rate"].value == 1.0
    md = graph.instance.get_latest_materialization_event(key).asset_materialization
    assert md.partition == "2026-11-18" and md.metadata["recipe"].value == "problems"
    assert md.metadata["rejected_by_reason"].data == {"unparseable": 6}
    failed = r.output_for_node("synthetic__problems")
    assert failed["gate_passed"] is False
    st = Storage(str(graph.home / "storage"))
    assert gated_rows(st, {"problems|2026-11-18": failed}) == [], "a shard that failed its gate feeds nothing"
    assert gated_rows(st, {graph.syn_pk: graph.syn})
    from pipelines.failures import blocked_shard, explain_failure

    assert blocked_shard(r) == check.metadata["explanation"].value, "the demo goes on past a gate-failed shard"
    line = explain_failure("synthetic_job", "2026-11-18", r, graph.home / "logs")
    assert "\n" not in line and line.startswith("kura: synthetic_job[2026-11-18] failed: synthetic shard "
                                                 "problems[2026-11-18]: the teacher's outputs were rejected at 100% "
                                                 "(limit "), line
    assert "unparseable 6" in line and "stronger teacher" in line and "max_reject_rate in problems.yaml" in line
    log = Path(line.rsplit("Full trace: ", 1)[1])
    assert log.parent == graph.home / "logs" and "reject_rate_within_limit" in log.read_text()
