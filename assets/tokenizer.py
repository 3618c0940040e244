"""Tokenizer asset: SentencePiece trained on a seeded sample of the deduplicated corpus and the synthetic shards.
The folder carries tokenizer.model and kura_tokenizer.json (config, stats, lineage)."""

import dagster as dg

import kura.tokenize.hf_export as hf_export
import kura.tokenize.spm as spm
from assets._common import kura_asset, output, read_parquet, run_versioned
from assets.automation import EAGER
from assets.synthetic import merge_synthetic, synthetic_ins
from kura.mix.resolve import is_heldout
from resources import StorageResource

HELDOUT_FRACTION = 0.02  # documents excluded from the tokenizer sample and used for its statistics


class TokenizerAssetConfig(dg.Config, spm.TokenizerConfig):
    """SentencePiece settings (see kura.tokenize.spm.TokenizerConfig)."""


def corpus_rows(storage, deduplicated: dict) -> list[dict]:
    return read_parquet(storage, deduplicated, "documents.parquet", ["doc_id", "text", "lang"]).to_pylist()


def gated_rows(storage, manifests: dict) -> list[dict]:
    """Records of every materialized synthetic shard or human collection that passed its gate, in key order. One
    that failed stays visible in the UI with its reasons but never feeds a tokenizer, a mix or a trial."""
    rows: list[dict] = []
    for _, m in sorted(manifests.items()):
        if m.get("gate_passed", True):
            rows += read_parquet(storage, m, "records.parquet", ["doc_id", "text", "lang", "turns"]).to_pylist()
    return rows


def build_tokenizer(datasets) -> dg.AssetsDefinition:
    """The tokenizer, trained on the corpus and every synthetic dataset (all their materialized days)."""
    @kura_asset(name="tokenizer", group_name="model_data", ins={"deduplicated": dg.AssetIn("deduplicated"),
                                                               **synthetic_ins(datasets)},
                automation_condition=EAGER)
    def tokenizer(context: dg.AssetExecutionContext, config: TokenizerAssetConfig, storage: StorageResource,
                  deduplicated: dict, **shards) -> dg.Output:
        yield from _tokenizer(context, config, storage, deduplicated, merge_synthetic(shards))

    return tokenizer


def _tokenizer(context, config: TokenizerAssetConfig, storage: StorageResource, deduplicated: dict,
               synthetic: dict):
    st = storage.get()

    def build(stage):
        groups = {"deduplicated": corpus_rows(st, deduplicated), "synthetic": gated_rows(st, synthetic)}
        train = {k: [r["text"] for r in rows if not is_heldout(r["doc_id"], HELDOUT_FRACTION)]
                 for k, rows in groups.items()}
        held: dict[str, list[str]] = {}
        for rows in groups.values():
            for r in rows:
                if is_heldout(r["doc_id"], HELDOUT_FRACTION):
                    held.setdefault(r["lang"], []).append(r["text"])
        sample = spm.train_sentencepiece(train, stage, config)
        tok = spm.SpmTokenizer(stage / "tokenizer.model")
        # HF-compatible export beside the SentencePiece model: checkpoints load with AutoTokenizer
        hf_dir = hf_export.export_hf(stage / "tokenizer.model", stage / "hf", config.model_type,
                                     config.model_max_length)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(hf_dir)
        sample_texts = [t for ts in held.values() for t in ts][:300]
        agree = sum(hf.encode(t, add_special_tokens=False) == tok.encode(t) for t in sample_texts)
        stats = {"vocab_size": tok.vocab_size, **sample, "heldout": spm.tokenizer_stats(tok, held),
                 "hf_export_id_agreement": round(agree / max(1, len(sample_texts)), 4)}
        lineage = {"deduplicated": deduplicated["version"],
                   "synthetic": {k: v["version"] for k, v in sorted(synthetic.items())}}
        spm.write_tokenizer_card(stage, config, stats, lineage)
        return {"stats": stats}

    m, reused = run_versioned(context, st, config=config, upstream={"deduplicated": deduplicated,
                                                                    "synthetic": synthetic}, build=build)
    yield output(m, reused, vocab_size=m["stats"]["vocab_size"], heldout=m["stats"]["heldout"],
                  sample_chars=m["stats"]["sample_chars"],
                  hf_export_id_agreement=m["stats"]["hf_export_id_agreement"])
