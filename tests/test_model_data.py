"""Level 1: tokenizer (+HF export), mix validation and resolution, chat formatting, best-fit packing into
Megatron indexed datasets (read back through megatron-core's dataset builder), the local GPT."""
from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import yaml

from kura.corpus.default import DefaultCorpusConfig, generate_documents
from kura.mix.resolve import SourceDocs, resolve_phase
from kura.mix.spec import ChatTemplate, MixError, load_mix
from kura.pack.bestfit import best_fit_pack, concat_chunk_stats
from kura.pack.chat import render_conversation
from kura.pack.megatron import write_blend, write_indexed, write_packed_source
from kura.tokenize.spm import SpmTokenizer, TokenizerConfig, tokenizer_stats, train_sentencepiece

GOOD = {"name": "m", "phases": [
    {"name": "web", "sequence_length": 32, "total_tokens": 1000,
     "sources": [{"source": "deduplicated", "weight": 0.75},
                 {"source": "synthetic", "weight": 0.25, "max_epochs": 3}]},
    {"name": "sft", "sequence_length": 64, "replay_fraction": 0.2,
     "sources": [{"source": "synthetic", "tokens": 200, "chat_template": "plain", "loss_mask": "assistant_only",
                  "max_epochs": 5}]}]}


def mix_file(tmp_path, spec):
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def phase0(**change):
    spec = json.loads(json.dumps(GOOD))
    spec["phases"][0].update(change)
    return spec


@pytest.mark.parametrize("spec, message", [
    (phase0(sources=[{"source": "dedupd", "weight": 1.0}]), "phase 'web': source 'dedupd' does not exist"),
    (phase0(sources=[{"source": "deduplicated", "weight": 0.5}, {"source": "synthetic", "weight": 0.2}]),
     "phase 'web': weights sum to 0.7"),
    (phase0(sources=[{"source": "deduplicated", "weight": 0.0}]), "all weights are zero"),
    (phase0(sources=[{"source": "deduplicated", "weight": -0.5}, {"source": "synthetic", "weight": 1.5}]),
     r"phase 'web': sources.0.weight: Input should be greater than or equal to 0"),
    (phase0(sources=[{"source": "deduplicated", "weight": 1.0}, {"source": "synthetic", "tokens": 5}]),
     "mix weights and absolute token budgets"),
    (phase0(sequence_length=0), "phase 'web': sequence_length"),
    (phase0(sources=[]), "phase 'web': sources"),
    (phase0(replay_fraction=0.1), "nothing to replay"),
    (phase0(sequence_length=100000), "sequence_length 100000 exceeds the tokenizer's model_max_length 8192"),
    ({**GOOD, "phases": [GOOD["phases"][0], {**GOOD["phases"][1], "sources": [
        {"source": "synthetic", "tokens": 5, "loss_mask": "assistant_only"}]}]}, "needs a chat_template"),
])
def test_bad_mixes_are_refused_with_what_and_where(tmp_path, spec, message):
    with pytest.raises(MixError, match=message) as e:
        load_mix(mix_file(tmp_path, spec), known_sources={"deduplicated", "synthetic"}, max_sequence_length=8192)
    assert "mix.yaml" in str(e.value)


def test_single_phase_form_is_one_phase(tmp_path):
    spec = load_mix(mix_file(tmp_path, {"name": "solo", "sequence_length": 16, "total_tokens": 10,
                                        "sources": [{"source": "deduplicated", "weight": 1}]}))
    assert [p.name for p in spec.phases] == ["solo"] and spec.phases[0].total_tokens == 10


def sources():
    ded = SourceDocs("deduplicated", {"all": "v1"}, [{"doc_id": f"d{i}", "text": "x" * 10, "lang": "ja"}
                                                    for i in range(200)])
    turns = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 20}])
    syn = SourceDocs("synthetic", {"2026-11-01": "s1"}, [{"doc_id": f"s{i}", "text": "y" * 10, "lang": "en",
                                                        "turns": turns} for i in range(12)])
    return {"deduplicated": ded, "synthetic": syn}


def count(texts):
    return [len(t) for t in texts]


