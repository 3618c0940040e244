"""Mix stages, built by a factory from one mix YAML (pipelines/mixes/*.yaml): for every phase P,
`data_mix/P` (the phase resolved to documents and token counts) and `packed_dataset/P` (tokenized, best-fit packed,
Megatron .bin/.idx + blend), plus `mix_report` (tokens per source per phase, as a table and a picture).

Each phase's code version hashes only that phase's part of the YAML, so editing one phase's weight marks only that
phase's `data_mix` stale; its automation condition then rebuilds that phase and what depends on it, nothing else.
"""
import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa

import kura.mix.resolve as resolve
import kura.mix.spec as spec_mod
import kura.pack.megatron as packing
from assets._common import kura_asset, output, read_parquet, run_versioned, write_json, write_parquet
from assets.automation import EAGER, ON_EDIT_OR_EAGER
from assets.human import human_inputs, human_ins
from assets.synthetic import merge_synthetic, synthetic_ins
from assets.tokenizer import corpus_rows, gated_rows
from kura.synth.spec import DatasetSpec, select_datasets
from kura.pack.phase import pack_phase
from kura.text.ngram_lm import CharNgramLM
from kura.text.quality_model import QualityClassifier
from kura.tokenize.hf import load_tokenizer
from resources import StorageResource


SELECTION_SCHEMA = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("lang", pa.string()),
                              ("split", pa.string()), ("epoch", pa.int64()), ("n_tokens", pa.int64()),
                              ("replay_of", pa.string())])
MIX_DOCS_SCHEMA = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("lang", pa.string()),
                             ("text", pa.string()), ("turns", pa.string()), ("chat_template", pa.string()),
                             ("loss_mask", pa.string())])


def tokenizer_key(tokenizer: str | None) -> dg.AssetKey:
    """The asset a phase packs with: kura's `tokenizer`, or an imported `base_model/<name>`."""
    return dg.AssetKey.from_user_string(tokenizer) if tokenizer else dg.AssetKey("tokenizer")


def tokenizer_path(st, m: dict) -> Path:
    """kura's SentencePiece model, or the Hugging Face tokenizer folder of an imported base."""
    d = st.local_dir(m["dir"])
    return d / "tokenizer.model" if (d / "tokenizer.model").exists() else d / "tokenizer_hf"


def mix_key(phase: str) -> dg.AssetKey:
    return dg.AssetKey(["data_mix", phase])


def packed_key(phase: str) -> dg.AssetKey:
    return dg.AssetKey(["packed_dataset", phase])


def load_mix_spec(spec_path: str | Path, datasets: dict[str, DatasetSpec],
                  humans: dict | None = None, bases: set[str] | None = None) -> spec_mod.MixSpec:
    """Load and validate a mix YAML against the synthetic and human dataset specs; a bad mix (an unknown source or
    dataset, a selector that matches no dataset) fails when the definitions load, naming the file, phase and
    field."""
    spec_path = Path(spec_path)
    known = {"deduplicated", "synthetic", *(f"synthetic/{d}" for d in datasets), *(f"human/{h}" for h in humans or {})}
    mix = spec_mod.load_mix(spec_path, known_sources=known)
    for i, p in enumerate(mix.phases):
        if p.tokenizer and (not p.tokenizer.startswith("base_model/")
                            or p.tokenizer.split("/", 1)[1] not in (bases or set())):
            raise spec_mod.MixError(f"mix {spec_path.name}: phase {p.name!r}: tokenizer: {p.tokenizer!r} names no "
                                    f"base model (known: "
                                    f"{', '.join(f'base_model/{b}' for b in sorted(bases or [])) or 'none'}; leave it "
                                    f"out for kura's tokenizer)")
        if p.replay_fraction > 0 and p.tokenizer != mix.phases[i - 1].tokenizer:
            raise spec_mod.MixError(f"mix {spec_path.name}: phase {p.name!r}: replays phase "
                                    f"{mix.phases[i - 1].name!r}, which packs with another tokenizer; set "
                                    f"replay_fraction: 0 or use one tokenizer")
    for p in mix.phases:
        for i, s in enumerate(p.sources):
            if s.source == "synthetic" and any(k != "days" for k in s.selector) and not source_datasets(s, datasets):
                raise spec_mod.MixError(
                    f"mix {spec_path.name}: phase {p.name!r}: sources.{i} ({s.label}): the selector matches no "
                    f"synthetic dataset (datasets: " + ", ".join(
                        f"{d.name} recipe={d.recipe} teacher={d.teacher} tags={d.tags}" for d in datasets.values())
                    + ")")
    return mix


