"""Dagster resources: thin adapters from kura backends to Dagster. Each is an interface with a local and a
cluster implementation; `pipelines.definitions` picks the set by environment."""
from resources.arena import ArenaStoreResource
from resources.corpus import CorpusResource
from resources.generator import GeneratorResource
from resources.io_manager import ManifestIOManager
from resources.storage import StorageResource

__all__ = ["ArenaStoreResource", "CorpusResource", "GeneratorResource", "ManifestIOManager", "StorageResource"]
