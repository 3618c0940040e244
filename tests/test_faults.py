"""Level 3: kill -9 anywhere. The `graph` fixture's pipeline runs in a process group of its own
(`tests/fault_driver.py`); a watcher reads the live Dagster event log and SIGKILLs the whole group inside one stage
of every kind (ingest, dedup, teacher training, vLLM generation, tokenizer, packing, pretraining, upcycling,
evaluation, a LoRA trial), then starts it again. The final run must give every asset the same content version as
the uninterrupted `graph` run, every published folder must be whole, every output must have been built exactly once
(later attempts reuse it), and no staging folder of a killed attempt may remain.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import ROOT

# (step key prefix, which start of it within one attempt, seconds after its start): one kill per stage kind, in
# the order the demo reaches them. Delays are short enough to land inside the step on CI's 2 cores.
KILLS = [("cleaned", 3, 0.3), ("deduplicated", 1, 0.5), ("teacher__demo", 1, 4.0), ("synthetic", 1, 12.0),
         ("tokenizer", 1, 0.5), ("packed_dataset", 1, 0.3), ("checkpoint__dense_1", 1, 3.0),
         ("upcycled", 1, 0.5), ("eval_tasks", 1, 1.0), ("adapter", 1, 2.0)]


class _StepWatch:
    """(timestamp, step key) of every step started in runs created after `since`, read from the attempt's live
    Dagster event log. The instance is opened once and a finished run's starts are read once: polling every
    0.2 s must not take the CPU the attempt needs (reopening the instance and rereading every run did)."""

    def __init__(self, dagster_home: Path, since: float):
        self.home, self.since, self.inst, self.done = dagster_home, since, None, {}

    def starts(self) -> list[tuple[float, str]]:
        import dagster as dg

        if self.inst is None:
            if not (self.home / "dagster.yaml").exists():
                return []
            self.inst = dg.DagsterInstance.from_config(str(self.home))
        out = []
        created = datetime.fromtimestamp(self.since, tz=timezone.utc)
        for run in self.inst.get_runs(filters=dg.RunsFilter(created_after=created)):
            if run.run_id in self.done:
                out += self.done[run.run_id]
                continue
            recs = [(r.timestamp, r.step_key)
                    for r in self.inst.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)]
            if run.is_finished:
                self.done[run.run_id] = recs
            out += recs
        return sorted(out)

    def close(self):
        if self.inst is not None:
            self.inst.dispose()


def _attempt(home: Path, env: dict, kill: tuple[str, int, float] | None, timeout: float = 900) -> dict:
    """Run the driver once; SIGKILL its process group `delay` s after the n-th start of a matching step."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_driver", str(home)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed_in = None
    watch = _StepWatch(home / "dagster_home", t0 - 1)
    try:
        while proc.poll() is None and kill and killed_in is None:
            time.sleep(0.2)
            if time.time() - t0 > timeout:
                break
            starts = [(ts, k) for ts, k in watch.starts() if k.startswith(kill[0])]
            if len(starts) >= kill[1]:
                time.sleep(max(0.0, starts[kill[1] - 1][0] + kill[2] - time.time()))
                os.killpg(proc.pid, signal.SIGKILL)
                killed_in = starts[kill[1] - 1][1]
        out, _ = proc.communicate(timeout=timeout)
    finally:
        watch.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"rc": proc.returncode, "killed_in": killed_in, "seconds": time.time() - t0, "log": out}


def _published_dirs_are_whole(storage_root: Path) -> list[str]:
    """Problems of any published output: every manifest's folder has its commit marker and exactly the files,
    sizes and hashes the manifest lists (a reader can never see a partial output)."""
    from kura.io.hashing import sha256_file
    from kura.io.versioned import MANIFEST_NAME

    problems = []
    for mf in sorted((storage_root / "_manifests").rglob("*.json")):
        m = json.loads(mf.read_text())
        d = storage_root / m["dir"]
        if not (d / MANIFEST_NAME).exists():
            problems.append(f"{m['dir']}: no commit marker")
            continue
        for rel, info in m["files"].items():
            p = d / rel
            if not p.exists() or p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
                problems.append(f"{m['dir']}/{rel}: missing or not the published bytes")
    return problems


@pytest.mark.slow
@pytest.mark.faults
def test_kill_9_in_every_kind_of_stage_then_resume(graph, tmp_path):
    import dagster as dg

    from tests.test_s3 import versions

    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("KURA_HOME", "DAGSTER_HOME", "KURA_MIX_FILE", "KURA_STORAGE_ROOT", "KURA_CORPUS_DIR"):
        env.pop(k, None)
    attempts = []
    for kill in KILLS:
        a = _attempt(home, env, kill)
        attempts.append(a)
        assert a["rc"] == -signal.SIGKILL and a["killed_in"], f"not killed in {kill[0]}: rc {a['rc']}\n{a['log']}"
    final = _attempt(home, env, None)
    assert final["rc"] == 0, final["log"]
    report = [(a["killed_in"], round(a["seconds"], 1)) for a in attempts]
    print(f"kills (step, seconds into the attempt): {report}; final resume {final['seconds']:.0f} s")

    here, local = json.loads((home / "versions.json").read_text()), versions(graph.out)
    assert set(here) == set(local)
    differ = {k: (local[k], here[k]) for k in here if here[k] != local[k]}
    assert not differ, f"{len(differ)} of {len(here)} assets got other versions after kill -9 and resume: {differ}"

    storage = home / "storage"
    assert not _published_dirs_are_whole(storage)
    stages = [p.name for base in (storage / ".staging", home / "cache") if base.exists()
              for p in base.rglob("stage-*") if p.is_dir()]
    assert not stages, f"staging folders of killed attempts remain: {stages}"

    # every output was built exactly once: later attempts found it by input version and reused it
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as inst:
        built: dict[str, int] = {}
        for key in inst.get_asset_keys():
            for rec in inst.fetch_materializations(key, limit=10000).records:
                mat = rec.asset_materialization
                name = f"{key.to_user_string()}[{mat.partition}]" if mat.partition else key.to_user_string()
                reused = mat.metadata.get("reused_existing_output")
                if reused is not None and not reused.value:
                    built[name] = built.get(name, 0) + 1
    twice = {k: n for k, n in built.items() if n > 1}
    assert not twice, f"outputs built more than once across the killed attempts: {twice}"
