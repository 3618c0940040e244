"""`python -m tests.fault_driver HOME`: the `graph` fixture's pipeline (same generated corpus, tiny mix, day and
budgets) in a plain process of its own, so a fault test can SIGKILL its whole process group anywhere and start it
again. On success it writes HOME/versions.json ({asset or asset[partition]: content version}) atomically.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(home: Path) -> int:
    from pipelines.cli import prepare_env, quiet_warnings, run_pipeline
    from tests.conftest import TINY_OPS, write_mix

    home.mkdir(parents=True, exist_ok=True)
    mix = home / "mix.yaml"
    if not mix.exists():
        write_mix(mix)
    prepare_env(home)
    quiet_warnings()
    os.environ["KURA_MIX_FILE"] = str(mix)
    os.environ["KURA_DEFAULT_CORPUS_DOCS"] = "600"
    import dagster as dg

    from pipelines.definitions import build_definitions
    from tests.test_s3 import versions

    out = run_pipeline(dg.DagsterInstance.get(), build_definitions(), day="2026-11-20", ops_config=TINY_OPS,
                       log=lambda *a: print(*a, flush=True))
    tmp = home / "versions.json.tmp"
    tmp.write_text(json.dumps(versions(out), indent=1, sort_keys=True))
    os.replace(tmp, home / "versions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).absolute()))
