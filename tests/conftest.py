"""Hermetic test setup: no network, no home directory, everything under pytest's temp folders.

The expensive things happen once per session: the whole graph is materialized on a tiny corpus (with the real
vLLM CPU engine for the synthetic stage) by the `graph` fixture, and SeaweedFS is started once by `s3_server`.
"""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

os.environ.update({
    "DAGSTER_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true", "MPLBACKEND": "Agg",
})
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

# tiny budgets for the whole-graph test: ~1 minute of CPU, most of it vLLM's start-up
TINY_OPS = {
    "teacher_model": {"steps": 150, "max_examples": 500},
    "synthetic": {"docs_per_day": 32, "max_tokens": 64},
    "tokenizer": {"vocab_size": 800},
    "base_model": {"train": {"train_steps": 20, "micro_batch_size": 8, "warmup_steps": 2}},
    "eval_perplexity": {"max_docs": 40},
}
TINY_MIX = {"name": "tiny", "sequence_length": 64, "total_tokens": 30000, "heldout_fraction": 0.1, "seed": 0,
            "sources": [{"source": "deduplicated", "weight": 0.97},
                        {"source": "synthetic", "weight": 0.03, "max_epochs": 8}]}


@dataclass
class Graph:
    home: Path
    mix_file: Path
    instance: object
    defs: object
    out: dict
    day: str


def write_mix(path: Path, **changes) -> None:
    path.write_text(yaml.safe_dump({**TINY_MIX, **changes}, sort_keys=False))


@pytest.fixture(scope="session")
def graph(tmp_path_factory) -> Graph:
    import dagster as dg

    from pipelines.cli import prepare_env, quiet_warnings, run_pipeline
    from pipelines.definitions import build_definitions

    home = tmp_path_factory.mktemp("kura_home")
    mix = home / "mix.yaml"
    write_mix(mix)
    prepare_env(home)
    quiet_warnings()
    os.environ["KURA_MIX_FILE"] = str(mix)
    os.environ["KURA_DEFAULT_CORPUS_DOCS"] = "600"
    instance = dg.DagsterInstance.get()
    defs = build_definitions()
    day = "2026-11-20"
    out = run_pipeline(instance, defs, day=day, ops_config=TINY_OPS, log=lambda *_: None)
    return Graph(home, mix, instance, defs, out, day)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
