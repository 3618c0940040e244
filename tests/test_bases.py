"""Imported base models: level 1 (Hugging Face Llama / Mixtral folders → kura checkpoints with matching logits;
what kura cannot represent is refused naming the field), level 2 (`base_model/<name>` on the graph's own exported
dense_1 is the same model, and a run continues it through Dagster)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kura.train.import_hf import HFImportError, import_hf, load_bases, logits_check, model_spec_from_hf
from pipelines.settings import PIPELINES_DIR

ROOT = PIPELINES_DIR.parent


def tiny_hf(folder: Path, kind: str = "llama", **over) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2, **over))
        with torch.no_grad():  # a trained router is not near-uniform: give routing something to decide
            for n, p in model.named_parameters():
                if n.endswith("gate.weight"):
                    p.normal_(0, 1.0)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, **over))
    with torch.no_grad():  # larger weights than the init's 0.02, so the logits are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind, over", [("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                        ("mixtral", {})])
def test_hf_folders_import_with_logits_matching_transformers(tmp_path, kind, over):
    src = tiny_hf(tmp_path / "hf", kind, **over)
    info = import_hf(src, tmp_path / "kura", "base")
    assert info["architecture"] == ("MixtralForCausalLM" if kind == "mixtral" else "LlamaForCausalLM")
    assert info["tied_embeddings"] == bool(over.get("tie_word_embeddings"))
    assert info["model"]["num_query_groups"] == 2 and info["vocab_size"] == 97
    assert logits_check(src, tmp_path / "kura") < 1e-4
    # the check sees a wrong conversion: swap the two layers' attention output projections
    from safetensors.torch import load_file, save_file

    st = load_file(str(tmp_path / "kura" / "model.safetensors"))
    a, b = (f"decoder.layers.{i}.self_attention.linear_proj.weight" for i in (0, 1))
    st[a], st[b] = st[b], st[a]
    save_file(st, str(tmp_path / "kura" / "model.safetensors"))
    assert logits_check(src, tmp_path / "kura") > 1e-2


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias/mlp_bias: kura's layers have no biases"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_what_kura_cannot_represent_is_refused_naming_the_field(change, message):
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 97, **change}
    with pytest.raises(HFImportError, match=rf"x/config\.json: .*{message}"):
        model_spec_from_hf(cfg, "x/config.json")


def test_base_specs_and_runs_on_them_are_checked_when_the_definitions_load(tmp_path):
    from kura.synth.spec import SpecError
    from kura.train.spec import SpecError as RunSpecError
    from kura.train.spec import load_run_specs

    (tmp_path / "empty").mkdir()
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "b.yaml").write_text(f"path: {tmp_path / 'empty'}\n")
    with pytest.raises(SpecError, match=r"bases/b\.yaml: path: .*empty holds no Hugging Face model"):
        load_bases(tmp_path / "bases", ROOT)
    tiny_hf(tmp_path / "hf")
    (tmp_path / "bases" / "b.yaml").write_text(f"path: {tmp_path / 'hf'}\nlicence: apache-2.0\n")
    bases = {n: s.model_spec(ROOT) for n, s in load_bases(tmp_path / "bases", ROOT).items()}
    runs = tmp_path / "runs"
    runs.mkdir()
    run = {"name": "cont", "phase": "web", "init_from": "base_model/b", "train_iters": 2,
           "model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                     "ffn_hidden_size": 96, "norm_epsilon": 1e-6}}
    (runs / "cont.yaml").write_text(yaml.safe_dump(run))
    assert [r.name for r in load_run_specs(runs, ["web"], bases)] == ["cont"]
    with pytest.raises(RunSpecError, match=r"init_from 'base_model/b' names no base model spec \(known: none\)"):
        load_run_specs(runs, ["web"], {})
    (runs / "cont.yaml").write_text(yaml.safe_dump({**run, "model": {**run["model"], "ffn_hidden_size": 128}}))
    with pytest.raises(RunSpecError, match=r"model differs from base_model/b .*'ffn_hidden_size': \(128, 96\)"):
        load_run_specs(runs, ["web"], bases)


@pytest.mark.slow
def test_base_model_is_the_same_model_and_a_run_continues_it(graph, tmp_path, monkeypatch):
    """The graph's dense_1, exported to Hugging Face and imported back as `base_model/d1`, is bit-for-bit the
    checkpoint it came from (its logits check passes); `checkpoint/from_base` (init_from base_model/d1) starts at
    dense_1's loss, not at a fresh model's, and its lineage chain starts at the base."""
    import shutil

    import dagster as dg
    from safetensors.torch import load_file

    from pipelines.definitions import build_definitions

    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "d1.yaml").write_text(yaml.safe_dump(
        {"path": graph.out["hf_model"]["dense_1"]["uri"], "licence": "apache-2.0"}))
    runs = tmp_path / "runs"
    shutil.copytree(PIPELINES_DIR / "runs", runs)
    d1 = yaml.safe_load((runs / "dense_1.yaml").read_text())
    (runs / "from_base.yaml").write_text(yaml.safe_dump(
        {"name": "from_base", "phase": "web", "init_from": "base_model/d1", "model": d1["model"],
         "optim": d1["optim"], "train_iters": 2, "global_batch_size": 8, "micro_batch_size": 8, "log_interval": 1}))
    monkeypatch.setenv("KURA_BASES_DIR", str(tmp_path / "bases"))
    monkeypatch.setenv("KURA_RUNS_DIR", str(runs))
    defs = build_definitions()
    inst = dg.DagsterInstance.ephemeral()

    def run(key: str, **kw):
        return dg.materialize(list(defs.assets), selection=[dg.AssetKey.from_user_string(key)], instance=inst,
                              resources=defs.resources, **kw)

    r = run("base_model/d1")
    base = r.output_for_node("base_model__d1")
    [check] = r.get_asset_check_evaluations()
    assert check.passed and base["logits_max_abs_diff"] < 1e-4 and base["architecture"] == "LlamaForCausalLM"
    want = load_file(str(Path(graph.out["checkpoint"]["dense_1"]["uri"]) / "model.safetensors"))
    got = load_file(str(Path(base["uri"]) / "model.safetensors"))
    assert want.keys() == got.keys() and all(bool((want[k] == got[k]).all()) for k in want), "export → import"
    assert json.loads((Path(base["uri"]) / "hf" / "config.json").read_text())["model_type"] == "llama"

    ck = run("checkpoint/from_base").output_for_node("checkpoint__from_base")
    lineage = ck["lineage"]
    assert lineage["chain"] == ["base_model/d1", "from_base"] and lineage["parent"] == base["version"]
    d1_stats = graph.out["checkpoint"]["dense_1"]["stats"]
    assert ck["stats"]["first_loss"] < d1_stats["first_loss"] - 0.5, (ck["stats"]["first_loss"], d1_stats)
    assert abs(ck["stats"]["first_loss"] - d1_stats["final_loss"]) < 0.6


def test_a_phase_naming_an_unknown_base_tokenizer_or_replaying_across_tokenizers_is_refused(tmp_path):
    from assets.mix import load_mix_spec
    from kura.mix.spec import MixError

    mix = {"name": "m", "phases": [
        {"name": "web", "sequence_length": 64, "sources": [{"source": "deduplicated", "tokens": 100}]},
        {"name": "cont", "sequence_length": 64, "tokenizer": "base_model/llm_jp", "replay_fraction": 0.2,
         "sources": [{"source": "deduplicated", "tokens": 100}]}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mix))
    with pytest.raises(MixError, match=r"phase 'cont': tokenizer: 'base_model/llm_jp' names no base model "
                                       r"\(known: none"):
        load_mix_spec(tmp_path / "m.yaml", {}, {}, set())
    with pytest.raises(MixError, match=r"phase 'cont': replays phase 'web', which packs with another tokenizer"):
        load_mix_spec(tmp_path / "m.yaml", {}, {}, {"llm_jp"})
    mix["phases"][1]["replay_fraction"] = 0
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mix))
    assert load_mix_spec(tmp_path / "m.yaml", {}, {}, {"llm_jp"}).phases[1].tokenizer == "base_model/llm_jp"


@pytest.mark.slow
def test_a_phase_packs_with_the_base_models_own_tokenizer_and_a_run_continues_the_base(graph, tmp_path,
                                                                                      monkeypatch):
    """A base with a tokenizer of its own (a byte-level BPE of another size than kura's): the phase that names it
    packs with it (vocabulary and ids of the base), the run on that phase continues the base, and its export
    carries the base's tokenizer."""
    import shutil

    import dagster as dg
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kura.synth.teacher import train_tokenizer
    from pipelines.definitions import build_definitions

    texts = pq.read_table(Path(graph.out["deduplicated"]["uri"]) / "documents.parquet",
                          columns=["text"]).column("text").to_pylist()[:400]
    folder = tmp_path / "own"
    tok = train_tokenizer(texts, 600, folder)
    torch.manual_seed(0)
    arch = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
            "ffn_hidden_size": 128, "norm_epsilon": 1e-6}
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "own.yaml").write_text(yaml.safe_dump({"path": str(folder)}))
    mix = yaml.safe_load(graph.mix_file.read_text())
    mix["phases"].append({"name": "base_web", "sequence_length": 64, "tokenizer": "base_model/own",
                          "sources": [{"source": "deduplicated", "tokens": 6000, "max_epochs": 4}]})
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(mix))
    runs = tmp_path / "runs"
    shutil.copytree(PIPELINES_DIR / "runs", runs)
    (runs / "on_base.yaml").write_text(yaml.safe_dump(
        {"name": "on_base", "phase": "base_web", "init_from": "base_model/own", "model": arch, "train_iters": 2,
         "global_batch_size": 8, "micro_batch_size": 8, "log_interval": 1}))
    for k, v in (("BASES_DIR", tmp_path / "bases"), ("RUNS_DIR", runs), ("MIX_FILE", tmp_path / "mix.yaml")):
        monkeypatch.setenv(f"KURA_{k}", str(v))
    defs = build_definitions()
    inst = dg.DagsterInstance.ephemeral()

    def run(key: str):
        return dg.materialize(list(defs.assets), selection=[dg.AssetKey.from_user_string(key)], instance=inst,
                              resources=defs.resources)

    base = run("base_model/own").output_for_node("base_model__own")
    assert base["vocab_size"] == len(tok) != graph.out["packed_dataset"]["web"]["vocab_size"]
    run("data_mix/base_web")
    r = run("packed_dataset/base_web")
    packed = r.output_for_node("packed_dataset__base_web")
    assert all(c.passed for c in r.get_asset_check_evaluations()), "megatron readback with the base's vocabulary"
    assert packed["vocab_size"] == len(tok) and packed["train_tokens"] > 0
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = next(iter(packed["train"].values()))["prefix"]
    ds = IndexedDataset(str(Path(packed["uri"]) / prefix))  # kept referenced: its arrays are views of an mmap
    ids = [int(x) for x in list(ds[0][:24])]
    del ds
    decoded = tok.decode([i for i in ids if i not in (tok.eos_token_id, tok.pad_token_id)])
    assert decoded.strip() and any(decoded.strip()[:8] in t for t in texts), decoded
    ck = run("checkpoint/on_base").output_for_node("checkpoint__on_base")
    assert ck["lineage"]["chain"] == ["base_model/own", "on_base"] and ck["lineage"]["tokenizer"] == base["version"]
    hf = run("hf_model/on_base").output_for_node("hf_model__on_base")
    assert len(AutoTokenizer.from_pretrained(hf["uri"])) == len(tok)
    evals = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
             and dg.AssetKey(["eval_perplexity", "on_base"]) in a.keys]
    assert {k.path[-1] for k in evals[0].dependency_keys if k.path[0] == "packed_dataset"} == {"base_web"}, \
        "a run is evaluated on the held-out sets packed with its own tokenizer only"
