"""One plain sentence for a failed run of the demo (or any command that runs jobs in process), the trace in a log.

A user of `make demo` should read what failed, where, why and what to do — not a Dagster stack trace. The sentence
comes from the run's own events: a failed asset check contributes its `explanation` metadata (the check knows the
way out, e.g. the synthetic gate names the shard, the reject rate against its limit and the top reasons), a failed
step its error's first line. Every failure's full trace (with causes) goes to `<home>/logs/<job>-<run id>.log`.
"""
from __future__ import annotations

from pathlib import Path


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "no message")


def explain_failure(job: str, partition: str | None, result, log_dir: Path) -> str:
    """The sentence for a failed ExecuteInProcessResult; writes the traces to a log file and names it."""
    where = f"{job}[{partition}]" if partition else job
    reasons: list[str] = []
    for ev in result.get_asset_check_evaluations():
        if not ev.passed:
            md = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
            reasons.append(str(md.get("explanation") or
                               f"check {ev.check_name} on {ev.asset_key.to_user_string()} failed"))
    traces: list[str] = []
    for e in result.all_events:
        if not e.is_failure:
            continue
        err = getattr(e.event_specific_data, "error", None)
        traces.append(f"== {e.event_type_value} {e.step_key or ''}\n{err.to_string() if err else e.message}")
        if e.is_step_failure and err is not None and not reasons:
            msg = _first_line(err.cause.message if err.cause else err.message)
            reasons.append(f"step {e.step_key} raised {msg}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{job}-{result.run_id}.log"
    log.write_text("\n\n".join(traces) or "no failure events were recorded\n")
    why = "; ".join(dict.fromkeys(reasons)) or "the run failed without a failing step (see the log)"
    return f"kura: {where} failed: {why}. Full trace: {log}"


def blocked_shard(result, asset: str = "synthetic") -> str | None:
    """The explanation when a run failed only because blocking gates failed on shards that were still recorded
    (readers skip gate-failed shards by themselves): the gates of `asset` or of the assets under the key prefix
    `asset/` (every synthetic dataset). None when anything else failed."""
    failed = [ev for ev in result.get_asset_check_evaluations() if not ev.passed]
    keys = {ev.asset_key.to_user_string() for ev in failed}
    if not failed or any(k != asset and not k.startswith(asset + "/") for k in keys):
        return None
    steps = {k.replace("/", "__") for k in keys}
    if any(e.is_step_failure and (e.step_key or "") not in steps for e in result.all_events):
        return None
    try:
        for step in steps:
            result.output_for_node(step)
    except Exception:  # noqa: BLE001 - a shard itself was not written: a real failure
        return None
    why = []
    for ev in failed:
        md = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
        why.append(str(md.get("explanation") or f"check {ev.check_name} on {ev.asset_key.to_user_string()} failed"))
    return "; ".join(why)