def test_resolve_pins_versions_budgets_epochs_and_replay(tmp_path):
    spec = load_mix(mix_file(tmp_path, GOOD))
    src = sources()
    rows0, s0, _ = resolve_phase(spec, spec.phases[0], src, count)
    s = s0["sources"]
    assert s["deduplicated"]["upstream_versions"] == {"all": "v1"}
    assert s["deduplicated"]["tokens_selected"] == 750 and s["synthetic"]["tokens_selected"] == 250
    assert s["synthetic"]["epochs"] > 2 and {r["split"] for r in rows0} == {"train", "heldout"}
    rows1, s1, docs1 = resolve_phase(spec, spec.phases[1], src, count, replay_pool=rows0)
    assert docs1["synthetic"][0]["text"] == "user: q\nassistant: " + "a" * 20 + "\n"
    assert s1["sources"]["synthetic"]["tokens_selected"] >= 200
    assert s1["sources"]["replay"]["tokens_selected"] >= 50  # 0.2 / 0.8 of 200
    assert all(r["replay_of"] in ("deduplicated", "synthetic") for r in rows1 if r["source"] == "replay")


def test_resolve_errors_say_what_and_where(tmp_path):
    spec = load_mix(mix_file(tmp_path, phase0(sources=[{"source": "deduplicated", "weight": 0.5},
                                                      {"source": "synthetic", "weight": 0.5}])))
    with pytest.raises(MixError, match=r"phase 'web': source 'synthetic' needs .* epochs .* max_epochs=1"):
        resolve_phase(spec, spec.phases[0], sources(), count)
    with pytest.raises(MixError, match="has no materialized data"):
        resolve_phase(spec, spec.phases[0], {"deduplicated": sources()["deduplicated"]}, count)
    spec = load_mix(mix_file(tmp_path, GOOD))
    no_turns = {**sources(), "synthetic": SourceDocs("synthetic", {}, [{"doc_id": "s", "text": "t", "lang": "en"}])}
    with pytest.raises(MixError, match="no conversation"):
        resolve_phase(spec, spec.phases[1], no_turns, count, replay_pool=[])
    with pytest.raises(MixError, match="replay needs"):
        resolve_phase(spec, spec.phases[1], sources(), count, replay_pool=[])


def test_optional_sources_without_data_are_left_out_with_the_reason(tmp_path):
    """A blocked optional source (every synthetic shard failed its gate) leaves the phase: weights of the others are
    rescaled to the phase total, an absolute-budget phase keeps its replay; a required one still fails."""
    spec = json.loads(json.dumps(GOOD))
    for p in spec["phases"]:
        for s in p["sources"]:
            if s["source"] == "synthetic":
                s["optional"] = True
    spec = load_mix(mix_file(tmp_path, spec))
    blocked = {**sources(), "synthetic": SourceDocs("synthetic", {"2026-11-01": "s1"}, [],
                                                    blocked="shard 2026-11-01 failed its reject-rate gate")}
    rows0, s0, docs0 = resolve_phase(spec, spec.phases[0], blocked, count)
    assert s0["left_out"] == {"synthetic": "shard 2026-11-01 failed its reject-rate gate"}
    assert s0["sources"]["deduplicated"]["budget_tokens"] == 1000 and "synthetic" not in s0["sources"]
    assert {r["source"] for r in rows0} == {"deduplicated"} and docs0["synthetic"] == []
    rows1, s1, _ = resolve_phase(spec, spec.phases[1], blocked, count, replay_pool=rows0)
    assert s1["left_out"] and {r["source"] for r in rows1} == {"replay"}
    assert s1["tokens_selected"] >= 50, "the phase keeps its declared replay (0.2 / 0.8 of 200 tokens)"
    # a selector matching nothing is a different reason; without replay the phase has nothing left: an error
    spec2 = load_mix(mix_file(tmp_path, {"name": "m", "sequence_length": 32, "sources": [
        {"source": "synthetic", "tokens": 50, "optional": True, "lang": "xx"}]}))
    with pytest.raises(MixError, match=r"phase 'm' has no data left: .*synthetic\[xx\]: no training documents "
                                       r"match its selectors"):
        resolve_phase(spec2, spec2.phases[0], sources(), count)
    required = load_mix(mix_file(tmp_path, GOOD))
    with pytest.raises(MixError, match="has a budget of 250 tokens but no training documents"):
        resolve_phase(required, required.phases[0], blocked, count)


