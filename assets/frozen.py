"""Frozen datasets as observable source assets: their data version is the md5 DVC recorded for the frozen folder
(`dvc.lock` or `<folder>.dvc`), so freezing a new version — or checking out another tag — marks everything that
reads it stale. Observing is cheap (one small YAML file), so the automation sensor can do it every tick."""

from pathlib import Path

import dagster as dg

from kura.io.freeze import dvc_md5


def frozen_dataset(name: str, out_path: str, repo: str = ".") -> dg.AssetsDefinition:
    """Observable source `frozen/<name>` over the DVC-tracked folder `out_path` of the repository `repo`."""

    @dg.observable_source_asset(key=["frozen", name], group_name="frozen",
                                description=f"DVC-tracked {out_path} (data version = DVC md5).")
    def _frozen(context) -> dg.DataVersion:
        md5 = dvc_md5(repo, out_path)
        if md5 is None:
            context.log.info(f"{out_path} is not tracked by DVC in {Path(repo).resolve()} yet")
            return dg.DataVersion("not-frozen")
        return dg.DataVersion(md5)

    return _frozen
