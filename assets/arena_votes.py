"""The human arena's votes as an observable source: its data version is the hash of every vote (kura.arena.store),
so a new vote makes `arena` stale and the automation sensor re-rates. `arena_votes_sensor` checks the store each
minute and records an observation only when the votes changed (no run is launched for it)."""
import dagster as dg

from resources import ArenaStoreResource


@dg.observable_source_asset(key="arena_votes", group_name="evaluation",
                            description="Votes cast in the arena web app (`make arena`): rater, prompt, both "
                                        "answers, the contestants' model versions, the winner.")
def arena_votes(arena_store: ArenaStoreResource) -> dg.DataVersion:
    return dg.DataVersion(arena_store.get().version())


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Records a new observation of arena_votes when votes were cast since the last one.")
def arena_votes_sensor(context: dg.SensorEvaluationContext, arena_store: ArenaStoreResource) -> dg.SensorResult:
    version = arena_store.get().version()
    if version == context.cursor:
        return dg.SensorResult(skip_reason="no new votes")
    return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key="arena_votes",
                                                             tags={"dagster/data_version": version})],
                           cursor=version)