def test_chat_rendering_masks_prompt_tokens():
    turns = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"}]
    ids, mask = render_conversation(turns, ChatTemplate(), lambda s: [ord(c) for c in s], assistant_only=True)
    text = "".join(map(chr, ids))
    assert text == "user: ab\nassistant: cd\n"
    assert "".join(c for c, m in zip(text, mask) if m) == "cd\n"
    _, all_mask = render_conversation(turns, ChatTemplate(), lambda s: [ord(c) for c in s], assistant_only=False)
    assert all(all_mask)


def test_best_fit_never_splits_a_fitting_document_and_fills_sequences():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(20, 600, size=3000)] + [2500, 4100]
    bins, st = best_fit_pack(lengths, 1024)
    placed = collections.defaultdict(int)
    for b in bins:
        assert b.used <= 1024
        for i, a, e in b.pieces:
            placed[i] += e - a
            if lengths[i] <= 1024:
                assert (a, e) == (0, lengths[i]), "a document that fits is never split"
    assert all(placed[i] == n for i, n in enumerate(lengths)), "every token placed exactly once"
    assert st.split_documents == 2 and st.fitting_documents_split == 0
    assert st.utilization > 0.995
    assert concat_chunk_stats(lengths, 1024).fitting_documents_split > 500


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = [t for t in generate_documents(DefaultCorpusConfig(n_docs=400)) if t.strip()]
    train_sentencepiece(texts, d, TokenizerConfig(vocab_size=800))
    return SpmTokenizer(d / "tokenizer.model"), d


def test_tokenizer_round_trips_exactly(spm_tok):
    tok, _ = spm_tok
    for text in ["  二つの  空白\nと改行\n\n", "Digits 12345 and 漢字カナ", "絵文字 🍣 未知の字 𠮷"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("1010")) == 4, "digits are split (no multi-digit pieces)"
    st = tokenizer_stats(tok, {"ja": ["今日は天気です。"], "en": ["The weather is fine."]})
    assert st["ja"]["roundtrip_exact"] and st["en"]["chars_per_token"] > 1


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_hf_export_gives_the_same_ids(tmp_path, model_type):
    from transformers import AutoTokenizer

    from kura.tokenize.hf_export import export_hf

    texts = [t for t in generate_documents(DefaultCorpusConfig(n_docs=300, seed=3)) if t.strip()]
    train_sentencepiece(texts, tmp_path, TokenizerConfig(vocab_size=800, model_type=model_type))
    sp = SpmTokenizer(tmp_path / "tokenizer.model")
    hf = AutoTokenizer.from_pretrained(export_hf(tmp_path / "tokenizer.model", tmp_path / "hf", model_type, 4096))
    probe = texts[:100] + ["  二つの  空白\nと改行", "Digits 12345", "未知の字 𠮷"]
    assert all(hf.encode(t, add_special_tokens=False) == sp.encode(t) for t in probe)
    assert all(hf.decode(hf.encode(t, add_special_tokens=False)) == t for t in probe)
    assert hf.model_max_length == 4096 and hf.eos_token == "</s>"


