"""Level 2: frozen datasets through DVC against a real S3 server (SeaweedFS on 127.0.0.1): freeze → dvc add → push
→ wipe cache → pull byte-identical; a fresh clone pulls the same bytes; another repository imports it at a tag;
the DVC md5 is the data version of the frozen source asset, so a new frozen version makes its readers stale."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kura.io import Storage, materialize_versioned, sha256_file
from kura.io.freeze import dvc_md5, freeze

DVC = str(Path(sys.executable).parent / "dvc")
GIT_ID = ["-c", "user.name=kura-test", "-c", "user.email=kura-test@example.invalid"]


def sh(cwd: Path, *args: str) -> str:
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(args)} in {cwd}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def new_repo(path: Path, endpoint: str) -> Path:
    path.mkdir(parents=True)
    sh(path, "git", "init", "-q", "-b", "main")
    sh(path, DVC, "init", "-q")
    sh(path, DVC, "config", "core.analytics", "false")
    sh(path, DVC, "remote", "add", "-d", "store", "s3://kura/dvc-store")
    sh(path, DVC, "remote", "modify", "store", "endpointurl", endpoint)
    return path


@pytest.fixture
def dvc_env(s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)  # credentials only from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no global git/dvc config of the machine leaks in
    return s3_server


def freeze_version(tmp_path: Path, repo: Path, rows: int) -> dict:
    """A committed kura output (content-addressed, with its manifest) frozen into the repo's data/frozen/ds."""
    st = Storage(str(tmp_path / "storage"))

    def build(stage):
        pq.write_table(pa.table({"tokens": list(range(rows))}), stage / "train.parquet")
        (stage / "blend.json").write_text('{"train": [1.0, "train"]}')
        return {"rows": rows}

    m, _ = materialize_versioned(st, "packed_dataset/web", f"in-{rows}", build)
    return freeze(st, m["dir"], repo / "data" / "frozen" / "ds")


def test_push_wipe_pull_clone_and_import_at_a_tag_are_byte_identical(dvc_env, tmp_path):
    producer = new_repo(tmp_path / "producer", dvc_env.endpoint)
    manifest = freeze_version(tmp_path, producer, rows=1000)
    sh(producer, DVC, "add", "-q", "data/frozen/ds")
    sh(producer, "git", "add", "-A")
    sh(producer, "git", *GIT_ID, "commit", "-qm", "freeze packed_dataset/web")
    sh(producer, "git", "tag", "v1")
    sh(producer, DVC, "push", "-q")
    want = digests(producer / "data/frozen/ds")
    assert set(want) == set(manifest["files"]) | {"_MANIFEST.json"}
    v1 = dvc_md5(producer, "data/frozen/ds")
    assert v1 and v1.endswith(".dir")

    # wipe the local cache and the data: everything must come back from S3
    shutil.rmtree(producer / ".dvc" / "cache")
    shutil.rmtree(producer / "data/frozen/ds")
    sh(producer, DVC, "pull", "-q")
    assert digests(producer / "data/frozen/ds") == want

    # a training pod: a fresh clone, then dvc pull
    pod = tmp_path / "pod"
    sh(tmp_path, "git", "clone", "-q", str(producer), str(pod))
    sh(pod, DVC, "pull", "-q")
    assert digests(pod / "data/frozen/ds") == want

    # a new version on main, then another repository imports the old one at its tag
    freeze_version(tmp_path, producer, rows=2000)
    sh(producer, DVC, "add", "-q", "data/frozen/ds")
    sh(producer, "git", *GIT_ID, "commit", "-qam", "freeze a new packed_dataset/web")
    sh(producer, DVC, "push", "-q")
    assert dvc_md5(producer, "data/frozen/ds") != v1
    other = new_repo(tmp_path / "other", dvc_env.endpoint)
    sh(other, DVC, "import", "-q", str(producer), "data/frozen/ds", "-o", "ds", "--rev", "v1")
    assert digests(other / "ds") == want
    assert "rev: v1" in (other / "ds.dvc").read_text()


def test_dvc_md5_is_the_data_version_of_the_frozen_source(tmp_path):
    """A new frozen version (another md5 in the .dvc file) makes the assets that read it stale."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from assets.frozen import frozen_dataset

    repo = tmp_path / "repo"
    repo.mkdir()
    dvc_file = repo / "data" / "frozen" / "ds.dvc"
    dvc_file.parent.mkdir(parents=True)

    def track(md5: str) -> None:
        dvc_file.write_text(f"outs:\n- md5: {md5}\n  size: 10\n  nfiles: 2\n  hash: md5\n  path: ds\n")

    source = frozen_dataset("ds", "data/frozen/ds", repo=str(repo))

    @dg.asset(deps=[source.key], code_version="1")
    def trained_on_frozen() -> None:
        return None

    instance = dg.DagsterInstance.ephemeral()
    assets = [source, trained_on_frozen]
    track("aaaa.dir")
    dg.materialize([source], instance=instance, selection=[source.key])  # an observation
    obs = instance.fetch_observations(source.key, limit=1).records[0].asset_observation
    assert obs.tags["dagster/data_version"] == "aaaa.dir"
    assert dg.materialize(assets, instance=instance, selection=[trained_on_frozen.key]).success
    resolver = get_stale_status_resolver(instance, assets)
    assert resolver.get_status(trained_on_frozen.key) == StaleStatus.FRESH
    track("bbbb.dir")
    dg.materialize([source], instance=instance, selection=[source.key])
    resolver = get_stale_status_resolver(instance, assets)
    assert resolver.get_status(trained_on_frozen.key) == StaleStatus.STALE


def test_freeze_before_any_demo_says_what_to_run(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KURA_STORAGE_ROOT", raising=False)
    env_before = dict(os.environ)
    try:  # the command points KURA_HOME, DAGSTER_HOME and the caches at its home, as the CLI process does
        assert main(["freeze", "packed_dataset/web", "--out", str(tmp_path / "frozen"), "--home",
                     str(tmp_path / "home")]) == 2
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    err = capsys.readouterr().err
    assert "run `make demo` first" in err and "packed_dataset/web" in err
    assert not (tmp_path / "frozen").exists()