def source_datasets(s: spec_mod.MixSource, datasets: dict[str, DatasetSpec]) -> list[str]:
    """The synthetic datasets a mix source reads (none for the corpus)."""
    if s.source.startswith("synthetic/"):
        return [s.source.split("/", 1)[1]]
    if s.source == "synthetic":
        return select_datasets(datasets, s.recipe, s.teacher, s.tags)
    return []


def source_shards(names: list[str], days: tuple[str, str] | None, shards: dict[str, dict]) -> dict[str, dict]:
    """The day shards ("<dataset>|<day>": manifest) of the named datasets, within a day range."""
    lo, hi = days or ("", "9999")
    return {k: m for k, m in shards.items() if k.split("|")[0] in names and lo <= k.split("|")[1] <= hi}


def build_mix_assets(spec_path: str | Path, mix: spec_mod.MixSpec,
                     datasets: dict[str, DatasetSpec]) -> list[dg.AssetsDefinition]:
    """data_mix/<phase> and packed_dataset/<phase> per phase, and mix_report."""
    spec_path = Path(spec_path)
    assets: list[dg.AssetsDefinition] = []
    for i, phase in enumerate(mix.phases):
        prev = mix.phases[i - 1].name if i and phase.replay_fraction > 0 else None
        assets += [_mix_asset(mix, phase, spec_path.name, prev, datasets), _packed_asset(mix, phase)]
    assets.append(_report_asset(mix))
    return assets


def blocked_shards(synthetic: dict) -> str:
    """Why synthetic data is missing from a mix, when shards failed their reject-rate gate (they feed nothing)."""
    failed = {k: m for k, m in sorted(synthetic.items()) if not m.get("gate_passed", True)}
    if not failed:
        return ""
    return (f"{len(failed)} of {len(synthetic)} synthetic shards failed their reject-rate gate ("
            + ", ".join(f"{k}: {m.get('reject_rate', 1):.0%} rejected" for k, m in failed.items()) + ")")


def _phase_version_text(mix: spec_mod.MixSpec, phase: spec_mod.MixPhase) -> str:
    templates = {s.chat_template: mix.chat_templates[s.chat_template].model_dump()
                 for s in phase.sources if s.chat_template}
    return json.dumps({"phase": phase.model_dump(), "templates": templates}, sort_keys=True)


