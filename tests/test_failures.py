"""Level 2: a failed run reads as one sentence (what, where, why, what to do), the trace goes to a log file."""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from pipelines.failures import blocked_shard, explain_failure


@dg.asset
def upstream_table() -> int:
    return 1


@dg.asset
def broken_stage(upstream_table: int) -> int:
    raise ValueError(f"shard 00017: column 'text' missing in /data/x.parquet (got {upstream_table} columns)")


def test_a_raising_step_reads_as_one_sentence_and_logs_its_trace(tmp_path):
    with dg.DagsterInstance.ephemeral() as inst:
        r = dg.materialize([upstream_table, broken_stage], instance=inst, raise_on_error=False)
    assert not r.success
    line = explain_failure("model_job", None, r, tmp_path / "logs")
    assert "\n" not in line
    assert line.startswith("kura: model_job failed: step broken_stage raised ValueError: shard 00017: column 'text' "
                           "missing in /data/x.parquet (got 1 columns). Full trace: "), line
    log = Path(line.rsplit("Full trace: ", 1)[1])
    text = log.read_text()
    assert log.parent == tmp_path / "logs"
    assert "raise ValueError" in text and "test_failures.py" in text, "the full trace is in the log"


@dg.asset(check_specs=[dg.AssetCheckSpec("gate", asset="shard", blocking=True)])
def shard():
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="gate", passed=False, severity=dg.AssetCheckSeverity.ERROR,
                              metadata={"explanation": "shard s1: 90% rejected (limit 50%)"})


def test_only_a_recorded_shard_behind_a_failed_gate_counts_as_blocked():
    """The demo goes on past a synthetic shard whose gate failed (the shard is recorded, readers skip it), never
    past a step that raised."""
    with dg.DagsterInstance.ephemeral() as inst:
        gated = dg.materialize([shard], instance=inst, raise_on_error=False)
        raised = dg.materialize([upstream_table, broken_stage], instance=inst, raise_on_error=False)
    assert not gated.success and blocked_shard(gated, "shard") == "shard s1: 90% rejected (limit 50%)"
    assert blocked_shard(raised, "broken_stage") is None and blocked_shard(gated, "other") is None
