"""kura (蔵, "storehouse"): the domain library behind the kura pipeline.

Pure, typed and importable without Dagster: every stage can also run from a plain script or inside a
Kubernetes pod. The Dagster layer (resources/, assets/, pipelines/) only wires these functions together.
"""
__version__ = "0.1.0"