def _mix_asset(mix, phase, file_name: str, prev: str | None, datasets) -> dg.AssetsDefinition:
    # each synthetic pool (a named dataset, or a selector over datasets) and the datasets it reads
    pools = {s.pool: (source_datasets(s, datasets), s.days) for s in phase.sources
             if s.source.startswith("synthetic")}
    humans = sorted({s.source.split("/", 1)[1] for s in phase.sources if s.source.startswith("human/")})
    ins = {"deduplicated": dg.AssetIn("deduplicated"), "tokenizer": dg.AssetIn(key=tokenizer_key(phase.tokenizer)),
           **synthetic_ins({n for names, _ in pools.values() for n in names}), **human_ins(humans)}
    if prev:
        ins["previous_phase"] = dg.AssetIn(key=mix_key(prev))
    if any(s.uses_quality for s in phase.sources):
        ins["quality_classifier"] = dg.AssetIn("quality_classifier")
    if any(s.uses_perplexity for s in phase.sources):
        ins["reference_lm"] = dg.AssetIn("reference_lm")
    budget = ", ".join(f"{s.label}={s.weight:g}" if s.weight is not None else f"{s.label}={s.tokens} tokens"
                       for s in phase.sources)

    @kura_asset(key=mix_key(phase.name), group_name="model_data", ins=ins, automation_condition=ON_EDIT_OR_EAGER,
              code_version_extra=_phase_version_text(mix, phase),
              description=f"Mix '{mix.name}', phase '{phase.name}' ({file_name}): {budget}"
                          + (f", replay {phase.replay_fraction:g} of {prev}" if prev else "")
                          + f"; sequence length {phase.sequence_length}.")
    def _data_mix(context: dg.AssetExecutionContext, storage: StorageResource, **inputs) -> dg.Output:
        st = storage.get()
        ded, syn, tok_m = inputs["deduplicated"], merge_synthetic(inputs), inputs["tokenizer"]
        hum = human_inputs(inputs)
        prev_m = inputs.get("previous_phase")
        qc_m = inputs.get("quality_classifier")
        lm_m = inputs.get("reference_lm")

        def build(stage):
            tok = load_tokenizer(tokenizer_path(st, tok_m))
            spec_mod.check_sequence_length(mix.name, phase, tok.model_max_length)
            sources = {"deduplicated": resolve.SourceDocs("deduplicated", {"all": ded["version"]},
                                                          corpus_rows(st, ded))}
            for name, (names, days) in pools.items():
                shards = source_shards(names, days, syn)
                sources[name] = resolve.SourceDocs(name, {k: v["version"] for k, v in shards.items()},
                                                   gated_rows(st, shards), blocked_shards(shards))
            for name, m in hum.items():
                sources[f"human/{name}"] = resolve.SourceDocs(
                    f"human/{name}", {name: m["version"]}, gated_rows(st, {name: m}),
                    "" if m.get("gate_passed", True) else f"human/{name} failed its malformed-lines check")
            pool, prev_docs = [], {}
            if prev_m:
                pool = read_parquet(st, prev_m, "selection.parquet").to_pylist()
                prev_docs = {(d["source"], d["doc_id"]): d
                             for d in read_parquet(st, prev_m, "documents.parquet").to_pylist()}
            quality = QualityClassifier.load(st.local_dir(qc_m["dir"])).scores if qc_m else None
            perplexity = CharNgramLM.load(st.local_dir(lm_m["dir"])).perplexities if lm_m else None
            rows, summary, docs_by_label = resolve.resolve_phase(
                mix, phase, sources, lambda texts: [len(x) for x in tok.encode_batch(texts)], pool, quality,
                perplexity)
            docs = resolve.selected_documents(phase, rows, docs_by_label, prev_docs)
            write_parquet(stage / "selection.parquet", [{"replay_of": None, **r} for r in rows], SELECTION_SCHEMA)
            write_parquet(stage / "documents.parquet", docs, MIX_DOCS_SCHEMA)
            summary["tokenizer"] = tok_m["version"]
            spec = {"mix": mix.name, "phase": phase.model_dump(), "chat_templates":
                    {k: v.model_dump() for k, v in mix.chat_templates.items()}}
            write_json(stage / "mix.json", {**spec, **summary})
            return {"summary": summary, **spec}

        upstream = {"deduplicated": ded, "synthetic": syn, "tokenizer": tok_m, "previous_phase": prev_m,
                    "quality_classifier": qc_m, "reference_lm": lm_m, **({"human": hum} if hum else {})}
        m, reused = run_versioned(context, st, config=json.loads(_phase_version_text(mix, phase)),
                                  upstream=upstream, build=build)
        for label, why in m["summary"].get("left_out", {}).items():
            context.log.warning(f"phase {phase.name}: optional source {label} left out: {why}")
        return output(m, reused, mix=mix.name, phase=phase.name, tokens_selected=m["summary"]["tokens_selected"],
                      sources=m["summary"]["sources"], left_out=m["summary"].get("left_out", {}))

    return _data_mix