def test_packed_output_samples_in_mix_proportions_through_megatron(tmp_path):
    """kura's .bin/.idx + blend read by megatron-core's BlendedMegatronDatasetBuilder → GPTDataset: the sampled
    token shares match the mix."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(0)
    docs_a = [[5] * int(rng.integers(5, 40)) for _ in range(400)]
    docs_b = [[7] * int(rng.integers(5, 40)) for _ in range(100)]
    info = {k: write_packed_source(tmp_path, k, [(d, [1] * len(d)) for d in docs], 32, eod=2, pad=3, vocab_size=100)
            for k, docs in (("a", docs_a), ("b", docs_b))}
    assert all(v["fitting_documents_split"] == 0 and v["utilization"] > 0.97 for v in info.values())
    blend = write_blend(tmp_path, info)
    assert IndexedDataset(str(tmp_path / "train_a"))[0].dtype == np.uint8

    class Tok:  # what GPTDataset reads from a tokenizer
        eod, pad, vocab_size = 2, 3, 100
        unique_identifiers = {"class": "kura-test"}

    paths = [str(tmp_path / p) for p in blend["train"][1::2]]
    weights = [float(w) for w in blend["train"][0::2]]
    cfg = GPTDatasetConfig(random_seed=1, sequence_length=32, blend_per_split=[(paths, weights), None, None],
                           tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False,
                           eod_mask_loss=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [2000, 0, 0], lambda: True, cfg).build()
    counts = collections.Counter()
    for i in range(len(train)):
        t = train[i]["tokens"].numpy()
        counts["a"] += int((t == 5).sum())
        counts["b"] += int((t == 7).sum())
    share = counts["a"] / (counts["a"] + counts["b"])
    assert abs(share - weights[0]) < 0.02, (share, weights)


def test_megatron_lm_draws_one_packed_sequence_per_sample_through_the_aligned_view(tmp_path):
    """Megatron-LM's GPTDataset (the class pretrain_gpt.py builds) over kura's packed prefix cuts windows that
    straddle packed sequences; over `megatron_lm_view` every sample is one packed sequence's inputs, its labels are
    the sequence shifted by one (all but the last), and the cluster launcher rewrites --data-path to the views."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from kura.pack.megatron import megatron_lm_view
    from kura.train.megatron_lm import align_data_paths

    rng = np.random.default_rng(1)
    docs = [rng.integers(10, 99, int(rng.integers(3, 30))).tolist() for _ in range(300)]
    write_packed_source(tmp_path, "web", [(d, None) for d in docs], 32, eod=2, pad=3, vocab_size=100)
    packed = IndexedDataset(str(tmp_path / "train_web"))
    # GPTDataset feeds pad tokens (3) to the model as id 0 and masks them as labels
    rows = {tuple(np.where(packed[i][:32] == 3, 0, packed[i][:32]).tolist()): np.asarray(packed[i])
            for i in range(len(packed))}

    class Tok:  # what GPTDataset reads from Megatron-LM's tokenizer
        eod, pad, vocab_size = 2, 3, 100
        unique_identifiers = {"class": "kura-test"}

    def samples(prefix):
        cfg = GPTDatasetConfig(random_seed=1, sequence_length=32, blend_per_split=[([prefix], None), None, None],
                               tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False,
                               eod_mask_loss=False)
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [len(packed), 0, 0], lambda: True, cfg).build()
        return [train[i] for i in range(len(train))]

    raw = samples(str(tmp_path / "train_web"))
    assert sum(tuple(s["tokens"].tolist()) in rows for s in raw) < len(raw) // 4  # the misalignment it fixes

    view = megatron_lm_view(tmp_path / "train_web")
    assert view == str(tmp_path / "train_web_mlm") and (tmp_path / "train_web_mlm.bin").is_symlink()
    aligned = samples(view)
    assert len(aligned) >= len(packed) - 1
    seen = set()
    for s in aligned:
        t = tuple(s["tokens"].tolist())
        assert t in rows, "a sample that is not a packed sequence"
        seq = rows[t]
        lab = s["labels"].numpy()
        assert (lab[:-1] == np.where(seq[1:32] == 3, 0, seq[1:32])).all()
        assert (s["loss_mask"].numpy()[:-1] == (seq[1:32] != 3)).all()
        seen.add(t)
    assert len(seen) >= len(packed) - 1
    assert megatron_lm_view(tmp_path / "train_web") == view  # idempotent (every pod may make it)

    cmd = ["torchrun", "pretrain_gpt.py", "--data-path", "0.7", str(tmp_path / "train_web"), "0.3",
           str(tmp_path / "train_web"), "--seq-length", "32"]
    out = align_data_paths(cmd)
    assert out[3:7] == ["0.7", view, "0.3", view] and out[7:] == ["--seq-length", "32"]


