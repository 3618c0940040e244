"""Teachers and synthetic datasets as specs (pipelines/teachers, pipelines/synthetic): levels 1 and 2.

Pure: the shipped specs and examples load; bad specs are refused naming file and field; a mix names datasets and
selects them by recipe / teacher / tags / days. Single assets: a local Hugging Face folder becomes a content-hashed
teacher asset; editing one dataset spec changes only that dataset's code version.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from kura.synth.spec import SpecError, load_datasets, load_teachers, select_datasets
from pipelines.settings import PIPELINES_DIR


def write(folder: Path, specs: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_shipped_specs_and_examples_load():
    teachers = load_teachers(PIPELINES_DIR / "teachers")
    datasets = load_datasets(PIPELINES_DIR / "synthetic", teachers)
    assert {d.teacher for d in datasets.values()} == {"demo", "demo_small"}, "the demo shows two teachers"
    ex_teachers = load_teachers(PIPELINES_DIR / "teachers" / "examples", check_folders=False)
    examples = load_datasets(PIPELINES_DIR / "synthetic" / "examples", ex_teachers)
    assert {d.recipe for d in examples.values()} == {"rewrite", "problems", "instruct_seeds", "reanswer", "chain",
                                                     "conversation", "translate", "similar_problems"}
    calm3 = ex_teachers["calm3"]
    assert calm3.kind == "endpoint" and calm3.api == "chat" and calm3.gpus == 2
    assert "api_key_env" not in calm3.identity() and "concurrency" not in calm3.identity()
    assert examples["textbook_calm3"].sampling.top_k == 50
    assert examples["textbook_calm3"].build_recipe().style == "textbook"


@pytest.mark.parametrize("teacher, dataset, message", [
    ({"kind": "endpoint"}, None, r"teacher spec .*t\.yaml: kind endpoint needs model"),
    ({"kind": "trained", "train": {"hidden_size": 64, "num_heads": 4}}, None, r"t\.yaml: train: .*head_dim"),
    ({"kind": "hf_folder", "path": "nowhere"}, None, r"t\.yaml: path: .*nowhere is not a folder"),
    ({"kind": "trained", "colour": "red"}, None, r"t\.yaml: colour: Extra inputs are not permitted"),
    ({"kind": "trained"}, {"recipe": "qa_dialogue", "teacher": "gpt"}, r"d\.yaml: teacher: 'gpt' names no teacher"),
    ({"kind": "trained"}, {"recipe": "haiku", "teacher": "t"}, r"d\.yaml: recipe: unknown kind 'haiku' \(known: "),
    ({"kind": "trained"}, {"recipe": "rewrite", "teacher": "t", "params": {"style": "poem"}},
     r"d\.yaml: params\.style: Input should be 'textbook' or 'dialogue'"),
    ({"kind": "trained"}, {"recipe": "chain", "teacher": "t", "params": {"topix": ["a"]}},
     r"d\.yaml: params\.topix: Extra inputs are not permitted"),
    ({"kind": "trained"}, {"recipe": "qa_dialogue", "teacher": "t", "sampling": {"temprature": 1}},
     r"d\.yaml: sampling\.temprature"),
])
def test_bad_specs_are_refused_with_file_and_field(tmp_path, teacher, dataset, message):
    teachers = write(tmp_path / "teachers", {"t": teacher})
    with pytest.raises(SpecError, match=message):
        t = load_teachers(teachers)
        load_datasets(write(tmp_path / "synthetic", {"d": dataset} if dataset else {}), t)


def test_a_folder_without_weights_and_an_unknown_run_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    write(tmp_path / "t", {"m": {"kind": "hf_folder", "path": "../m"}, "r": {"kind": "kura_run", "run": "dense_9"}})
    with pytest.raises(SpecError, match=r"m\.yaml: path: .*holds no Hugging Face model \(needs config\.json and one "
                                        r"of model\.safetensors"):
        load_teachers(tmp_path / "t")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(SpecError, match=r"r\.yaml: run: 'dense_9' names no run spec \(\['dense_1'\]\)"):
        load_teachers(tmp_path / "t", runs={"dense_1"})


def test_mix_sources_name_and_select_datasets(tmp_path):
    from assets.mix import load_mix_spec, source_datasets, source_shards
    from kura.mix.spec import MixError

    teachers = load_teachers(write(tmp_path / "t", {"a": {"kind": "trained"}, "b": {"kind": "trained"}}))
    datasets = load_datasets(write(tmp_path / "s", {
        "qa_a": {"recipe": "qa_dialogue", "teacher": "a", "tags": ["qa"]},
        "qa_b": {"recipe": "qa_dialogue", "teacher": "b", "tags": ["qa", "ja"]},
        "math_b": {"recipe": "problems", "teacher": "b", "tags": ["math"]}}), teachers)
    assert select_datasets(datasets, teacher=["b"]) == ["math_b", "qa_b"]
    assert select_datasets(datasets, recipe=["qa_dialogue"], tags=["ja"]) == ["qa_b"]

    def mix(*sources):
        f = tmp_path / "mix.yaml"
        f.write_text(yaml.safe_dump({"name": "m", "sequence_length": 64, "sources": [
            {**s, "tokens": 100} for s in sources]}))
        return load_mix_spec(f, datasets)

    m = mix({"source": "synthetic/qa_a"},
            {"source": "synthetic", "teacher": ["b"], "days": ["2026-11-02", "2026-11-03"]})
    named, sel = m.phases[0].sources
    assert source_datasets(named, datasets) == ["qa_a"] and source_datasets(sel, datasets) == ["math_b", "qa_b"]
    assert sel.label == "synthetic{teacher=b,days=2026-11-02..2026-11-03}"
    shards = {f"{d}|2026-11-0{i}": {"version": f"{d}{i}"} for d in datasets for i in (1, 2, 3, 4)}
    assert sorted(source_shards(["math_b", "qa_b"], sel.days, shards)) == [
        "math_b|2026-11-02", "math_b|2026-11-03", "qa_b|2026-11-02", "qa_b|2026-11-03"]
    with pytest.raises(MixError, match=r"mix mix\.yaml: phase 'm': source 'synthetic/qa_c' does not exist"):
        mix({"source": "synthetic/qa_c"})
    with pytest.raises(MixError, match=r"phase 'm': sources\.0 \(synthetic\{teacher=c\}\): the selector matches no "
                                       r"synthetic dataset \(datasets: math_b recipe=problems teacher=b"):
        mix({"source": "synthetic", "teacher": ["c"]})
    with pytest.raises(MixError, match=r"recipe / teacher / tags select among synthetic datasets"):
        mix({"source": "deduplicated", "tags": ["qa"]})


def tiny_hf_llama(folder: Path) -> Path:
    """A 2-layer Llama in Hugging Face format, created here (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_folder_teacher_is_content_hashed_and_copied(tmp_path):
    from assets.synthetic import build_teacher
    from resources import StorageResource

    folder = tiny_hf_llama(tmp_path / "hf")
    [spec] = load_teachers(write(tmp_path / "t", {"llama": {"kind": "hf_folder", "path": str(folder),
                                                            "licence": "llama3"}})).values()
    asset = build_teacher(spec)
    res = {"storage": StorageResource(root=str(tmp_path / "storage"), cache_dir=str(tmp_path / "cache"))}
    inst = dg.DagsterInstance.ephemeral()
    first = dg.materialize([asset], instance=inst, resources=res).output_for_node("teacher__llama")
    copied = Path(first["uri"])
    assert (copied / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert first["content"] and first["input_components"]["config"]["content"] == first["content"]
    again = dg.materialize([asset], instance=inst, resources=res).output_for_node("teacher__llama")
    assert again["dir"] == first["dir"], "the same folder: the same teacher version"
    (folder / "config.json").write_text((folder / "config.json").read_text().replace('"rms_norm_eps": 1e-06',
                                                                                     '"rms_norm_eps": 1e-05'))
    changed = dg.materialize([asset], instance=inst, resources=res).output_for_node("teacher__llama")
    assert changed["content"] != first["content"] and changed["version"] != first["version"]


def test_editing_one_spec_changes_only_its_code_version(tmp_path):
    from pipelines.definitions import build_definitions
    from pipelines.settings import Settings

    syn = shutil.copytree(PIPELINES_DIR / "synthetic", tmp_path / "synthetic", ignore=shutil.ignore_patterns("ex*"))
    teachers = shutil.copytree(PIPELINES_DIR / "teachers", tmp_path / "teachers", ignore=shutil.ignore_patterns("ex*"))

    def versions():
        s = Settings(home=tmp_path / "home", synthetic_dir=syn, teachers_dir=teachers,
                     mix_file=PIPELINES_DIR / "mixes" / "default.yaml")
        graph = build_definitions(s).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()
                if graph.get(k).is_materializable}

    before = versions()
    spec = syn / "qa_web_small.yaml"
    spec.write_text(spec.read_text().replace("prompts_per_day: 64", "prompts_per_day: 80"))
    after = versions()
    assert {k for k in before if before[k] != after[k]} == {"synthetic/qa_web_small"}
    spec.write_text(spec.read_text().replace("tags: [qa, rewrite]", "tags: [qa, rewrite, small]"))
    assert versions() == after, "tags select datasets in mixes; they change no shard"
    teacher = teachers / "demo_small.yaml"
    teacher.write_text(teacher.read_text().replace("seed: 1", "seed: 2"))
    edited = versions()  # the teacher's new version then reaches its datasets' shards as data (their input version)
    assert {k for k in after if after[k] != edited[k]} == {"teacher/demo_small"}
