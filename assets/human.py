"""`human/<name>`: one human-written instruction or preference collection (`pipelines/human/*.yaml`, typed in
kura.human), read line by line into conversations (records.parquet, the synthetic records' schema, so mixes and
SFT read both alike), DPO pairs (pairs.parquet, preference collections) and quarantined lines with
`<file>:<line>: <reason>` (quarantine.parquet). The code version is the spec plus the file's content hash, so an
edited file makes the collection and its readers stale. A collection with too many bad lines fails its blocking
check in one sentence and feeds nothing.
"""

import json
from pathlib import Path

import dagster as dg

from assets._common import kura_asset, output, run_versioned, write_parquet
from assets.automation import ON_EDIT_OR_EAGER
from kura.human import BAD_LINE_SCHEMA, PAIR_SCHEMA, HumanDatasetSpec, read_human
from kura.synth.shard import RECORD_SCHEMA
from resources import StorageResource


def human_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["human", name])


def human_ins(names) -> dict[str, dg.AssetIn]:
    return {f"human__{n}": dg.AssetIn(key=human_key(n)) for n in sorted(names)}


def human_inputs(inputs: dict) -> dict[str, dict]:
    """{name: manifest} of a reader's human inputs."""
    return {k.split("__", 1)[1]: m for k, m in sorted(inputs.items()) if k.startswith("human__")}


def build_human_dataset(spec: HumanDatasetSpec, root: Path) -> dg.AssetsDefinition:
    key = human_key(spec.name)
    version_text = spec.version_text(root)

    @kura_asset(key=key, group_name="human_data", automation_condition=ON_EDIT_OR_EAGER,
                code_version_extra=version_text,
                description=f"Human {spec.kind} collection {spec.name} ({spec.path}): {spec.description}".strip(),
                check_specs=[dg.AssetCheckSpec("malformed_lines_within_limit", asset=key, blocking=True,
                                               description="At most max_bad_fraction of the lines quarantined.")])
    def _human(context: dg.AssetExecutionContext, storage: StorageResource):
        st = storage.get()

        def build(stage: Path) -> dict:
            data = read_human(spec.file(root), spec, shown_as=spec.path)
            write_parquet(stage / "records.parquet", data.records, RECORD_SCHEMA)
            write_parquet(stage / "pairs.parquet", data.pairs, PAIR_SCHEMA)
            write_parquet(stage / "quarantine.parquet", data.bad, BAD_LINE_SCHEMA)
            return {"dataset": spec.name, "kind": spec.kind, "lines": data.lines, "records": len(data.records),
                    "pairs": len(data.pairs), "bad_lines": len(data.bad), "bad_fraction": round(data.bad_fraction, 4),
                    "first_bad": [b["reason"] for b in data.bad[:5]], "lang": spec.lang,
                    "gate_passed": data.bad_fraction <= spec.max_bad_fraction}

        m, reused = run_versioned(context, st, config=json.loads(version_text), upstream={}, build=build)
        yield output(m, reused, **{k: m[k] for k in ("kind", "lines", "records", "pairs", "bad_lines", "first_bad")},
                     licence=spec.licence, tags=spec.tags)
        why = (f"human dataset {spec.name}: {m['bad_lines']} of {m['lines']} lines of {spec.path} are malformed "
               f"({m['bad_fraction']:.1%}, limit {spec.max_bad_fraction:.1%}; first: "
               f"{'; '.join(m['first_bad'][:3])}); fix those lines, or raise max_bad_fraction in "
               f"{Path(spec.source_file or spec.name).name} to accept them")
        yield dg.AssetCheckResult(check_name="malformed_lines_within_limit", passed=m["gate_passed"],
                                  severity=dg.AssetCheckSeverity.ERROR,
                                  description=None if m["gate_passed"] else why,
                                  metadata={"bad_lines": m["bad_lines"], "lines": m["lines"]})

    return _human
