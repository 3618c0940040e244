"""Level 1: tokenizer, mix validation and resolution, packing into Megatron indexed datasets, the local GPT."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from kura.corpus.default import DefaultCorpusConfig, generate_documents
from kura.mix.resolve import SourceDocs, resolve_mix
from kura.mix.spec import MixError, load_mix
from kura.pack.megatron import pack_sequences, write_blend, write_indexed, write_packed_source
from kura.tokenize.spm import SpmTokenizer, TokenizerConfig, tokenizer_stats, train_sentencepiece

GOOD = {"name": "m", "sequence_length": 32, "total_tokens": 1000,
        "sources": [{"source": "deduplicated", "weight": 0.75}, {"source": "synthetic", "weight": 0.25}]}


def mix_file(tmp_path, spec):
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.parametrize("change, message", [
    ({"sources": [{"source": "dedupd", "weight": 1.0}]}, "source 'dedupd' does not exist"),
    ({"sources": [{"source": "deduplicated", "weight": 0.5}, {"source": "synthetic", "weight": 0.2}]},
     "weights sum to 0.7"),
    ({"sources": [{"source": "deduplicated", "weight": 0.0}]}, "all weights are zero"),
    ({"sources": [{"source": "deduplicated", "weight": -0.5}, {"source": "synthetic", "weight": 1.5}]},
     "greater than or equal to 0"),
    ({"sequence_length": 0}, "sequence_length"),
    ({"sources": []}, "sources"),
])
def test_bad_mixes_are_refused_with_what_and_where(tmp_path, change, message):
    with pytest.raises(MixError, match=message) as e:
        load_mix(mix_file(tmp_path, {**GOOD, **change}), known_sources={"deduplicated", "synthetic"})
    assert "mix.yaml" in str(e.value)


def test_resolve_pins_versions_counts_tokens_and_epochs(tmp_path):
    spec = load_mix(mix_file(tmp_path, {**GOOD, "sources": [
        {"source": "deduplicated", "weight": 0.75}, {"source": "synthetic", "weight": 0.25, "max_epochs": 3}]}))
    ded = SourceDocs("deduplicated", {"all": "v1"}, [{"doc_id": f"d{i}", "text": "x" * 10, "lang": "ja"}
                                                    for i in range(200)])
    syn = SourceDocs("synthetic", {"2026-11-01": "s1"}, [{"doc_id": f"s{i}", "text": "y" * 10, "lang": "en"}
                                                        for i in range(12)])
    rows, summary = resolve_mix(spec, {"deduplicated": ded, "synthetic": syn}, lambda ts: [len(t) for t in ts])
    s = summary["sources"]
    assert s["deduplicated"]["upstream_versions"] == {"all": "v1"}
    assert s["deduplicated"]["tokens_selected"] == 750 and s["synthetic"]["tokens_selected"] == 250
    assert 2 < s["synthetic"]["epochs"] <= 3
    assert {r["split"] for r in rows} == {"train", "heldout"}
    with pytest.raises(MixError, match="needs .* epochs .* max_epochs=1"):
        spec1 = load_mix(mix_file(tmp_path, GOOD))
        resolve_mix(spec1, {"deduplicated": ded, "synthetic": syn}, lambda ts: [len(t) for t in ts])
    with pytest.raises(MixError, match="no materialized data"):
        resolve_mix(spec, {"deduplicated": ded}, lambda ts: [len(t) for t in ts])


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = [t for t in generate_documents(DefaultCorpusConfig(n_docs=400)) if t.strip()]
    train_sentencepiece(texts, d, TokenizerConfig(vocab_size=800))
    return SpmTokenizer(d / "tokenizer.model")


def test_tokenizer_round_trips_exactly(spm_tok):
    for text in ["  二つの  空白\nと改行\n\n", "Digits 12345 and 漢字カナ", "絵文字 🍣 未知の字 𠮷"]:
        assert spm_tok.decode(spm_tok.encode(text)) == text
    assert len(spm_tok.encode("1010")) == 4, "digits are split (no multi-digit pieces)"
    st = tokenizer_stats(spm_tok, {"ja": ["今日は天気です。"], "en": ["The weather is fine."]})
    assert st["ja"]["roundtrip_exact"] and st["en"]["chars_per_token"] > 1


def test_packing_writes_megatron_datasets(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = [[5] * 10, [6] * 3, [7] * 30]
    seqs = list(pack_sequences(docs, seq_len=8, eod=2))
    assert all(len(s) == 9 for s in seqs) and len(seqs) == (10 + 3 + 30 + 3) // 9
    info = write_packed_source(tmp_path, "deduplicated", docs, 8, 2, 1000)
    assert info["tokens"] + info["dropped_tail_tokens"] == 46
    write_indexed(tmp_path / "heldout_ja", [np.arange(5), np.arange(7)], 1000)
    ds = IndexedDataset(str(tmp_path / "train_deduplicated"))
    assert len(ds) == info["sequences"] and list(ds[0]) == [5] * 9
    assert [len(x) for x in IndexedDataset(str(tmp_path / "heldout_ja"))] == [5, 7]
    blend = write_blend(tmp_path, {"deduplicated": info})
    assert blend["train"] == ["1.0", "train_deduplicated"]
    assert json.loads((tmp_path / "blend.json").read_text()) == blend


def test_local_gpt_learns_and_perplexity_is_bounded():
    import torch

    from kura.eval.perplexity import perplexity
    from kura.train.model import GPT, GPTConfig

    torch.manual_seed(0)
    m = GPT(GPTConfig(num_layers=1, hidden_size=32, num_attention_heads=2, ffn_hidden_size=64, seq_length=16,
                      vocab_size=50))
    data = torch.arange(17).repeat(8, 1) % 50
    before = perplexity(m, [data[0].numpy()], 16)["perplexity"]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = m.loss(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = perplexity(m, [data[0].numpy()], 16)["perplexity"]
    assert math.isclose(before, 50, rel_tol=0.5) and after < 2.0
