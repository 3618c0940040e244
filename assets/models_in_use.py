"""The models the pipeline talks to, observed as source assets: `resource/generator` (the teacher that writes the
synthetic shards) and `resource/judge` (the judge that grades the evaluations).

Their identities (backend, endpoint, served model name and what `/v1/models` says is behind it) are already in the
input version of every asset that uses them, so a rebuild never reuses a shard or a grade made by another model.
Observing them makes the switch visible to Dagster itself: the observation's data version is the identity's hash,
so after `KURA_JUDGE_URL` / `KURA_JUDGE_MODEL` point elsewhere (or the server behind the same name loads other
weights), the next observation (each minute, by the automation sensor; before every `make demo`) marks the grades
stale in the UI and the eager conditions rebuild exactly them and what reads them, once. An observation with an
unchanged identity is no update (Dagster compares data versions), so the minute cron triggers nothing by itself.
Only the two resources that name a *model* are observed; the others (trainers, candidate backend) are execution
choices whose identities enter the input versions and are picked up at the next rebuild, without an automatic
retrain of everything when, say, an image tag moves.
"""
import dagster as dg

from kura.io import stable_hash

OBSERVED_RESOURCES = {"generator": "synthetic", "judge": "evaluation"}


def resource_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["resource", name])


def build_resource_observation(name: str, group: str) -> dg.AssetsDefinition:
    @dg.observable_source_asset(key=resource_key(name), group_name=group, required_resource_keys={name},
                                automation_condition=dg.AutomationCondition.on_cron("* * * * *"),
                                description=f"Identity of the `{name}` resource (backend, endpoint, served model); "
                                            f"its data version changes when another model is behind it.")
    def observe_resource(context) -> dg.ObserveResult:
        ident = getattr(context.resources, name).identity()  # never holds the API key
        context.log.info(f"{name}: {ident}")
        return dg.ObserveResult(data_version=dg.DataVersion(stable_hash(ident)),
                                metadata={"identity": dg.MetadataValue.json(ident)})

    return observe_resource


resource_observations = [build_resource_observation(n, g) for n, g in OBSERVED_RESOURCES.items()]
