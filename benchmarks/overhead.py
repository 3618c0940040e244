"""Whole demo under Dagster versus the same kura functions called directly, on the same generated corpus.

    .venv/bin/python benchmarks/overhead.py [--docs 3000]

Both runs start from empty state folders (nothing reused), use the same default configs and the same vLLM CPU
engine, and write the same parquet/Megatron/checkpoint outputs. Prints a table: wall time per side, the ratio
(target ≤ 1.15×), and peak RSS of this process tree's children is left to /usr/bin/time if wanted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_direct(home: Path, corpus_dir: Path, day: str) -> dict:
    """The demo's work as plain function calls: no Dagster, no instance, no IO manager."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from assets.mix import source_datasets
    from kura.synth.spec import load_datasets, load_teachers
    from kura.corpus.readers import Document, read_corpus_file
    from kura.dedup.incremental import DedupState, dedup_shard
    from kura.dedup.minhash import MinHashConfig, MinHasher
    from kura.eval.perplexity import evaluate_heldout
    from kura.mix.resolve import SourceDocs, resolve_phase, selected_documents
    from kura.mix.spec import load_mix
    from kura.pack.phase import pack_phase
    from kura.quality.expectations import validate_documents
    from kura.synth.generators import VllmGenerator
    from kura.synth.recipes import QADialogueRecipe
    from kura.synth.shard import generate_shard, teacher_examples
    from kura.synth.teacher import train_teacher
    from assets.quality import BAD_KINDS, GOOD_KINDS, QualityClassifierConfig, QualityExamplesConfig
    from kura.corpus.default import DefaultCorpusConfig, generate_labelled
    from kura.text.filters import CleanConfig, clean_documents
    from kura.text.quality_model import QualityClassifier, QualityModelConfig
    from kura.tokenize.spm import SpmTokenizer, TokenizerConfig, train_sentencepiece
    from kura.eval.perplexity import load_hf
    from kura.train.export_hf import export_hf
    from kura.train.pretrain import pretrain
    from kura.train.spec import load_run_specs
    from kura.train.upcycle import upcycle_checkpoint

    out = home / "direct"
    out.mkdir(parents=True)
    cc = CleanConfig()
    shards = []
    for f in sorted(p for p in corpus_dir.iterdir() if p.name != "_COMPLETE"):
        docs = [{"doc_id": d.doc_id, "text": d.text, "source": d.source}
                for d in read_corpus_file(f, f.name) if isinstance(d, Document)]
        res = clean_documents(docs, cc)
        pq.write_table(pa.Table.from_pylist(res.kept), out / f"cleaned_{f.name}.parquet")
        import pandas as pd
        validate_documents(pd.DataFrame(res.kept), min_chars=cc.min_chars, languages=cc.languages)
        shards.append((f.name, res.kept))
    state = DedupState(MinHashConfig(), True)
    hasher = MinHasher(MinHashConfig())
    ded = [r for _, rows in sorted(shards, key=lambda x: x[0]) for r in dedup_shard(state, hasher, rows)[0]]
    pq.write_table(pa.Table.from_pylist(ded), out / "deduplicated.parquet")
    root = Path(__file__).resolve().parents[1] / "pipelines"
    teachers = load_teachers(root / "teachers")
    datasets = load_datasets(root / "synthetic", teachers)
    for t in teachers.values():  # every teacher, then one day of every dataset, as the demo's jobs do
        ex = teacher_examples(ded, QADialogueRecipe(), t.max_examples, t.train.seed)
        train_teacher(ex, out / f"teacher_{t.name}", t.train)
    syn_by: dict[str, list] = {}
    for d in datasets.values():
        recipe = d.build_recipe()
        picked = recipe.sources(ded, d.prompts_per_day, d.sampling.seed, day)
        syn_by[d.name] = generate_shard(picked, recipe, VllmGenerator(str(out / f"teacher_{d.teacher}")), d.sampling,
                                        f"{d.name}|{day}", checks=d.checks).kept
    syn = [r for rows in syn_by.values() for r in rows]
    pq.write_table(pa.Table.from_pylist(syn), out / "synthetic.parquet")
    from kura.mix.resolve import is_heldout
    train_sentencepiece({k: [r["text"] for r in rows if not is_heldout(r["doc_id"], 0.02)]
                         for k, rows in (("deduplicated", ded), ("synthetic", syn))}, out / "tok", TokenizerConfig())
    tok = SpmTokenizer(out / "tok" / "tokenizer.model")
    qe, qcfg = QualityExamplesConfig(), QualityClassifierConfig()
    ex = [(t, lab["kind"] in GOOD_KINDS) for t, lab in generate_labelled(
        DefaultCorpusConfig(seed=qe.generated_seed, n_docs=qe.generated_docs))
        if t.strip() and lab["kind"] in GOOD_KINDS + BAD_KINDS]
    train_ex = [e for i, e in enumerate(ex) if i % qcfg.heldout_every]
    quality = QualityClassifier.train([t for t, g in train_ex if g], [t for t, g in train_ex if not g],
                                      QualityModelConfig(**qcfg.model_dump(exclude={"heldout_every"})))
    mix = load_mix(Path(__file__).resolve().parents[1] / "pipelines" / "mixes" / "default.yaml")
    sources = {"deduplicated": SourceDocs("deduplicated", {}, ded)}
    for src in (x for p in mix.phases for x in p.sources if x.source != "deduplicated"):
        sources[src.pool] = SourceDocs(src.pool, {}, [r for n in source_datasets(src, datasets) for r in syn_by[n]])
    packed_dirs, prev_rows, prev_docs = [], [], {}
    for phase in mix.phases:
        sel, _, by_label = resolve_phase(mix, phase, sources, lambda ts: [len(x) for x in tok.encode_batch(ts)],
                                         prev_rows if phase.replay_fraction else None, quality.scores)
        docs = selected_documents(phase, sel, by_label, prev_docs)
        pk = out / f"packed_{phase.name}"
        pk.mkdir()
        info = pack_phase(pk, sel, docs, mix.chat_templates, out / "tok" / "tokenizer.model", phase.sequence_length)
        (pk / "packed.json").write_text(json.dumps({**info, "phase": phase.name}))
        packed_dirs.append(pk)
        prev_rows, prev_docs = sel, {(d["source"], d["doc_id"]): d for d in docs}
    import shutil

    by_phase = dict(zip([p.name for p in mix.phases], packed_dirs))
    result = {}
    for spec in load_run_specs(Path(__file__).resolve().parents[1] / "pipelines" / "runs", list(by_phase)):
        info = json.loads((by_phase[spec.phase] / "packed.json").read_text())
        init = None
        if spec.upcycle:
            upcycle_checkpoint(out / f"ckpt_{spec.init_from}", spec, out / f"up_{spec.name}")
            init = out / f"up_{spec.name}" / "model.safetensors"
        elif spec.init_from:
            init = out / f"ckpt_{spec.init_from}" / "model.safetensors"
        ck = out / f"ckpt_{spec.name}"
        pretrain(spec, by_phase[spec.phase], out / f"work_{spec.name}", ck, vocab_size=info["vocab_size"],
                 seq_length=info["sequence_length"], init_weights=init)
        shutil.copy(out / "tok" / "tokenizer.model", ck / "tokenizer.model")
        export_hf(ck, out / f"hf_{spec.name}")
        model = load_hf(out / f"hf_{spec.name}")
        result[spec.name] = {name: evaluate_heldout(model, d, info["sequence_length"], info["vocab_size"], 500)
                             for name, d in by_phase.items()}
    return result


