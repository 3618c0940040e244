"""Level 3: the whole graph on tiny data, in-process, through Dagster."""
from __future__ import annotations

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from tests.conftest import TINY_OPS, write_mix

ALL = ["raw_corpus", "cleaned", "deduplicated", "teacher_model", "synthetic", "tokenizer", "data_mix",
       "packed_dataset", "base_model", "eval_perplexity"]
DOWNSTREAM_OF_MIX = {"data_mix", "packed_dataset", "base_model", "eval_perplexity"}


def latest(instance, name, partition=None):
    ev = instance.get_latest_materialization_event(dg.AssetKey(name)) if partition is None else None
    if partition is not None:
        recs = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(name),
                                                                     asset_partitions=[partition]), limit=1)
        ev = recs.records[0].event_log_entry
    return ev.asset_materialization


def test_every_asset_materialized_with_content_version(graph):
    for name in ALL:
        m = graph.out[name]
        manifests = list(m.values()) if name in ("raw_corpus", "cleaned", "synthetic") else [m]
        assert manifests, name
        for man in manifests:
            assert (Path(man["uri"]) / "_MANIFEST.json").exists(), name
            assert man["dir"].endswith(man["version"]), "output lives under key/version"
    # the DataVersion Dagster recorded is the content hash of the output folder
    mat = latest(graph.instance, "base_model")
    assert mat.tags["dagster/data_version"] == graph.out["base_model"]["version"]
    assert dg.AssetKey("base_model") in graph.defs.resolve_asset_graph().get_all_asset_keys()


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
    assert {"too_short", "boilerplate"} <= set(drops), drops


def test_quality_checks_passed(graph):
    for pk in graph.out["cleaned"]:
        rec = graph.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("cleaned"), "gx_documents_suite")])
        assert rec
    r = graph.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("packed_dataset"), "megatron_readback")])
    ev = list(r.values())[0]
    assert ev.status.value == "SUCCEEDED"


def test_synthetic_shard_generated_by_vllm(graph):
    syn = graph.out["synthetic"][graph.day]
    assert syn["backend"] == "vllm" and syn["prompts"] == TINY_OPS["synthetic"]["docs_per_day"]
    assert syn["kept"] + syn["rejected"] == syn["prompts"] and syn["kept"] > 0
    sidecar = json.loads((Path(syn["uri"]) / "generation.json").read_text())
    assert sidecar["teacher"] == graph.out["teacher_model"]["version"] and sidecar["template_hash"]


def test_packed_dataset_reads_back_with_megatron(graph):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    p = graph.out["packed_dataset"]
    blend = json.loads((Path(p["uri"]) / "blend.json").read_text())["train"]
    prefixes = blend[1::2]
    assert set(prefixes) == {"train_deduplicated", "train_synthetic"}
    assert math.isclose(sum(map(float, blend[0::2])), 1.0, abs_tol=1e-4)
    ds = IndexedDataset(str(Path(p["uri"]) / "train_deduplicated"))
    assert len(ds) == p["train"]["deduplicated"]["sequences"] > 0
    assert all(len(ds[i]) == 65 for i in range(len(ds)))
    assert int(np.max(ds[0])) < p["vocab_size"]


def test_checkpoint_describes_itself_and_eval_is_sane(graph):
    ck = Path(graph.out["base_model"]["uri"])
    for f in ("model.safetensors", "config.json", "tokenizer.model", "lineage.json", "loss_curve.json"):
        assert (ck / f).exists(), f
    lineage = json.loads((ck / "lineage.json").read_text())
    assert lineage["packed_dataset"] == graph.out["packed_dataset"]["version"]
    assert lineage["data_mix"] == graph.out["data_mix"]["version"]
    ppl = graph.out["eval_perplexity"]["perplexity"]
    assert set(ppl) == {"ja", "en"}
    for v in ppl.values():
        assert 1.0 < v["perplexity"] < v["uniform_baseline"]


def test_rerun_is_a_noop_with_identical_versions(graph):
    from pipelines.cli import run_pipeline

    again = run_pipeline(graph.instance, graph.defs, day=graph.day, ops_config=TINY_OPS, log=lambda *_: None)
    for name in ALL:
        a, b = graph.out[name], again[name]
        if name in ("raw_corpus", "cleaned", "synthetic"):
            assert {k: v["dir"] for k, v in a.items()} == {k: v["dir"] for k, v in b.items()}
        else:
            assert a["dir"] == b["dir"] and a["version"] == b["version"], name
    mat = latest(graph.instance, "base_model")
    assert mat.metadata["reused_existing_output"].value is True


@pytest.mark.slow
def test_mix_edit_rebuilds_exactly_the_mix_and_downstream(graph):
    """Edit the mix YAML → only data_mix is stale → one automation tick requests data_mix and everything below
    it → materializing that request executes exactly those four steps."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from pipelines.definitions import build_definitions

    # the automation sensor ticks continuously; its previous tick (before the edit) remembers code versions
    before = dg.evaluate_automation_conditions(defs=graph.defs, instance=graph.instance)
    assert before.total_requested == 0, "after a full materialization nothing is due"

    write_mix(graph.mix_file, total_tokens=24000)
    defs = build_definitions()
    assets = list(defs.resolve_asset_graph().assets_defs)
    resolver = get_stale_status_resolver(graph.instance, assets)
    keys = [dg.AssetKey(n) for n in ALL if n not in ("raw_corpus", "cleaned", "synthetic")]
    stale = {k.path[-1] for k in keys if resolver.get_status(k) == StaleStatus.STALE}
    assert stale == {"data_mix"}

    result = dg.evaluate_automation_conditions(defs=defs, instance=graph.instance, cursor=before.cursor)
    requested = {k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys()
                 if result.get_num_requested(k) > 0}
    assert requested == DOWNSTREAM_OF_MIX

    run = defs.resolve_job_def("model_job").execute_in_process(
        instance=graph.instance, asset_selection=[dg.AssetKey(k) for k in sorted(requested)],
        run_config={"ops": {k: {"config": v} for k, v in TINY_OPS.items() if k in requested}})
    assert run.success
    executed = {e.step_key for e in run.get_step_success_events()}
    assert executed == DOWNSTREAM_OF_MIX
    new_mix = run.output_for_node("data_mix")
    assert new_mix["version"] != graph.out["data_mix"]["version"]
    assert new_mix["summary"]["total_tokens"] == 24000
    write_mix(graph.mix_file)  # leave the session's mix as it was
