"""data_mix: a factory turning a mix YAML (pipelines/mixes/*.yaml) into an asset. The YAML's content is part of
the asset's code version, so editing the mix marks it stale and — through its automation condition — rebuilds
everything downstream in one go."""

from pathlib import Path

import dagster as dg
import pyarrow as pa

import kura.mix.resolve as resolve
import kura.mix.spec as spec_mod
from assets._common import output, run_versioned, source_version, write_json, write_parquet
from assets.automation import ON_EDIT_OR_EAGER
from assets.tokenizer import corpus_rows, synthetic_rows
from kura.tokenize.spm import SpmTokenizer
from resources import StorageResource

MIX_SOURCES = {"deduplicated", "synthetic"}

SELECTION_SCHEMA = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("lang", pa.string()),
                              ("split", pa.string()), ("epoch", pa.int64()), ("n_tokens", pa.int64())])
MIX_DOCS_SCHEMA = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("lang", pa.string()),
                             ("text", pa.string())])


def build_data_mix(spec_path: str | Path) -> dg.AssetsDefinition:
    spec_path = Path(spec_path)
    mix = spec_mod.load_mix(spec_path, known_sources=MIX_SOURCES)  # a bad mix fails at load time, with its name
    yaml_text = spec_path.read_text(encoding="utf-8")

    @dg.asset(name="data_mix", group_name="model_data", automation_condition=ON_EDIT_OR_EAGER,
              code_version=source_version(spec_mod, resolve, extra=yaml_text),
              ins={"synthetic": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
              description=f"Mix '{mix.name}' from {spec_path.name}: "
                          + ", ".join(f"{s.source}{'[' + s.lang + ']' if s.lang else ''}={s.weight:g}"
                                      for s in mix.sources)
                          + f"; {mix.total_tokens} tokens at sequence length {mix.sequence_length}.")
    def data_mix(context: dg.AssetExecutionContext, deduplicated: dict, synthetic: dict, tokenizer: dict,
                 storage: StorageResource) -> dg.Output:
        st = storage.get()

        def build(stage):
            tok = SpmTokenizer(st.local_dir(tokenizer["dir"]) / "tokenizer.model")
            ded, syn = corpus_rows(st, deduplicated), synthetic_rows(st, synthetic)
            sources = {
                "deduplicated": resolve.SourceDocs("deduplicated", {"all": deduplicated["version"]}, ded),
                "synthetic": resolve.SourceDocs("synthetic", {k: v["version"] for k, v in synthetic.items()}, syn),
            }
            rows, summary = resolve.resolve_mix(mix, sources, lambda texts: [len(x) for x in tok.encode_batch(texts)])
            used = {(r["source"], r["doc_id"]) for r in rows}
            by_label = {}
            for s in mix.sources:
                label = s.source + (f"[{s.lang}]" if s.lang else "")
                by_label[label] = sources[s.source].docs
            docs = [{"source": label, "doc_id": d["doc_id"], "lang": d["lang"], "text": d["text"]}
                    for label, ds in by_label.items() for d in ds if (label, d["doc_id"]) in used]
            write_parquet(stage / "selection.parquet", rows, SELECTION_SCHEMA)
            write_parquet(stage / "documents.parquet", docs, MIX_DOCS_SCHEMA)
            summary["tokenizer"] = tokenizer["version"]
            write_json(stage / "mix.json", {"spec": mix.model_dump(), "spec_file": spec_path.name, **summary})
            return {"summary": summary, "spec": mix.model_dump()}

        m, reused = run_versioned(context, st, config=mix.model_dump(),
                                  upstream={"deduplicated": deduplicated, "synthetic": synthetic,
                                            "tokenizer": tokenizer}, build=build)
        return output(m, reused, mix=mix.name, tokens_selected=m["summary"]["tokens_selected"],
                      sources=m["summary"]["sources"])

    return data_mix