def _packed_asset(mix, phase) -> dg.AssetsDefinition:
    @kura_asset(key=packed_key(phase.name), group_name="model_data", automation_condition=EAGER,
              ins={"data_mix": dg.AssetIn(key=mix_key(phase.name)),
                   "tokenizer": dg.AssetIn(key=tokenizer_key(phase.tokenizer))},
              check_specs=[dg.AssetCheckSpec("megatron_readback", asset=packed_key(phase.name), blocking=True,
                                             description="Every .bin/.idx opens with megatron-core's IndexedDataset, "
                                                         "holds the recorded sequence count, and ids < vocab size.")])
    def _packed(context: dg.AssetExecutionContext, data_mix: dict, tokenizer: dict, storage: StorageResource):
        st = storage.get()
        seq_len = data_mix["phase"]["sequence_length"]

        def build(stage):
            info = pack_phase(stage, read_parquet(st, data_mix, "selection.parquet").to_pylist(),
                              read_parquet(st, data_mix, "documents.parquet").to_pylist(),
                              {k: spec_mod.ChatTemplate(**v) for k, v in data_mix["chat_templates"].items()},
                              tokenizer_path(st, tokenizer), seq_len)
            info.update(phase=data_mix["phase"]["name"], mix=data_mix["version"], tokenizer=tokenizer["version"])
            write_json(stage / "packed.json", info)
            # the frozen dataset a training pod pulls is self-sufficient: Megatron-LM's --tokenizer-model reads it
            tp = tokenizer_path(st, tokenizer)
            if tp.is_dir():  # a base model's Hugging Face tokenizer
                shutil.copytree(tp, stage / "tokenizer_hf")
            else:
                shutil.copy(tp, stage / "tokenizer.model")
            return info

        m, reused = run_versioned(context, st, config={}, upstream={"data_mix": data_mix, "tokenizer": tokenizer},
                                  build=build)
        yield output(m, reused, train_tokens=m["train_tokens"], utilization=m["utilization"], train=m["train"],
                     heldout=m["heldout"], blend=m["blend"], sequence_length=seq_len)
        yield readback_check(st, m)

    return _packed


def readback_check(st, m: dict) -> dg.AssetCheckResult:
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    d = st.local_dir(m["dir"])
    problems = []
    for name, info in m["train"].items():
        for prefix, limit in ((info["prefix"], m["vocab_size"]), (info["mask_prefix"], 2)):
            ds = IndexedDataset(str(d / prefix))
            if len(ds) != info["sequences"]:
                problems.append(f"{prefix}: {len(ds)} sequences, manifest says {info['sequences']}")
            if len(ds) and (int(np.max(ds[len(ds) - 1])) >= limit or len(ds[0]) != m["sequence_length"] + 1):
                problems.append(f"{prefix}: bad ids or sequence length")
    for lang, info in m["heldout"].items():
        if len(IndexedDataset(str(d / f"heldout_{packing.safe_name(lang)}"))) != info["sequences"]:
            problems.append(f"heldout_{lang}: count mismatch")
    if not m["train_tokens"]:
        problems.append("no training tokens")
    return dg.AssetCheckResult(check_name="megatron_readback", passed=not problems,
                               severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"problems": dg.MetadataValue.json(problems),
                                         "blend": dg.MetadataValue.text(json.dumps(m["blend"]))})


def _report_asset(mix) -> dg.AssetsDefinition:
    ins = {f"phase_{p.name}": dg.AssetIn(key=mix_key(p.name)) for p in mix.phases}

    @kura_asset(name="mix_report", group_name="model_data", ins=ins, automation_condition=EAGER)
    def _report(context: dg.AssetExecutionContext, storage: StorageResource, **phases) -> dg.Output:
        """Tokens per source per phase: a table in metadata and a stacked-bar picture."""
        import base64

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        st = storage.get()
        order = [p.name for p in mix.phases]
        table = {name: {src: v["tokens_selected"] for src, v in phases[f"phase_{name}"]["summary"]["sources"].items()}
                 for name in order}

        def build(stage):
            fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
            bottoms = [0] * len(order)
            for src in sorted({s for t in table.values() for s in t}):
                vals = [table[p].get(src, 0) for p in order]
                ax.bar(order, vals, bottom=bottoms, label=src)
                bottoms = [a + b for a, b in zip(bottoms, vals)]
            ax.set_ylabel("tokens")
            ax.set_title(f"mix '{mix.name}': tokens per source per phase")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(stage / "mix_report.png")
            plt.close(fig)
            write_json(stage / "mix_report.json", table)
            return {"table": table}

        m, reused = run_versioned(context, st, config={}, upstream=phases, build=build)
        png = (st.local_dir(m["dir"]) / "mix_report.png").read_bytes()
        rows = [dg.TableRecord({"phase": p, "source": s, "tokens": n}) for p in order for s, n in table[p].items()]
        return output(m, reused, picture=dg.MetadataValue.md(
            f"![mix](data:image/png;base64,{base64.b64encode(png).decode()})"),
                      tokens=dg.TableMetadataValue(records=rows, schema=dg.TableSchema(columns=[
                          dg.TableColumn("phase"), dg.TableColumn("source"), dg.TableColumn("tokens", "int")])))

    return _report
