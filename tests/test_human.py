"""Human-written datasets: level 1 (every line of a file accounted for, bad lines with file:line; specs, mixes and
trials naming collections checked), level 2 (the `human/<name>` asset and its blocking check; a DPO trial on a
human preference collection, on the graph's base model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kura.human import HumanDatasetSpec, load_human, read_human
from kura.synth.spec import SpecError
from pipelines.settings import PIPELINES_DIR

ROOT = PIPELINES_DIR.parent


def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x, ensure_ascii=False).encode()) + b"\n"
                              for x in lines))
    return path


def test_every_line_is_a_record_or_a_quarantined_line_with_file_and_line(tmp_path):
    f = write_lines(tmp_path / "mixed.jsonl", [
        {"instruction": "富士山の高さは？", "input": "", "output": "3776メートルです。"},
        {"instruction": "要約して", "input": "東京は日本の首都です。", "output": "東京は首都。"},
        {"messages": [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "こんにちは"},
                      {"role": "assistant", "content": "こんにちは。何をお手伝いしましょうか。"}]},
        {"conversations": [{"from": "human", "value": "寿司とは？"}, {"from": "gpt", "value": "酢飯の料理です。"}]},
        b'{"instruction": "\xff\xfe", "output": "x"}',
        b'{"instruction": "unterminated',
        [1, 2],
        {"instruction": "答えのない指示"},
        {"messages": [{"role": "assistant", "content": "先に答え"}, {"role": "user", "content": "後から質問"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        b"",
    ])
    spec = HumanDatasetSpec(name="mixed", kind="instruction", path=str(f))
    data = read_human(f, spec, shown_as="data/mixed.jsonl")
    assert data.lines == 10 and len(data.records) + len(data.bad) == data.lines
    assert [r["source_doc_id"] for r in data.records] == [f"data/mixed.jsonl:{n}" for n in (1, 2, 3, 4)]
    assert [b["reason"] for b in data.bad] == [
        "data/mixed.jsonl:5: not valid UTF-8 (byte 17)",
        "data/mixed.jsonl:6: not JSON (Unterminated string starting at, column 17)",
        "data/mixed.jsonl:7: not a JSON object",
        "data/mixed.jsonl:8: missing field 'output'",
        "data/mixed.jsonl:9: messages: roles must alternate user, assistant, … (after an optional system turn); "
        "got ['assistant', 'user']",
        "data/mixed.jsonl:10: messages[1]: empty turn"]
    two = json.loads(data.records[1]["turns"])
    assert two[0]["content"] == "要約して\n\n東京は日本の首都です。" and data.records[1]["text"].startswith("user: 要約して")
    assert json.loads(data.records[3]["turns"])[1] == {"role": "assistant", "content": "酢飯の料理です。"}
    dolly = write_lines(tmp_path / "dolly.jsonl", [{"instruction": "a", "context": "b", "response": "c"}])
    d = read_human(dolly, HumanDatasetSpec(name="d", kind="instruction", path=str(dolly),
                                           fields={"input": "context", "output": "response"}), None)
    assert json.loads(d.records[0]["turns"]) == [{"role": "user", "content": "a\n\nb"},
                                                 {"role": "assistant", "content": "c"}]


def test_preference_shapes_and_their_faults(tmp_path):
    f = write_lines(tmp_path / "prefs.jsonl", [
        {"prompt": "日本の首都は？", "chosen": "東京です。", "rejected": "大阪です。"},
        {"chosen": [{"role": "user", "content": "1+1は？"}, {"role": "assistant", "content": "2です。"}],
         "rejected": [{"role": "user", "content": "1+1は？"}, {"role": "assistant", "content": "3です。"}]},
        {"messages": [{"role": "user", "content": "挨拶して"}, {"role": "assistant", "content": "こんにちは"},
                      {"role": "user", "content": "もう一度"}], "chosen": "こんにちは！", "rejected": "いやです。"},
        {"prompt": "同じ", "chosen": "同じ答え", "rejected": "同じ答え"},
        {"chosen": "a", "rejected": "b"},
    ])
    data = read_human(f, HumanDatasetSpec(name="p", kind="preference", path=str(f)), "prefs.jsonl")
    assert [p["prompt"] for p in data.pairs] == ["日本の首都は？", "1+1は？", "もう一度"]
    assert json.loads(data.pairs[2]["prompt_turns"])[1]["content"] == "こんにちは" and data.pairs[0]["prompt_turns"] is None
    assert [b["reason"] for b in data.bad] == [
        "prefs.jsonl:4: chosen equals rejected",
        "prefs.jsonl:5: missing field 'prompt' (or 'messages', or conversations as chosen / rejected)"]
    assert json.loads(data.records[0]["turns"])[-1] == {"role": "assistant", "content": "東京です。"}, \
        "the chosen side is the collection's conversation (SFT, mixes)"


def test_shipped_collections_load_clean_and_bad_specs_are_refused(tmp_path):
    humans = load_human(PIPELINES_DIR / "human", ROOT)
    assert {h: s.kind for h, s in humans.items()} == {"ja_instruct": "instruction", "ja_preferences": "preference"}
    for h in humans.values():
        data = read_human(h.file(ROOT), h)
        assert data.bad == [] and data.records, h.name
    (tmp_path / "x.yaml").write_text("kind: instruction\npath: nowhere.jsonl\n")
    with pytest.raises(SpecError, match=r"human dataset spec .*x\.yaml: path: .*nowhere\.jsonl is not a file"):
        load_human(tmp_path, ROOT)
    (tmp_path / "x.yaml").write_text("kind: instructions\npath: nowhere.jsonl\n")
    with pytest.raises(SpecError, match=r"x\.yaml: kind: Input should be 'instruction' or 'preference'"):
        load_human(tmp_path, ROOT)
    v1 = humans["ja_instruct"].version_text(ROOT)
    moved = humans["ja_instruct"].model_copy(update={"tags": ["x"], "licence": "other", "max_bad_fraction": 0.5})
    assert moved.version_text(ROOT) == v1, "tags, licence and the gate change no record"


def test_mixes_and_trials_name_collections_and_unknown_names_are_refused(tmp_path):
    from assets.mix import load_mix_spec
    from kura.mix.spec import MixError
    from kura.train.trials import PostTrainingError, TrialSpec, check_trial_data, trial_humans

    humans = load_human(PIPELINES_DIR / "human", ROOT)
    mix = {"name": "m", "phases": [{"name": "sft", "sequence_length": 64, "sources": [
        {"source": "human/ja_instruct", "tokens": 100, "chat_template": "plain", "loss_mask": "assistant_only"}]}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mix))
    assert load_mix_spec(tmp_path / "m.yaml", {}, humans).phases[0].sources[0].label == "human/ja_instruct"
    mix["phases"][0]["sources"][0]["source"] = "human/dolly"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(mix))
    with pytest.raises(MixError, match=r"human/dolly.*human/ja_instruct"):
        load_mix_spec(tmp_path / "m.yaml", {}, humans)

    sft = TrialSpec(name="s", base="dense_2", method="sft", data=["synthetic/qa", "human/ja_instruct"])
    dpo = TrialSpec(name="d", base="dense_2", method="dpo", preferences="human/ja_preferences")
    check_trial_data({"s": sft, "d": dpo}, {"qa": None}, humans)
    assert trial_humans(sft) == {"ja_instruct"} and trial_humans(dpo) == {"ja_preferences"}
    with pytest.raises(PostTrainingError, match=r"trial s: data: \['human/oasst'\] names no dataset"):
        check_trial_data({"s": sft.model_copy(update={"data": ["human/oasst"]})}, {}, humans)
    with pytest.raises(PostTrainingError, match=r"trial d: preferences: 'human/ja_instruct' is neither .* "
                                                r"\(known: human/ja_preferences\)"):
        check_trial_data({"d": dpo.model_copy(update={"preferences": "human/ja_instruct"})}, {}, humans)


def _human_defs(tmp_path, monkeypatch, specs: dict, trials: dict | None = None):
    import dagster as dg

    from pipelines.definitions import build_definitions

    folder = tmp_path / "human"
    folder.mkdir()
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("KURA_HUMAN_DIR", str(folder))
    # the default mix names human/ja_instruct: keep it (the shipped spec) beside the test's collections
    (folder / "ja_instruct.yaml").write_text((PIPELINES_DIR / "human" / "ja_instruct.yaml").read_text())
    if trials is not None:
        (tmp_path / "post").mkdir()
        (tmp_path / "post" / "t.yaml").write_text(yaml.safe_dump({"trials": trials}))
        monkeypatch.setenv("KURA_POST_TRAINING_DIR", str(tmp_path / "post"))
    defs = build_definitions()
    inst = dg.DagsterInstance.ephemeral()

    def run(key: str, **kw):
        return dg.materialize(list(defs.assets), selection=[dg.AssetKey.from_user_string(key)], instance=inst,
                              resources=defs.resources, raise_on_error=False, **kw)
    return run


def test_human_asset_quarantines_bad_lines_and_its_check_says_what_to_fix(graph, tmp_path, monkeypatch):
    good = [{"instruction": f"質問{i}", "output": f"回答{i}です。"} for i in range(9)]
    f = write_lines(tmp_path / "set.jsonl", good + [b"{broken"])
    run = _human_defs(tmp_path, monkeypatch, {"set": {"kind": "instruction", "path": str(f)}})
    r = run("human/set")
    m = r.output_for_node("human__set")
    assert (m["lines"], m["records"], m["bad_lines"]) == (10, 9, 1)
    [check] = r.get_asset_check_evaluations()
    assert not check.passed and check.description.startswith("human dataset set: 1 of 10 lines of ") \
        and f"{f}:10: not JSON" in check.description and "raise max_bad_fraction in set.yaml" in check.description
    import pyarrow.parquet as pq
    q = pq.read_table(Path(m["uri"]) / "quarantine.parquet").to_pylist()
    assert q == [{"line": 10, "reason": f"{f}:10: not JSON (Expecting property name enclosed in double quotes, "
                                        f"column 2)", "raw": "{broken\n"}]


@pytest.mark.slow
def test_dpo_trial_on_a_human_preference_collection(graph, tmp_path, monkeypatch):
    """A DPO trial whose pairs are a human preference collection: trained on the graph's base model, its lineage
    names the collection's version (not preference_pairs)."""
    trial = {"name": "dpoh", "base": "dense_2", "method": "dpo", "preferences": "human/prefs",
             "optim": {"lr": 2.0e-3, "epochs": 2, "batch_size": 4}, "max_examples": 8}
    shipped = PIPELINES_DIR / "human" / "data" / "ja_preferences_handwritten.jsonl"
    run = _human_defs(tmp_path, monkeypatch, {"prefs": {"kind": "preference", "path": str(shipped)}}, [trial])
    h = run("human/prefs").output_for_node("human__prefs")
    assert h["pairs"] == 8 and h["bad_lines"] == 0
    a = run("adapter", partition_key="dpoh").output_for_node("adapter")
    assert a["data"]["pairs"] == 8 and a["data"]["data_versions"] == {"human/prefs": h["version"]}
    assert 0 <= a["reward_accuracy"] <= 1 and len(a["epoch_losses"]) == 2
