"""Pretraining: run-spec validation, megatron-core model/export/upcycle equalities, kill-and-resume, Megatron-LM
arguments and the cluster job (levels 1 and 2; the chain in the whole graph is in test_graph.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from kura.train.spec import RunSpec, SpecError, load_run_specs

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2, "ffn_hidden_size": 96}


def spec(**kw) -> RunSpec:
    base = {"name": "r", "phase": "web", "train_iters": 4, "model": dict(ARCH)}
    for k, v in kw.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return RunSpec(**base)


def write_specs(folder: Path, specs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in specs:
        (folder / f"{s['name']}.yaml").write_text(yaml.safe_dump(s))
    return folder


# ------------------------------------------------------------------------------------------- level 1: specs

def test_demo_run_specs_form_a_chain():
    specs = load_run_specs(ROOT / "pipelines" / "runs", ["web", "instruct"])
    assert [s.name for s in specs] == ["dense_1", "dense_2", "moe_1"]
    assert specs[2].upcycle and specs[2].model.num_experts == 4 and specs[2].init_from == "dense_2"
    assert all(s.resources.nodes * s.resources.gpus_per_node == 16 for s in specs)


@pytest.mark.parametrize("bad,message", [
    ([{"name": "b", "phase": "web", "init_from": "missing", "train_iters": 1}], "init_from 'missing' names no run"),
    ([{"name": "a", "phase": "web", "init_from": "b", "train_iters": 1},
      {"name": "b", "phase": "web", "init_from": "a", "train_iters": 1}], "init_from cycle"),
    ([{"name": "a", "phase": "nope", "train_iters": 1}], "phase 'nope' is not a phase"),
    ([{"name": "a", "phase": "web", "train_iters": 1},
      {"name": "b", "phase": "web", "init_from": "a", "train_iters": 1, "model": {"hidden_size": 256}}],
     "architecture differs from parent a"),
    ([{"name": "a", "phase": "web", "train_iters": 1, "model": {"num_experts": 4}},
      {"name": "b", "phase": "web", "init_from": "a", "train_iters": 1, "upcycle": {},
       "model": {"num_experts": 8}}], "upcycle needs a dense parent"),
    ([{"name": "a", "phase": "web"}], "give train_tokens or train_iters"),
    ([{"name": "a", "phase": "web", "train_iters": 1, "global_batch_size": 16, "micro_batch_size": 4,
       "resources": {"nodes": 2, "gpus_per_node": 8}}], "not divisible by micro_batch_size × data-parallel"),
    ([{"name": "a", "phase": "web", "train_iters": 1, "model": {"num_attention_heads": 4, "num_query_groups": 3}}],
     "num_query_groups"),
    ([{"name": "a", "phase": "web", "train_iters": 1, "parallel": {"sequence_parallel": True}}],
     "sequence_parallel needs tensor"),
    ([{"name": "a", "phase": "web", "train_iters": 1, "learning_rate": 1}], "learning_rate"),
])
def test_bad_run_specs_are_refused_with_file_and_reason(tmp_path, bad, message):
    with pytest.raises(SpecError, match=message) as e:
        load_run_specs(write_specs(tmp_path / "runs", bad), ["web", "instruct"])
    assert "runs" in str(e.value), "the message names the file or folder"


def test_token_budget_becomes_iterations():
    s = spec(train_iters=None, train_tokens=10_000, global_batch_size=8, micro_batch_size=4)
    assert s.iters(128) == 10  # ceil(10000 / (8 × 128))


# -------------------------------------------------------------------- level 1: megatron-core model equalities

def _checkpoint(folder: Path, s: RunSpec, vocab: int = 97, seq: int = 32) -> Path:
    """A checkpoint folder of a freshly initialized megatron-core model (what the trainer writes)."""
    from safetensors.torch import save_file

    from kura.train import mcore
    from kura.train.pretrain import model_state

    model = mcore.build_model(s, vocab, seq)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"format": "megatron-core-gpt", "spec": s.model_dump(),
                                                    "vocab_size": vocab, "seq_length": seq}))
    return folder


def _logits(model_dir: Path, x):
    import torch

    from kura.train import mcore
    from kura.train.pretrain import load_model

    m, _ = load_model(model_dir)
    with torch.no_grad():
        return mcore.forward_logits(m, x)


@pytest.mark.parametrize("router_std", [0.0, 0.5])
def test_upcycled_moe_equals_dense_at_initialization(tmp_path, router_std):
    """Identical experts + top-k probabilities that sum to 1 → the MoE computes the dense function, for a uniform
    router (std 0) and for a random one alike."""
    import torch

    from kura.train.upcycle import upcycle_checkpoint

    dense = _checkpoint(tmp_path / "dense", spec(seed=7))
    moe_spec = spec(name="m", init_from="r", upcycle={"router_init_std": router_std},
                    model={"num_experts": 4, "moe_router_topk": 2})
    info = upcycle_checkpoint(dense, moe_spec, tmp_path / "moe")
    assert info["experts"] == 4 and info["parameters"] > info["dense_parameters"]
    x = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    a, b = _logits(dense, x), _logits(tmp_path / "moe", x)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    noisy = spec(name="m", init_from="r", upcycle={"expert_noise_std": 0.5}, model={"num_experts": 4})
    upcycle_checkpoint(dense, noisy, tmp_path / "noisy")
    assert not torch.allclose(a, _logits(tmp_path / "noisy", x), atol=1e-3), "noise breaks the symmetry"


@pytest.mark.parametrize("moe", [False, True])
def test_hf_export_loads_in_transformers_with_matching_logits(tmp_path, moe):
    import torch
    from transformers import AutoModelForCausalLM

    from kura.train.export_hf import export_hf

    s = spec(model={"num_experts": 4, "moe_router_topk": 2} if moe else {}, seed=3)
    ck = _checkpoint(tmp_path / "ck", s)
    if moe:  # a trained router is not uniform: give it real weights so routing matters
        from safetensors.torch import load_file, save_file

        st = load_file(str(ck / "model.safetensors"))
        g = torch.Generator().manual_seed(0)
        st = {k: (torch.randn(v.shape, generator=g) if k.endswith("router.weight") else v) for k, v in st.items()}
        save_file(st, str(ck / "model.safetensors"))
    info = export_hf(ck, tmp_path / "hf")
    assert info["architecture"] == ("MixtralForCausalLM" if moe else "LlamaForCausalLM")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.num_key_value_heads == 2
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        b = hf(x).logits
    a = _logits(ck, x)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def _torch_dist_checkpoint(save: Path, model, iteration: int) -> None:
    """What Megatron-LM writes with --ckpt-format torch_dist: iter_NNNNNNN/ (DCP files), then the tracker."""
    from megatron.core import dist_checkpointing

    d = save / f"iter_{iteration:07d}"
    d.mkdir(parents=True)
    dist_checkpointing.save({"model": model.sharded_state_dict(), "iteration": iteration}, str(d))
    (save / "latest_checkpointed_iteration.txt").write_text(str(iteration))


@pytest.mark.parametrize("moe", [False, True])
def test_megatron_torch_dist_checkpoint_converts_to_the_same_model(tmp_path, moe):
    """What a cluster run leaves on its volume (megatron-core's dist_checkpointing, torch_dist: stacked layers and
    experts, TE-style fused norm names, a vocabulary padded to 128 rows) converts to kura's checkpoint folder, whose
    model computes the same logits; hf_model then exports it like a local run."""
    import torch

    from kura.train import mcore
    from kura.train.export_hf import export_hf
    from kura.train.megatron_ckpt import CheckpointFormatError, convert

    s = spec(model={"num_experts": 4, "moe_router_topk": 2} if moe else {}, seed=5)
    model = mcore.build_model(s, 128, 32)  # Megatron's padded vocabulary; the tokenizer has 97 ids
    if moe:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for k, p in model.named_parameters():
                if k.endswith("router.weight"):
                    p.copy_(torch.randn(p.shape, generator=g))
    save = tmp_path / "save"
    with pytest.raises(CheckpointFormatError, match="no finished checkpoint"):
        convert(save, tmp_path / "out", s, vocab_size=97, seq_length=32)
    _torch_dist_checkpoint(save, model, 7)
    info = convert(save, tmp_path / "out", s, vocab_size=97, seq_length=32)
    assert info["converted_from"].endswith("iter_0000007")
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = mcore.forward_logits(model.eval(), x)[..., :97]
    got = _logits(tmp_path / "out", x)
    assert torch.allclose(want, got, atol=1e-5), float((want - got).abs().max())
    assert export_hf(tmp_path / "out", tmp_path / "hf")["architecture"] == ("MixtralForCausalLM" if moe else
                                                                            "LlamaForCausalLM")


# ----------------------------------------------------------------------------- level 2: kill and resume

def _job(tmp: Path, packed: Path, vocab: int, seq: int, name: str) -> Path:
    s = spec(name="resume", train_iters=12, save_interval=4, log_interval=1, global_batch_size=4,
             micro_batch_size=2, seed=11, optim={"warmup_iters": 2})
    job = {"spec": s.model_dump(), "packed_dir": str(packed), "work_dir": str(tmp / name / "work"),
           "out_dir": str(tmp / name / "out"), "vocab_size": vocab, "seq_length": seq}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(job))
    return path


def _run(job: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-W", "ignore", "-m", "kura.train.pretrain", str(job)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))


@pytest.mark.slow
def test_killed_run_resumes_from_latest_checkpoint_and_matches(graph, tmp_path):
    """SIGKILL a training process after its first checkpoint; the rerun starts from the tracker's iteration, reaches
    the same final step, and its loss curve continues the uninterrupted run's (same batches, same optimizer state)."""
    from safetensors.torch import load_file

    packed = Path(graph.out["packed_dataset"]["web"]["uri"])
    p = graph.out["packed_dataset"]["web"]
    full = _run(_job(tmp_path, packed, p["vocab_size"], p["sequence_length"], "full"))
    lines_full = [json.loads(x) for x in full.communicate(timeout=600)[0].splitlines() if x.startswith("{")]
    assert full.returncode == 0

    job = _job(tmp_path, packed, p["vocab_size"], p["sequence_length"], "killed")
    work = tmp_path / "killed" / "work"
    proc = _run(job)
    deadline = time.monotonic() + 300
    while not (work / "latest_checkpointed_iteration.txt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the process ended"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int((work / "latest_checkpointed_iteration.txt").read_text())
    assert 4 <= done < 12 and not (tmp_path / "killed" / "out" / "model.safetensors").exists()
    assert all((d / "state.json").exists() for d in work.glob("iter_*")), "visible checkpoints are complete"

    again = _run(job)
    lines = [json.loads(x) for x in again.communicate(timeout=600)[0].splitlines() if x.startswith("{")]
    assert again.returncode == 0
    summary = lines[-1]
    assert summary["done"] and summary["resumed_from"] == done and summary["iterations"] == 12
    steps = [r["step"] for r in lines if "loss" in r and "done" not in r]
    assert steps[0] == done, "the rerun starts at the checkpoint's step, not at 0"
    full_loss = {r["step"]: r["loss"] for r in lines_full if "loss" in r and "done" not in r}
    for r in lines:
        if "loss" in r and "done" not in r:
            assert abs(r["loss"] - full_loss[r["step"]]) < 1e-3, (r["step"], r["loss"], full_loss[r["step"]])
    curve = json.loads((tmp_path / "killed" / "out" / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == list(range(12)), "one continuous curve across the kill"
    a = load_file(str(tmp_path / "full" / "out" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "out" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4

    # repeated faults: killed again the moment each new checkpoint lands (the harshest schedule that still lets a
    # unit of work finish, i.e. "every N seconds" for N just above one save interval): it still finishes
    job = _job(tmp_path, packed, p["vocab_size"], p["sequence_length"], "repeated")
    work, starts = tmp_path / "repeated" / "work", []
    for _ in range(6):
        tracker = work / "latest_checkpointed_iteration.txt"
        before = int(tracker.read_text()) if tracker.exists() else 0
        starts.append(before)
        proc = _run(job)
        deadline = time.monotonic() + 300
        while proc.poll() is None and (not tracker.exists() or int(tracker.read_text()) == before):
            assert time.monotonic() < deadline, "no progress within one attempt"
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if (tmp_path / "repeated" / "out" / "model.safetensors").exists():
            break
    assert starts == [0, 4, 8], f"each attempt starts at the last checkpoint: {starts}"
    c = load_file(str(tmp_path / "repeated" / "out" / "model.safetensors"))
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-4


# --------------------------------------------------------------------- Megatron-LM arguments and the cluster

# flags whose megatron-core config field has another name (Megatron-LM maps them in
# core_transformer_config_from_args), or that configure the training script rather than the model
RENAMED = {"--swiglu": "gated_linear_unit", "--disable-bias-linear": "add_bias_linear",
           "--norm-epsilon": "layernorm_epsilon", "--num-experts": "num_moe_experts",
           "--group-query-attention": None, "--use-mcore-models": None, "--untie-embeddings-and-output-weights": None,
           "--position-embedding-type": None, "--rotary-base": None, "--seq-length": None,
           "--max-position-embeddings": None, "--use-distributed-optimizer": None}


def test_model_and_parallel_flags_name_megatron_core_config_fields():
    import dataclasses

    from megatron.core.transformer.transformer_config import TransformerConfig

    from kura.train.megatron_lm import model_args, parallel_args

    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    s = spec(model={"num_experts": 8}, parallel={"tensor": 2, "expert": 4, "sequence_parallel": True},
             resources={"nodes": 2, "gpus_per_node": 8}, global_batch_size=64, micro_batch_size=8)
    flags = [a for a in model_args(s, 2048) + parallel_args(s) if a.startswith("--")]
    assert "--moe-grouped-gemm" in flags and "--sequence-parallel" in flags
    for f in flags:
        field = RENAMED.get(f, f[2:].replace("-", "_"))
        if field is not None:
            assert field in fields, f"{f} → {field} is not a megatron-core TransformerConfig field"


def test_pretrain_gpt_args_parse_with_megatron_lm_parser_when_available():
    arguments = pytest.importorskip("megatron.training.arguments",
                                    reason="Megatron-LM's training package is in the GPU image, not on PyPI")
    from kura.train.megatron_lm import pretrain_gpt_args

    s = load_run_specs(ROOT / "pipelines" / "runs")[0]
    argv = pretrain_gpt_args(s, seq_length=128, blend=["1.0", "train_x"], data_dir="/data",
                             tokenizer_model="/data/tokenizer.model", save_dir="/ck")
    old = sys.argv
    try:
        sys.argv = ["pretrain_gpt.py", *argv]
        args = arguments.parse_args(ignore_unknown_args=False)
    finally:
        sys.argv = old
    assert args.num_layers == s.model.num_layers and args.train_iters == s.iters(128)


def test_load_flags_resume_chain_and_upcycle(tmp_path):
    from kura.train.megatron_lm import load_args

    save, parent = tmp_path / "run2", tmp_path / "run1"
    assert load_args(save, None, False) == []
    assert load_args(save, parent, False) == ["--load", str(parent), "--finetune", "--no-load-optim",
                                              "--no-load-rng"]
    assert load_args(save, parent, True)[-1] == "--moe-use-upcycling"
    save.mkdir()
    (save / "latest_checkpointed_iteration.txt").write_text("1200")
    assert load_args(save, parent, True) == ["--load", str(save)], "a run's own checkpoint wins: resume"


MEGATRON_LINE = (" [2026-11-22 10:00:00] iteration      120/    1000 | consumed samples:        7680 | elapsed time "
                 "per "
                 "iteration (ms): 812.4 | throughput per GPU (TFLOP/s/GPU): 431.2 | learning rate: 2.999E-04 | "
                 "global batch size:    64 | lm loss: 3.412345E+00 | loss scale: 1.0 | grad norm: 0.812 | "
                 "number of skipped iterations:   0 | number of nan iterations:   0 |\n")


def test_megatron_log_lines_parse():
    from kura.train.megatron_lm import parse_iteration_line

    r = parse_iteration_line(MEGATRON_LINE)
    assert r == {"step": 120, "iters": 1000, "ms_per_iter": 812.4, "tflops_per_gpu": 431.2, "lr": 2.999e-4,
                 "global_batch_size": 64.0, "loss": 3.412345, "grad_norm": 0.812}
    assert parse_iteration_line("building GPT model ...") is None


def test_two_node_job_renders_and_validates():
    """The demo's dense_1 on 2 nodes × 8 GPUs: headless Service + Indexed Job, torchrun rank from the completion
    index, Megatron-LM args from the spec, dvc pull init container, GPU requests, Pipes bootstrap in the env."""
    from kura.k8s.manifests import validate
    from resources.trainer import TrainerResource

    s = load_run_specs(ROOT / "pipelines" / "runs")[0]
    svc, job = TrainerResource(backend="kubernetes").job_objects(
        s, seq_length=128, blend=["0.95", "train_deduplicated", "0.05", "train_synthetic"],
        dataset_dvc_path="data/frozen/packed_dataset_web", parent=None,
        extra_env={"DAGSTER_PIPES_CONTEXT": "abc", "DAGSTER_PIPES_MESSAGES": "def"},
        export_uri="s3://kura/_cluster_weights/dense_1/abc", vocab_size=2000)
    validate(svc)
    validate(job)
    spec_ = job["spec"]
    assert spec_["completionMode"] == "Indexed" and spec_["completions"] == spec_["parallelism"] == 2
    pod = spec_["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "kura.train.megatron_lm"] and "--nnodes=2" in cmd
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd and "--nproc-per-node=8" in cmd
    i = cmd.index("--data-path")
    assert cmd[i + 1:i + 5] == ["0.95", "/data/train_deduplicated", "0.05", "/data/train_synthetic"]
    assert cmd[cmd.index("--tensor-model-parallel-size") + 1] == "2" and "--bf16" in cmd
    assert cmd[cmd.index("--num-query-groups") + 1] == "2"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DAGSTER_PIPES_CONTEXT"] == "abc" and "NCCL_DEBUG" in env
    assert "dvc pull data/frozen/packed_dataset_web" in pod["initContainers"][0]["command"][-1]
    launcher = cmd[:cmd.index("--")]
    assert launcher[launcher.index("--export") + 1] == "s3://kura/_cluster_weights/dense_1/abc"
    assert json.loads(launcher[launcher.index("--export-config") + 1])["spec"]["name"] == "dense_1"
    assert "--align-packed" in launcher  # Megatron-LM reads one packed sequence per sample
    assert {v["name"] for v in pod["volumes"]} >= {"data", "checkpoints", "dshm"}


def test_launcher_reports_through_dagster_pipes(tmp_path):
    """kura.train.megatron_lm under a real Dagster Pipes session (PipesSubprocessClient): iteration lines of the
    wrapped command reach the run as messages and the final figures as materialization metadata; then pod 0's
    export converts the run's torch_dist checkpoint and uploads it with its commit marker."""
    from kura.train import mcore
    from kura.train.pretrain import load_model

    s = spec(seed=2)
    _torch_dist_checkpoint(tmp_path / "save", mcore.build_model(s, 128, 32), 20)
    export_cfg = json.dumps({"spec": s.model_dump(), "vocab_size": 97, "seq_length": 32})
    script = tmp_path / "fake_megatron.py"  # prints Megatron-LM's log format; the launcher is what is tested
    script.write_text("import sys\nline = sys.argv[1]\n"
                      "for i in (10, 20):\n    print(line.replace('120/', f'{i}/'), end='', flush=True)\n"
                      "print('args:', ' '.join(sys.argv[2:]))\n")

    messages = []

    @dg.asset
    def megatron_run(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        cmd = [sys.executable, "-m", "kura.train.megatron_lm", "--save", str(tmp_path / "save"), "--parent",
               str(tmp_path / "parent"), "--export", str(tmp_path / "export"), "--export-config", export_cfg,
               "--", sys.executable, str(script), MEGATRON_LINE]
        inv = pipes.run(command=cmd, context=context, env={"PYTHONPATH": str(ROOT)})
        messages.extend(inv.get_custom_messages())
        return inv.get_materialize_result()

    res = dg.materialize([megatron_run], resources={"pipes": dg.PipesSubprocessClient()})
    assert res.success
    mat = res.asset_materializations_for_node("megatron_run")[0]
    assert mat.metadata["final_loss"].value == pytest.approx(3.412345)
    assert mat.metadata["iterations"].value == 20
    assert mat.metadata["train_seconds"].value > 0, "the job's wall time: the cluster run's GPU-hours"
    assert [r["step"] for r in mat.metadata["loss_curve"].value] == [10, 20]
    assert [(m["kind"], m["step"], m["loss"]) for m in messages] == [("iteration", 10, 3.412345),
                                                                       ("iteration", 20, 3.412345)]
    assert mat.metadata["weights_uri"].value == str(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "export.json").read_text())["converted_from"].endswith("iter_0000020")
    model, cfg = load_model(tmp_path / "export")
    assert cfg["iterations"] == 20 and cfg["vocab_size"] == 97


def test_sdpa_attention_equals_megatron_dot_product_attention():
    import torch

    from kura.train import mcore

    s = spec(seed=5)
    a, b = mcore.build_model(s, 97, 32, sdpa=True), mcore.build_model(s, 97, 32, sdpa=False)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(mcore.forward_logits(a, x), mcore.forward_logits(b, x), atol=1e-5)
