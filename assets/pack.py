"""packed_dataset: the mix's documents tokenized, packed to the sequence length and written as Megatron indexed
datasets plus a blend file. A blocking check reads it back with megatron-core before training may start."""

import json
from collections import defaultdict

import dagster as dg
import numpy as np

import kura.pack.megatron as packing
from assets._common import output, read_parquet, run_versioned, source_version, write_json
from assets.automation import EAGER
from kura.tokenize.spm import SpmTokenizer
from resources import StorageResource


@dg.asset(group_name="model_data", code_version=source_version(packing), automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("megatron_readback", asset="packed_dataset", blocking=True,
                                         description="Every .bin/.idx opens with megatron-core's IndexedDataset, "
                                                     "holds the recorded sequence count, and ids < vocab size.")])
def packed_dataset(context: dg.AssetExecutionContext, data_mix: dict, tokenizer: dict, storage: StorageResource):
    st = storage.get()
    seq_len = data_mix["spec"]["sequence_length"]

    def build(stage):
        tok = SpmTokenizer(st.local_dir(tokenizer["dir"]) / "tokenizer.model")
        sel = read_parquet(st, data_mix, "selection.parquet").to_pylist()
        docs = read_parquet(st, data_mix, "documents.parquet").to_pylist()
        keys = [(d["source"], d["doc_id"]) for d in docs]
        ids = dict(zip(keys, tok.encode_batch([d["text"] for d in docs])))
        train_order: dict[str, list] = defaultdict(list)
        heldout: dict[str, list] = defaultdict(list)
        for r in sel:
            key = (r["source"], r["doc_id"])
            if r["split"] == "train":
                train_order[r["source"]].append(ids[key])
            else:
                heldout[r["lang"] or "all"].append(ids[key])
        train = {label: packing.write_packed_source(stage, label, lists, seq_len, tok.eos_id, tok.vocab_size)
                 for label, lists in sorted(train_order.items())}
        held = {lang: packing.write_indexed(stage / f"heldout_{packing.safe_name(lang)}", lists, tok.vocab_size)
                for lang, lists in sorted(heldout.items())}
        blend = packing.write_blend(stage, train)
        info = {"sequence_length": seq_len, "vocab_size": tok.vocab_size, "train": train, "heldout": held,
                "blend": blend, "mix": data_mix["version"], "tokenizer": tokenizer["version"],
                "train_tokens": sum(v["tokens"] for v in train.values())}
        write_json(stage / "packed.json", info)
        return info

    m, reused = run_versioned(context, st, config={}, upstream={"data_mix": data_mix, "tokenizer": tokenizer},
                              build=build)
    yield output(m, reused, train_tokens=m["train_tokens"], train=m["train"], heldout=m["heldout"],
                 blend=m["blend"], sequence_length=seq_len)
    yield readback_check(st, m)


def readback_check(st, m: dict) -> dg.AssetCheckResult:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    d = st.local_dir(m["dir"])
    problems = []
    for group in ("train", "heldout"):
        for name, info in m[group].items():
            prefix = info.get("prefix") or f"heldout_{packing.safe_name(name)}"
            ds = IndexedDataset(str(d / prefix))
            if len(ds) != info["sequences"]:
                problems.append(f"{prefix}: {len(ds)} sequences, manifest says {info['sequences']}")
            if len(ds) and int(np.max(ds[len(ds) - 1])) >= m["vocab_size"]:
                problems.append(f"{prefix}: token id beyond vocab")
            if group == "train" and len(ds) and len(ds[0]) != m["sequence_length"] + 1:
                problems.append(f"{prefix}: sequence length {len(ds[0])} != {m['sequence_length'] + 1}")
    if not m["train_tokens"]:
        problems.append("no training tokens")
    return dg.AssetCheckResult(check_name="megatron_readback", passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"problems": dg.MetadataValue.json(problems),
                                         "blend": dg.MetadataValue.text(json.dumps(m["blend"]))})
