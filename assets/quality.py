"""The quality classifier and its example sets, as assets: `quality_examples` (positive and negative documents,
from JSONL files you provide or, by default, generated and labelled by the corpus generator with its own seed) →
`quality_classifier` (hashed character n-grams + logistic regression; held-out AUC in metadata). Mix sources select
quality buckets with it (`min_quality` / `max_quality`); `reference_lm` (a character n-gram LM trained on the good
examples or a reference file you give) filters them by perplexity (`max_perplexity`)."""
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa

import kura.text.ngram_lm as ngram_lm
import kura.text.quality_model as qm
from assets._common import kura_asset, output, read_parquet, run_versioned, write_json, write_parquet
from kura.corpus.default import DefaultCorpusConfig, generate_labelled
from kura.io import sha256_file
from resources import StorageResource

EXAMPLES_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int64()), ("origin", pa.string())])
GOOD_KINDS = ("clean",)
BAD_KINDS = ("ads", "mojibake", "short")


class QualityExamplesConfig(dg.Config):
    positives_path: str = ""
    """JSONL of good documents ({"text": ...}); empty: generated examples."""
    negatives_path: str = ""
    """JSONL of bad documents; empty: generated examples."""
    generated_seed: int = 7
    """Seed of the generated examples (differs from the corpus seed, so the classifier never sees the corpus)."""
    generated_docs: int = 3000
    """Documents generated when no files are given."""


def _jsonl_texts(path: str) -> list[str]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a JSON object with a text field ({e})") from None
    return out


@kura_asset(group_name="corpus")
def quality_examples(context: dg.AssetExecutionContext, config: QualityExamplesConfig,
                     storage: StorageResource) -> dg.Output:
    st = storage.get()

    def build(stage):
        if config.positives_path and config.negatives_path:
            rows = [{"text": t, "label": 1, "origin": config.positives_path}
                    for t in _jsonl_texts(config.positives_path)]
            rows += [{"text": t, "label": 0, "origin": config.negatives_path}
                     for t in _jsonl_texts(config.negatives_path)]
        else:
            labelled = generate_labelled(DefaultCorpusConfig(seed=config.generated_seed, n_docs=config.generated_docs))
            rows = [{"text": t, "label": int(lab["kind"] in GOOD_KINDS), "origin": f"generated:{lab['kind']}"}
                    for t, lab in labelled if t.strip() and lab["kind"] in GOOD_KINDS + BAD_KINDS]
        write_parquet(stage / "examples.parquet", rows, EXAMPLES_SCHEMA)
        return {"positives": sum(r["label"] for r in rows), "negatives": sum(1 - r["label"] for r in rows)}

    m, reused = run_versioned(context, st, config=config, upstream={}, build=build)
    return output(m, reused, positives=m["positives"], negatives=m["negatives"])


class QualityClassifierConfig(dg.Config, qm.QualityModelConfig):
    """Classifier settings (see kura.text.quality_model.QualityModelConfig)."""

    heldout_every: int = 5
    """Every n-th example is held out for the reported AUC and accuracy."""


@kura_asset(group_name="corpus")
def quality_classifier(context: dg.AssetExecutionContext, config: QualityClassifierConfig, quality_examples: dict,
                       storage: StorageResource) -> dg.Output:
    st = storage.get()
    mcfg = qm.QualityModelConfig(**config.model_dump(exclude={"heldout_every"}))

    def build(stage):
        ex = read_parquet(st, quality_examples, "examples.parquet").to_pylist()
        train = [e for i, e in enumerate(ex) if i % config.heldout_every]
        held = [e for i, e in enumerate(ex) if not i % config.heldout_every]
        model = qm.QualityClassifier.train([e["text"] for e in train if e["label"]],
                                           [e["text"] for e in train if not e["label"]], mcfg)
        model.save(stage)
        s = model.scores([e["text"] for e in held])
        y = np.array([e["label"] for e in held])
        metrics = {"heldout_auc": round(qm.auc(s, y), 4), "heldout_accuracy": round(float(((s > 0.5) == y).mean()), 4),
                   "train_examples": len(train), "heldout_examples": len(held)}
        write_json(stage / "metrics.json", metrics)
        return {"metrics": metrics}

    m, reused = run_versioned(context, st, config=config, upstream={"quality_examples": quality_examples},
                              build=build)
    return output(m, reused, **m["metrics"])


class ReferenceLMConfig(dg.Config, ngram_lm.NgramLMConfig):
    """Character n-gram LM settings (see kura.text.ngram_lm.NgramLMConfig)."""

    reference_path: str = ""
    """JSONL of reference documents ({"text": ...}) — e.g. a curated Wikipedia or news sample; empty: the positive
    documents of quality_examples."""
    heldout_every: int = 5
    """Every n-th reference document is held out for the reported perplexities."""


@kura_asset(group_name="corpus")
def reference_lm(context: dg.AssetExecutionContext, config: ReferenceLMConfig, quality_examples: dict,
                 storage: StorageResource) -> dg.Output:
    """Character n-gram LM trained on a clean reference set; mix sources keep the low-perplexity head with
    `max_perplexity` (CCNet-style filtering). Metadata: held-out perplexity of good and of bad examples."""
    st = storage.get()
    lcfg = ngram_lm.NgramLMConfig(**config.model_dump(exclude={"reference_path", "heldout_every"}))

    def build(stage):
        ex = read_parquet(st, quality_examples, "examples.parquet").to_pylist()
        ref = _jsonl_texts(config.reference_path) if config.reference_path else \
            [e["text"] for e in ex if e["label"]]
        train = [t for i, t in enumerate(ref) if i % config.heldout_every]
        held = [t for i, t in enumerate(ref) if not i % config.heldout_every]
        lm = ngram_lm.CharNgramLM.train(train, lcfg)
        lm.save(stage)
        bad = [e["text"] for e in ex if not e["label"]]
        med = lambda xs: round(float(np.median(lm.perplexities(xs))), 2) if xs else None  # noqa: E731
        metrics = {"reference_documents": len(train), "reference_chars": lm.total,
                   "heldout_reference_median_ppl": med(held), "negative_examples_median_ppl": med(bad)}
        write_json(stage / "metrics.json", metrics)
        return {"metrics": metrics}

    upstream = {"quality_examples": quality_examples,
                "reference_file": sha256_file(config.reference_path) if config.reference_path else None}
    m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
    return output(m, reused, **m["metrics"])
