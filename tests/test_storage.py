"""Level 1: storage, hashing and content-addressed outputs on a local root."""
from __future__ import annotations

import json
import os

import pytest

from kura.io import MANIFEST_NAME, Storage, hash_dir, materialize_versioned, stable_hash


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    st = Storage(str(tmp_path / "root"))
    st.write_json("a/b.json", {"x": 1})
    st.write_json("a/b.json", {"x": 2})
    assert st.read_json("a/b.json") == {"x": 2}
    assert [p.name for p in (tmp_path / "root" / "a").iterdir()] == ["b.json"]


def test_materialize_versioned_is_content_addressed_and_reused(tmp_path):
    st = Storage(str(tmp_path / "root"))
    calls = []

    def build(stage):
        calls.append(1)
        (stage / "data.txt").write_text("hello")
        return {"rows": 1}

    m1, reused1 = materialize_versioned(st, "asset", "in-1", build)
    m2, reused2 = materialize_versioned(st, "asset", "in-1", build)
    assert (reused1, reused2) == (False, True) and len(calls) == 1
    assert m1 == m2 and m1["dir"] == f"asset/{m1['version']}" and m1["rows"] == 1
    assert m1["version"] == hash_dir(tmp_path / "root" / m1["dir"], exclude=(MANIFEST_NAME,))[0]
    # other inputs with identical content land in the same immutable folder
    m3, _ = materialize_versioned(st, "asset", "in-2", build)
    assert m3["dir"] == m1["dir"] and len(calls) == 2


def test_a_killed_build_leaves_nothing_readable_and_reruns(tmp_path):
    st = Storage(str(tmp_path / "root"))

    def crash(stage):
        (stage / "half.parquet").write_bytes(b"PAR1 partial")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        materialize_versioned(st, "asset", "in-1", crash)
    assert not st.exists("asset/_inputs/in-1.json")
    assert not (tmp_path / "root" / "asset").exists() or not any(
        (p / MANIFEST_NAME).exists() for p in (tmp_path / "root" / "asset").iterdir())
    assert not any((tmp_path / "root" / ".staging").iterdir()), "staging folder cleaned up"
    m, reused = materialize_versioned(st, "asset", "in-1", lambda s: (s / "ok.txt").write_text("ok") and {})
    assert not reused and json.loads((tmp_path / "root" / m["dir"] / MANIFEST_NAME).read_text())["version"]


def test_committed_output_is_never_overwritten(tmp_path):
    st = Storage(str(tmp_path / "root"))
    m, _ = materialize_versioned(st, "k", "i", lambda s: (s / "f").write_text("1") and {})
    with st.staging_dir() as stage:
        (stage / "f").write_text("other")
        assert st.publish_dir(stage, m["dir"], MANIFEST_NAME, {}) is False
    assert (tmp_path / "root" / m["dir"] / "f").read_text() == "1"


def test_empty_root_is_refused():
    with pytest.raises(Exception, match="storage root is empty"):
        Storage("")


def test_freeze_copies_an_output_verified_byte_for_byte(tmp_path):
    from kura.io.freeze import freeze

    st = Storage(str(tmp_path / "root"))
    m, _ = materialize_versioned(st, "packed", "i", lambda s: (s / "train.bin").write_bytes(b"\x01\x02") and {})
    got = freeze(st, m["dir"], tmp_path / "frozen")
    assert got["version"] == m["version"]
    assert (tmp_path / "frozen" / "train.bin").read_bytes() == b"\x01\x02"
    assert json.loads((tmp_path / "frozen" / MANIFEST_NAME).read_text())["version"] == m["version"]
    (tmp_path / "root" / m["dir"] / "train.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match the manifest"):
        freeze(st, m["dir"], tmp_path / "frozen2")
    assert not (tmp_path / "frozen2").exists()


def test_staging_folders_of_killed_runs_are_removed_live_ones_kept(tmp_path):
    """A run SIGKILLed while building leaves its staging folder; the next staging call removes it (its process is
    gone) but never the folder of a run that is still alive."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time; from kura.io import Storage\n"
            "with Storage(sys.argv[1]).staging_dir() as st:\n"
            "    (st / 'part.bin').write_bytes(b'x' * 1000)\n"
            "    print(st.name, flush=True)\n"
            "    time.sleep(600)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "root")], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    names = [p.stdout.readline().strip() for p in procs]
    staging = tmp_path / "root" / ".staging"
    assert sorted(p.name for p in staging.iterdir()) == sorted(names)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    try:
        with Storage(str(tmp_path / "root")).staging_dir() as mine:
            left = sorted(p.name for p in staging.iterdir())
            assert left == sorted([names[1], mine.name]), "the dead run's folder went, the live run's stayed"
    finally:
        procs[1].kill()
        procs[1].wait()
    old = staging / "stage-legacy"  # the unnamed form of earlier versions: removed once idle for a day
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    with Storage(str(tmp_path / "root")).staging_dir():
        pass
    assert not old.exists() and not (staging / names[0]).exists()


def test_sidecars_hash_content_not_timings_or_paths():
    from kura.io.hashing import content_only

    info = {"kept": 32, "backend_startup_seconds": 47.8, "uri": "/home/a/.kura/storage/x", "sampling": {"seed": 0},
            "curve": [{"step": 0, "loss": 2.5, "tokens_per_second": 812.0}], "generated": 30, "resumed": 2}
    assert content_only(info) == {"kept": 32, "sampling": {"seed": 0}, "curve": [{"step": 0, "loss": 2.5}]}


DISK_FULL = r"""
import json, os, sys
from kura.io import Storage, StorageError, materialize_versioned
st = Storage(sys.argv[1])
def build(n):
    def _b(stage):
        (stage / "data.bin").write_bytes(os.urandom(n))
        return {"n": n}
    return _b
small = materialize_versioned(st, "shards", "in-small", build(100_000))[0]
try:
    materialize_versioned(st, "shards", "in-big", build(3_000_000))
    err = None
except StorageError as e:
    err = str(e)
after = materialize_versioned(st, "shards", "in-after", build(100_000))[0]  # space is back: a rerun works
print(json.dumps({"error": err, "small": small["dir"], "after": after["dir"],
                  "staging": os.listdir(os.path.join(sys.argv[1], ".staging")),
                  "published": sorted(os.listdir(os.path.join(sys.argv[1], "shards")))}))
"""


def test_disk_full_while_building_is_one_sentence_and_leaves_nothing(tmp_path):
    """A 1 MB filesystem (tmpfs in a private mount namespace) fills up while an output is staged: the step fails
    with one sentence naming the root and the way out, nothing is published, the staging space is reclaimed, and
    the next build (space available again) works."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    root = tmp_path / "small"
    root.mkdir()
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (needs root): the disk-full scenario cannot be built")
    r = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{root}" && '
                        f'exec "{sys.executable}" -c "$0" "{root}"', DISK_FULL], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["error"] and "\n" not in out["error"]
    assert out["error"].startswith(f"no space left on the device of {root} while building shards: nothing was "
                                   f"published and the staging folder was removed"), out["error"]
    assert "rerun" in out["error"]
    assert out["staging"] == [], "the staging space is reclaimed"
    assert sorted(out["published"]) == sorted(["_inputs", out["small"].split("/")[1], out["after"].split("/")[1]])
