"""Scale of dynamic partitions: what happens to a Dagster instance with 100,000 corpus-file partitions.

    .venv/bin/python benchmarks/partitions.py [--partitions 100000] [--materialized 5000]

On a fresh SQLite instance, with kura's real definitions:
1. registers N `corpus_files` partitions (batched `add_dynamic_partitions`);
2. times `corpus_files_sensor` ticks over a folder of N files: the first tick (everything new) and a steady tick
   (N known, 10 new);
3. records M `raw_corpus` and `cleaned` materializations (runless events with data versions, as runs would);
4. times the queries the UI and the automation make: materialized-partition lookup, partition status counts,
   the stale status of one partition, of `deduplicated` (which fans in all `cleaned` partitions), and one
   declarative-automation evaluation over the whole graph.
Prints a table of seconds per step; the closing note of the issue says what breaks first.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(label: str, fn, rows: list):
    t = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - t))
    print(f"  {label:60s} {rows[-1][1]:9.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=100_000)
    ap.add_argument("--materialized", type=int, default=5_000,
                    help="partitions of raw_corpus and cleaned given a materialization event (~9 ms each on SQLite)")
    ap.add_argument("--skip-automation", action="store_true", help="skip the whole-graph automation evaluation")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kura-partitions-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ.update({"DAGSTER_HOME": str(home), "KURA_HOME": str(work / "kura"), "DAGSTER_DISABLE_TELEMETRY": "1"})
    import dagster as dg
    from dagster._core.definitions.data_version import DATA_VERSION_TAG
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from assets.corpus import corpus_partitions
    from pipelines.definitions import build_definitions, corpus_files_sensor

    corpus_dir = work / "corpus"
    corpus_dir.mkdir()
    names = [f"shard-{i:06d}.jsonl" for i in range(args.partitions)]
    for n in names:
        (corpus_dir / n).touch()
    os.environ["KURA_CORPUS_DIR"] = str(corpus_dir)
    defs = build_definitions()
    rows: list = []
    print(f"{args.partitions} partitions, {args.materialized} materialized, SQLite instance in {home}")
    with dg.DagsterInstance.get() as instance:
        ctx = lambda: dg.build_sensor_context(instance=instance, resources={"corpus": defs.resources["corpus"]})  # noqa: E731
        first = timed(f"sensor tick, {args.partitions} new files", lambda: corpus_files_sensor(ctx()), rows)
        adds = first.dynamic_partitions_requests[0].partition_keys
        cap = defs.resources["corpus"].max_runs_in_flight
        assert len(adds) == args.partitions and len(first.run_requests) == min(cap, args.partitions)
        print(f"  (first tick: {len(adds)} partitions registered, {len(first.run_requests)} runs requested: "
              f"backpressure at {cap} in flight; cursor {first.cursor})")

        def register():
            for i in range(0, len(adds), 10_000):
                instance.add_dynamic_partitions(corpus_partitions.name, adds[i:i + 10_000])
        timed(f"register {args.partitions} dynamic partitions", register, rows)
        for i in range(10):
            (corpus_dir / f"new-{i}.jsonl").touch()
        steady = timed(f"sensor tick, {args.partitions} known + 10 new", lambda: corpus_files_sensor(ctx()), rows)
        assert len(steady.dynamic_partitions_requests[0].partition_keys) == 10
        timed("list the partitions (get_dynamic_partitions)",
              lambda: instance.get_dynamic_partitions(corpus_partitions.name), rows)

        def materialize():
            for k in names[: args.materialized]:
                for a in ("raw_corpus", "cleaned"):
                    instance.report_runless_asset_event(dg.AssetMaterialization(
                        asset_key=a, partition=k, tags={DATA_VERSION_TAG: f"v-{a}-{k}"}))
        timed(f"record {2 * args.materialized} partition materializations", materialize, rows)
        key = dg.AssetKey("cleaned")
        got = timed("materialized partitions of cleaned",
                    lambda: instance.get_materialized_partitions(key), rows)
        assert len(got) == args.materialized
        graph = defs.resolve_asset_graph()
        assets = list(graph.assets_defs)
        timed("stale status of one cleaned partition",
              lambda: get_stale_status_resolver(instance, assets).get_status(key, names[0]), rows)
        ded = dg.AssetKey("deduplicated")
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=ded, tags={DATA_VERSION_TAG: "d1"}))
        st = timed("stale status of deduplicated (fans in every cleaned partition)",
                   lambda: get_stale_status_resolver(instance, assets).get_status(ded), rows)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=key, partition=names[0], tags={DATA_VERSION_TAG: "changed"}))
        st2 = timed("... after one cleaned partition changed",
                    lambda: get_stale_status_resolver(instance, assets).get_status(ded), rows)
        print(f"  deduplicated: {st.value} before, {st2.value} after one upstream partition changed")
        if not args.skip_automation:
            timed("one declarative-automation evaluation of the whole graph",
                  lambda: dg.evaluate_automation_conditions(defs=defs, instance=instance), rows)
    print(f"\n{'step':60s} {'seconds':>9s}")
    for label, s in rows:
        print(f"{label:60s} {s:9.2f}")


if __name__ == "__main__":
    main()