def run_dagster(home: Path, day: str) -> dict:
    import dagster as dg

    from pipelines.cli import prepare_env, quiet_warnings, run_pipeline
    from pipelines.definitions import build_definitions

    prepare_env(home)
    quiet_warnings()
    out = run_pipeline(dg.DagsterInstance.get(), build_definitions(), day=day, log=lambda *_: None)
    return {run: ev["perplexity"] for run, ev in out["eval_perplexity"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--day", default="2026-11-20")
    args = ap.parse_args()
    os.environ["KURA_DEFAULT_CORPUS_DOCS"] = str(args.docs)
    from kura.corpus.default import DefaultCorpusConfig, write_default_corpus

    base = Path(tempfile.mkdtemp(prefix="kura-bench-"))
    corpus = base / "corpus"
    write_default_corpus(corpus, DefaultCorpusConfig(n_docs=args.docs))
    os.environ["KURA_CORPUS_DIR"] = str(corpus)
    rows = []
    t = time.perf_counter()
    ppl_direct = run_direct(base / "direct_home", corpus, args.day)
    rows.append(("kura functions, direct", time.perf_counter() - t, ppl_direct))
    t = time.perf_counter()
    ppl_dagster = run_dagster(base / "dagster_home", args.day)
    rows.append(("Dagster (in-process runs)", time.perf_counter() - t, ppl_dagster))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwhole demo, {args.docs} documents, 2-core CPU; peak RSS of this process {rss:.0f} MiB")
    print(f"{'side':28s} {'seconds':>8s}  perplexity web/ja / web/en of the last run (moe_1)")
    for name, secs, p in rows:
        p = p["moe_1"]
        print(f"{name:28s} {secs:8.1f}  {p['web']['ja']['perplexity']} / {p['web']['en']['perplexity']}")
    print(f"{'ratio dagster / direct':28s} {rows[1][1] / rows[0][1]:8.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
