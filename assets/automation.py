"""Automation conditions shared by the stages.

Dagster's staleness is not transitive (a changed mix marks only `data_mix` stale), so kura makes the cascade
explicit: the assets that embed a YAML spec in their code version (a mix phase, a run — its checkpoint and
upcycling —, a merge) carry `code_version_changed() | EAGER` and everything downstream `EAGER`; one tick of the
automation sensor then requests the edited asset and all its downstream stages together, nothing upstream. Code
edits elsewhere mark assets stale (derived code versions) and are rebuilt from the UI, not automatically: a change
to a module every stage reaches would otherwise retrain everything unasked.
`any_deps_missing` is dropped from eager because the synthetic asset has one partition per day and days that were
never generated are expected. Blocking checks gate the stages that follow, except the synthetic shards' gate: a
failed shard is recorded and every reader skips it by itself (`gated_rows` reads gate-passed shards only), so one
bad shard must not stop the whole chain: a mix whose synthetic source is `optional` goes on without it.
"""
import dagster as dg

EAGER = (dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
         & dg.AutomationCondition.all_deps_blocking_checks_passed().ignore(
             dg.AssetSelection.key_prefixes(["synthetic"])))
ON_EDIT_OR_EAGER = dg.AutomationCondition.code_version_changed() | EAGER

# The synthetic shards are generated day by day by the nightly schedule (a missing day is not automation's to fill),
# but a shard that exists was made by one teacher and one spec: when the teacher changes (`teacher/<name>` rebuilt, or
# another model observed behind `resource/generator`) or the dataset's spec is edited (its code version), exactly the
# shards already made are regenerated, once. Only these
# two parents count: the corpus reaches the shards through the teacher (which is rebuilt from it first), so reacting
# to `deduplicated` too would generate every shard twice. Their readers follow by EAGER once the shards are written
# (a daily shard and an unpartitioned reader never share a run, so they never start beside it).
def regenerate_for_new_teacher(teacher: dg.AssetKey) -> dg.AutomationCondition:
    """The condition of a dataset whose teacher is the asset `teacher`."""
    return (
        ~dg.AutomationCondition.missing()
        & (dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).allow(
            dg.AssetSelection.assets(teacher, dg.AssetKey(["resource", "generator"]))).since_last_handled()
           | dg.AutomationCondition.code_version_changed())
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("regenerate the shards made by a previous teacher or spec")
