"""Drive declarative automation the way the automation sensor does, tick after tick, in-process.

Each tick evaluates every asset's own automation condition (`dg.evaluate_automation_conditions`, the sensor's
evaluation) and launches what it requested the way the sensor does: one run per partition key (and one for the
unpartitioned assets). Runs of one tick are concurrent in a deployment, so a tick that requests an asset in one run
and one of its ancestors in another is recorded as a violation ("would materialize while an ancestor is about to be
rebuilt"); the driver then executes the runs in dependency order and counts materializations per (asset, partition).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class Drive:
    counts: Counter = field(default_factory=Counter)
    ticks: int = 0
    violations: list[str] = field(default_factory=list)
    cursor: object = None

    def materialized(self) -> set[tuple[str, str | None]]:
        return set(self.counts)

    def twice(self) -> dict:
        return {k: n for k, n in self.counts.items() if n > 1}


OBSERVE_JOBS = ("corpus_snapshot_job", "observe_models_job")


def drive(defs: dg.Definitions, instance, cursor=None, run_config_for=None, max_ticks: int = 12,
          observe: tuple[str, ...] | None = None) -> Drive:
    """Evaluate and execute until a tick requests nothing. `run_config_for(keys)` gives each run's config.
    Before each tick the observable sources are observed (`observe`: job names; default the corpus snapshot and
    the model resources present in `defs`), as their minute crons do in a deployment, so a changed input is seen."""
    graph = defs.resolve_asset_graph()
    out = Drive(cursor=cursor)
    names = {j.name for j in defs.jobs}
    observe = tuple(j for j in OBSERVE_JOBS if j in names) if observe is None else observe
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    for _ in range(max_ticks):
        for job in observe:
            defs.resolve_job_def(job).execute_in_process(instance=instance, run_config=quiet)
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=out.cursor)
        out.cursor = res.cursor
        groups: dict[str | None, list[dg.AssetKey]] = defaultdict(list)
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            if res.get_num_requested(key) == 0 or not node.is_materializable:
                continue  # observations (corpus_snapshot's minute cron) are not materializations
            for pk in (sorted(res.get_requested_partitions(key)) if node.is_partitioned else [None]):
                groups[pk].append(key)
        if not groups:
            return out
        out.ticks += 1
        run_of = {(k, pk): pk for pk, keys in groups.items() for k in keys}
        for (k, pk) in run_of:
            for anc in _requested_ancestors(graph, instance, k, pk, run_of):
                if run_of[anc] != pk:
                    out.violations.append(f"tick {out.ticks}: {k.to_user_string()}[{pk}] requested beside its "
                                          f"ancestor {anc[0].to_user_string()}[{anc[1]}] in another run")
        order = _topological_groups(graph, groups)
        for pk in order:
            keys = groups[pk]
            job = defs.resolve_implicit_job_def_def_for_assets(keys)
            run = job.execute_in_process(instance=instance, asset_selection=keys, partition_key=pk,
                                         run_config=run_config_for(keys) if run_config_for else None,
                                         raise_on_error=True)
            for ev in run.get_asset_materialization_events():
                mat = ev.event_specific_data.materialization
                out.counts[(mat.asset_key.to_user_string(), mat.partition)] += 1
    raise AssertionError(f"automation still requested runs after {max_ticks} ticks: {dict(out.counts)}")


def _requested_ancestors(graph, instance, key, pk, requested: dict) -> set:
    """(asset, partition) ancestors of one requested partition, through the graph's partition mappings, that are
    themselves requested in this tick."""
    from dagster._core.definitions.partitions.context import partition_loading_context

    found, seen, frontier = set(), set(), [(key, pk)]
    with partition_loading_context(dynamic_partitions_store=instance):
        while frontier:
            k, p = frontier.pop()
            parents = graph.get_parents_partitions(k, p).parent_partitions
            unpartitioned = {(pk_, None) for pk_ in graph.get(k).parent_keys
                             if graph.has(pk_) and not graph.get(pk_).is_partitioned}
            for parent in [*((a.asset_key, a.partition_key) for a in parents), *unpartitioned]:
                if parent in seen:
                    continue
                seen.add(parent)
                if parent in requested:
                    found.add(parent)
                frontier.append(parent)
    return found


def _topological_groups(graph, groups: dict) -> list:
    """Run groups ordered so that a group containing an ancestor of another group's asset runs first."""
    pending = list(groups)
    order: list = []
    while pending:
        for pk in pending:
            others = [o for o in pending if o != pk]
            blocked = any(anc in groups[o] for o in others for k in groups[pk]
                          for anc in graph.get_ancestor_asset_keys(k))
            if not blocked:
                order.append(pk)
                pending.remove(pk)
                break
        else:  # a cycle between partitionings cannot happen in a DAG; keep the rest as they are
            order += pending
            break
    return order
