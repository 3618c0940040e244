"""IO manager for manifests: assets return small JSON dicts (URIs, counts, hashes); this stores them as JSON
beside the data (`<root>/_manifests/<asset>/<partition>.json`). Never pickle; large data never passes here.

A downstream asset that depends on many partitions receives `{partition_key: manifest}` for the partitions that
exist (a mix over "all synthetic days so far" must not fail because tomorrow is not generated yet).
"""

import dagster as dg

from kura.io.layout import LAYOUT
from resources.storage import StorageResource

def manifest_path(key: dg.AssetKey, partition: str | None = None) -> str:
    return LAYOUT.manifest(key.path, partition)


def latest_manifest(storage, key: dg.AssetKey, partition: str | None = None) -> dict | None:
    """The manifest of the asset's latest materialization (what downstream assets receive), if any — for stages
    that carry state forward, like incremental dedup."""
    rel = manifest_path(key, partition)
    return storage.read_json(rel) if storage.exists(rel) else None


class ManifestIOManager(dg.ConfigurableIOManager):
    storage: dg.ResourceDependency[StorageResource]

    def _rel(self, key: dg.AssetKey, partition: str | None) -> str:
        return manifest_path(key, partition)

    def handle_output(self, context: dg.OutputContext, obj: dict) -> None:
        if obj is None:
            return
        if not isinstance(obj, dict):
            raise TypeError(f"{context.asset_key.to_user_string()}: assets must return a JSON manifest (dict)")
        part = context.partition_key if context.has_partition_key else None
        self.storage.get().write_json(self._rel(context.asset_key, part), obj)

    def load_input(self, context: dg.InputContext):
        storage = self.storage.get()
        key = context.asset_key
        if not context.has_asset_partitions:
            return storage.read_json(self._rel(key, None))
        keys = context.asset_partition_keys
        if context.has_partition_key and len(keys) == 1:  # partition -> same partition (raw_corpus -> cleaned)
            return storage.read_json(self._rel(key, keys[0]))
        out = {}
        for pk in keys:  # unpartitioned downstream of a partitioned asset: the partitions that exist
            rel = self._rel(key, pk)
            if storage.exists(rel):
                out[pk] = storage.read_json(rel)
        return out
