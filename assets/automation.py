"""Automation conditions shared by the stages.

Dagster's staleness is not transitive (a changed mix marks only `data_mix` stale), so kura makes the cascade
explicit: the mix carries `code_version_changed() | EAGER` and everything downstream `EAGER`; one tick of the
automation sensor then requests the mix and all its downstream stages together, nothing upstream.
`any_deps_missing` is dropped from eager because the synthetic asset has one partition per day and days that were
never generated are expected; the gate on blocking checks keeps a failing shard out of training.
"""
import dagster as dg

EAGER = (dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
         & dg.AutomationCondition.all_deps_blocking_checks_passed())
ON_EDIT_OR_EAGER = dg.AutomationCondition.code_version_changed() | EAGER