def test_heldout_written_one_document_each(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    write_indexed(tmp_path / "heldout_ja", [np.arange(5), np.arange(7)], 1000)
    assert [len(x) for x in IndexedDataset(str(tmp_path / "heldout_ja"))] == [5, 7]


def test_perplexity_is_bounded_by_vocab_and_drops_with_learning():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kura.eval.perplexity import HFCausalLM, perplexity

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    m = HFCausalLM(hf)
    data = torch.arange(17).repeat(8, 1) % 50
    before = perplexity(m, [data[0].numpy()], 16)["perplexity"]
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-2)
    for _ in range(60):
        loss = m.loss(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = perplexity(m, [data[0].numpy()], 16)["perplexity"]
    assert math.isclose(before, 50, rel_tol=0.5) and after < 2.0


def test_tokenizer_sample_follows_its_own_mix():
    from kura.tokenize.spm import sample_mix

    groups = {"a": ["a" * 100] * 100, "b": ["b" * 100] * 100}
    sample = sample_mix(groups, {"a": 0.8, "b": 0.2}, 5000, seed=0)
    chars = {k: sum(len(t) for t in sample if t[0] == k) for k in "ab"}
    assert 3900 <= chars["a"] <= 4100 and 900 <= chars["b"] <= 1100
    assert sample == sample_mix(groups, {"a": 0.8, "b": 0.2}, 5000, seed=0)
    with pytest.raises(ValueError, match="unknown sources"):
        sample_mix(groups, {"c": 1.0}, 10, 0)
    with pytest.raises(ValueError, match="sum to 1"):
        sample_mix(groups, {"a": 0.5}, 10, 0)


def test_quality_buckets_select_documents(tmp_path):
    spec = load_mix(mix_file(tmp_path, phase0(sources=[
        {"source": "deduplicated", "weight": 0.5, "min_quality": 0.5, "max_epochs": 10},
        {"source": "deduplicated", "weight": 0.5, "max_quality": 0.5, "max_epochs": 10}])))
    src = sources()
    score = lambda texts: [0.9 if i % 2 else 0.1 for i in range(len(texts))]  # noqa: E731
    _, summary, docs = resolve_phase(spec, spec.phases[0], src, count, quality=score)
    hi, lo = docs["deduplicated[q0.5-1]"], docs["deduplicated[q0-0.5]"]
    assert len(hi) == len(lo) == 100 and all(d["quality"] >= 0.5 for d in hi) and all(d["quality"] < 0.5 for d in lo)
    with pytest.raises(MixError, match="no quality classifier"):
        resolve_phase(spec, spec.phases[0], src, count)
    with pytest.raises(MixError, match="min_quality must be below max_quality"):
        load_mix(mix_file(tmp_path, phase0(sources=[{"source": "deduplicated", "weight": 1, "min_quality": 0.6,
                                                        "max_quality": 0.4}])))


def test_perplexity_cut_selects_documents(tmp_path):
    spec = load_mix(mix_file(tmp_path, phase0(sources=[
        {"source": "deduplicated", "weight": 1, "max_perplexity": 50, "max_epochs": 10}])))
    src = sources()
    ppl = lambda texts: [10.0 if i % 4 else 500.0 for i in range(len(texts))]  # noqa: E731
    _, summary, docs = resolve_phase(spec, spec.phases[0], src, count, perplexity=ppl)
    kept = docs["deduplicated[ppl<=50]"]
    assert len(kept) == 150 and all(d["perplexity"] == 10.0 for d in kept)
    assert summary["sources"]["deduplicated[ppl<=50]"]["max_perplexity"] == 50
    with pytest.raises(MixError, match="no reference language model"):
        resolve_phase(spec, spec.phases[0], src, count)


def test_perplexity_quantile_cuts_by_rank_within_each_language(tmp_path):
    """CCNet-style buckets by rank: the same cut keeps the same share of a corpus whatever its absolute perplexities
    (real documentation pages score in the thousands against the demo's reference LM, where `max_perplexity: 20`
    kept nothing), computed per language."""
    spec = load_mix(mix_file(tmp_path, phase0(sources=[
        {"source": "deduplicated", "weight": 1, "max_perplexity_quantile": 0.5, "max_epochs": 10}])))
    src = sources()
    for i, d in enumerate(src["deduplicated"].docs):
        d["lang"] = "ja" if i % 2 else "en"
    ppl = lambda texts: [float(1000 + i) for i in range(len(texts))]  # noqa: E731
    _, summary, docs = resolve_phase(spec, spec.phases[0], src, count, perplexity=ppl)
    kept = docs["deduplicated[ppl<=p0.5]"]
    assert len(kept) == 100 and {d["lang"] for d in kept} == {"ja", "en"}
    assert sum(d["lang"] == "ja" for d in kept) == 50, "half of each language, not the lowest half overall"
    assert max(d["perplexity"] for d in kept if d["lang"] == "en") == 1000 + 98
    assert summary["sources"]["deduplicated[ppl<=p0.5]"]["max_perplexity_quantile"] == 0.5
