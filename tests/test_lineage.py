"""Lineage you can trust: derived code versions, result-neutral fields, readable change lines, provenance.

The edit test works on a temporary copy of the project (kura/, assets/, resources/, pipelines/) and loads its
definitions in a fresh interpreter each time, the way the UI's code server does after an edit.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kura.io import codeversion
from kura.io.inputs import describe_change, neutral_fields, provenance, result_neutral, versioned_fields

ROOT = Path(__file__).resolve().parents[1]

_DUMP = "import json, pipelines.definitions\nfrom assets._common import CODE_VERSIONS\n" \
        "print(json.dumps({k: v.hash for k, v in CODE_VERSIONS.items()}))"


def _versions(project: Path, tmp: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project), "KURA_HOME": str(tmp / "home"),
           "DAGSTER_HOME": str(tmp / "dh"), "HOME": str(tmp), "PYTHONWARNINGS": "ignore"}
    (tmp / "dh").mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-c", _DUMP], cwd=project, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _reaching(project: Path, tmp: Path, module: str, name: str) -> set[str]:
    code = ("import json, pipelines.definitions\nfrom assets._common import CODE_VERSIONS\n"
            f"print(json.dumps(sorted(k for k, v in CODE_VERSIONS.items() if {name!r} in v.names.get({module!r}, []))))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project), "KURA_HOME": str(tmp / "home"),
           "DAGSTER_HOME": str(tmp / "dh"), "HOME": str(tmp), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_edits_change_exactly_the_code_versions_that_reach_them(tmp_path):
    """An indirectly reached kura function (the tokenizer's held-out rule), a helper inside an asset module (the
    synthetic request-log path) and a comment/docstring edit: the first two change the code versions of exactly
    the assets that reach them, the last changes none."""
    project = tmp_path / "project"
    for d in ("kura", "assets", "resources", "pipelines"):
        shutil.copytree(ROOT / d, project / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    base = _versions(project, tmp_path)
    assert len(base) >= 30 and len(set(base.values())) > 10

    # 1. comments and docstrings: no version moves
    filters_py = project / "kura" / "text" / "filters.py"
    filters_py.write_text(filters_py.read_text().replace("\ndef ", "\n# a comment that changes nothing\ndef ", 1)
                          + "\n# and one at the end\n")
    _edit(project / "kura" / "mix" / "resolve.py", "def is_heldout(doc_id: str, fraction: float) -> bool:\n",
          "def is_heldout(doc_id: str, fraction: float) -> bool:\n    \"\"\"A docstring that changes nothing.\"\"\"\n")
    assert _versions(project, tmp_path) == base

    # 2. a kura function reached only indirectly (tokenizer → kura.mix.resolve.is_heldout, also the mixes)
    reach = _reaching(project, tmp_path, "kura.mix.resolve", "is_heldout")
    assert {"tokenizer", "data_mix/web", "data_mix/instruct"} <= reach and "raw_corpus" not in reach
    _edit(project / "kura" / "mix" / "resolve.py", "def is_heldout(doc_id: str, fraction: float) -> bool:\n",
          "def is_heldout(doc_id: str, fraction: float) -> bool:\n    fraction = float(fraction)\n")
    after = _versions(project, tmp_path)
    assert {k for k in base if after[k] != base[k]} == reach

    # 3. a function body inside an asset module, used by the synthetic datasets only
    reach = _reaching(project, tmp_path, "assets.synthetic", "request_log_path")
    assert reach == {"synthetic/qa_web", "synthetic/qa_web_small"}
    _edit(project / "assets" / "synthetic.py", 'return base / LAYOUT.request_log(partition, teacher_version)',
          'return base / "v2" / LAYOUT.request_log(partition, teacher_version)')
    again = _versions(project, tmp_path)
    assert {k for k in after if again[k] != after[k]} == reach


def test_code_version_ignores_formatting_and_follows_calls(tmp_path, monkeypatch):
    """Pure level: two modules written into a temporary project package; reformatting, comments and docstrings
    change nothing, a body edit in a called helper (through an import alias and an attribute chain) does."""
    pkg = tmp_path / "kura" / "zz_lineage_probe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    helper = pkg / "helper.py"
    helper.write_text("LIMIT = 3\n\ndef clip(x):\n    return min(x, LIMIT)\n\ndef unused():\n    return 1\n")
    main = pkg / "main.py"
    main.write_text("import kura.zz_lineage_probe.helper as h\nimport numpy as np\n\n"
                    "def run(values):\n    return [h.clip(v) for v in np.asarray(values)]\n")
    monkeypatch.setattr(codeversion, "PROJECT_ROOT", tmp_path)

    def version():
        codeversion.clear_cache()
        ns: dict = {}
        src = main.read_text().replace("import kura.zz_lineage_probe.helper as h", "h = None")  # same lines
        exec(compile(src, str(main), "exec"), ns)  # a function object whose source is main.py
        fn = ns["run"]
        fn.__module__ = "kura.zz_lineage_probe.main"
        return codeversion.code_version(fn)

    v0 = version()
    assert v0.names["kura.zz_lineage_probe.helper"] == ["LIMIT", "clip"], "unused definitions are not covered"
    assert "numpy" in v0.packages
    main.write_text(main.read_text().replace("def run(values):\n", "def run(values):  # comment\n"
                                             "    \"\"\"Doc.\"\"\"\n"))
    assert version().hash == v0.hash
    helper.write_text(helper.read_text().replace("LIMIT = 3", "LIMIT = 4"))
    v2 = version()
    assert v2.hash != v0.hash and v2.modules["kura.zz_lineage_probe.main"] == v0.modules["kura.zz_lineage_probe.main"]
    helper.write_text(helper.read_text().replace("return 1", "return 2"))
    assert version().hash == v2.hash, "editing a definition nothing reaches changes nothing"
    codeversion.clear_cache()


def test_result_neutral_fields_are_declared_once_and_left_out():
    from pydantic import BaseModel

    from assets.pretrain import CheckpointConfig
    from kura.synth.spec import DatasetSpec

    class Inner(BaseModel):
        lr: float = 1e-3
        workers: int = result_neutral(4, description="threads")

    class Outer(BaseModel):
        inner: Inner = Inner()
        timeout_s: float = result_neutral(30.0)
        seed: int = 0

    assert neutral_fields(Outer) == {"timeout_s"}
    assert versioned_fields(Outer(timeout_s=5, inner=Inner(workers=64))) == versioned_fields(Outer())
    assert versioned_fields(Outer(seed=1)) != versioned_fields(Outer())
    qa = {"name": "qa", "recipe": "qa_dialogue", "teacher": "t"}
    assert DatasetSpec(**qa, batch_size=8).version_text() == DatasetSpec(**qa).version_text()
    assert DatasetSpec(**qa, tags=["x"]).version_text() == DatasetSpec(**qa).version_text()
    assert "keep_work_dir" not in versioned_fields(CheckpointConfig(keep_work_dir=True))
    assert DatasetSpec(**qa, sampling={"max_tokens": 10}).version_text() != DatasetSpec(**qa).version_text()


def test_change_lines_say_what_changed():
    prev = {"code": {"hash": "a", "modules": {"kura.text.filters": "1", "assets.corpus": "2"},
                     "packages": {"torch": "2.13.0"}},
            "config": {"phase": {"tokens": 16000}}, "resources": {"judge": {"model": "qwen-judge-a"}},
            "upstream": {"model": "v1"}, "partition": None}
    cur = json.loads(json.dumps(prev))
    cur["code"]["modules"]["kura.text.filters"] = "3"
    cur["code"]["packages"]["torch"] = "2.14.0"
    cur["config"]["phase"]["tokens"] = 12000
    cur["resources"]["judge"]["model"] = "qwen-judge-b"
    cur["upstream"]["model"] = "v2"
    lines = describe_change(prev, cur)
    assert lines == ["kura.text.filters changed", "package torch: 2.13.0 → 2.14.0",
                     "config.phase.tokens: 16000 → 12000", "resources.judge.model: qwen-judge-a → qwen-judge-b",
                     "upstream model has a new version"]
    assert describe_change(None, cur) == ["first materialization"]
    assert describe_change(cur, cur) == ["nothing (same inputs)"]


def test_provenance_names_the_commit_and_packages():
    p = provenance({"torch": "2.13.0"})
    assert p["kura_version"] and p["packages"] == {"torch": "2.13.0"}
    if (ROOT / ".git").exists():
        assert len(p["git_commit"]) == 40 and isinstance(p["git_dirty"], bool)


def test_versions_cli_prints_what_a_code_version_covers():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "versions", "tokenizer"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.startswith("tokenizer  code version ")
    assert "kura.mix.resolve" in text and "is_heldout" in text and "sentencepiece==" in text
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "versions", "no_such_asset"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no asset 'no_such_asset'" in bad.stderr
