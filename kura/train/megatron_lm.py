"""Run spec → Megatron-LM `pretrain_gpt.py` arguments, and the pod-side launcher that resumes, chains and reports.

The same RunSpec drives the local megatron-core trainer and the cluster run, so the architecture cannot drift
between them: every model field has one flag here, and tests check each flag against megatron-core's
TransformerConfig (Megatron-LM builds its config from the parsed args by field name) and, where Megatron-LM's
own parser can be imported (the GPU image), against that parser.

Chaining on the cluster (`python -m kura.train.megatron_lm --save DIR [--parent DIR] [--upcycle] [--align-packed]
-- CMD…`):
- a tracker file in the run's own save folder → resume it (`--load SAVE`; iteration, optimizer and RNG restored);
- else a parent → start from its weights with a fresh optimizer and iteration 0 (`--load PARENT --finetune
  --no-load-optim --no-load-rng`), and `--moe-use-upcycling` when the run upcycles its dense parent;
- else from scratch.
Pod 0 parses Megatron's iteration lines and, when launched by Dagster Pipes, streams loss/LR/throughput to the
run's log and reports the final figures as the materialization's metadata. With `--export URI` it then converts the
final torch_dist checkpoint into kura's checkpoint format (`kura.train.megatron_ckpt`) and uploads it there, with
`export.json` written last as the commit marker; the checkpoint asset points at it and `hf_model` exports it like
a local run's.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from kura.train.spec import RunSpec


def model_args(spec: RunSpec, seq_length: int) -> list[str]:
    m = spec.model
    a = ["--use-mcore-models", "--num-layers", m.num_layers, "--hidden-size", m.hidden_size,
         "--num-attention-heads", m.num_attention_heads, "--ffn-hidden-size", m.ffn_hidden_size,
         "--kv-channels", m.kv_channels, "--seq-length", seq_length, "--max-position-embeddings", seq_length,
         "--position-embedding-type", "rope", "--rotary-base", int(m.rotary_base), "--swiglu",
         "--normalization", "RMSNorm", "--norm-epsilon", m.norm_epsilon, "--disable-bias-linear",
         "--untie-embeddings-and-output-weights", "--init-method-std", m.init_method_std,
         "--hidden-dropout", 0.0, "--attention-dropout", 0.0]
    if m.num_query_groups and m.num_query_groups != m.num_attention_heads:
        a += ["--group-query-attention", "--num-query-groups", m.num_query_groups]
    if m.num_experts:
        a += ["--num-experts", m.num_experts, "--moe-router-topk", m.moe_router_topk, "--moe-ffn-hidden-size",
              m.ffn_hidden_size, "--moe-aux-loss-coeff", m.moe_aux_loss_coeff,
              "--moe-router-load-balancing-type", "aux_loss", "--moe-token-dispatcher-type", "alltoall",
              "--moe-grouped-gemm"]
    return [str(x) for x in a]


def parallel_args(spec: RunSpec) -> list[str]:
    p = spec.parallel
    a = ["--tensor-model-parallel-size", p.tensor, "--pipeline-model-parallel-size", p.pipeline,
         "--context-parallel-size", p.context, "--use-distributed-optimizer"]
    if spec.is_moe:
        a += ["--expert-model-parallel-size", p.expert]
    if p.sequence_parallel:
        a += ["--sequence-parallel"]
    return [str(x) for x in a]


def optim_args(spec: RunSpec, iters: int) -> list[str]:
    o = spec.optim
    return [str(x) for x in [
        "--optimizer", "adam", "--lr", o.lr, "--min-lr", o.min_lr, "--lr-warmup-iters", o.warmup_iters,
        "--lr-decay-style", o.decay_style, "--lr-decay-iters", iters, "--weight-decay", o.weight_decay,
        "--clip-grad", o.clip_grad, "--adam-beta1", o.adam_beta1, "--adam-beta2", o.adam_beta2,
        "--micro-batch-size", spec.micro_batch_size, "--global-batch-size", spec.global_batch_size,
        "--train-iters", iters, "--seed", spec.seed]]


def pretrain_gpt_args(spec: RunSpec, *, seq_length: int, blend: list, data_dir: str, tokenizer_model: str,
                      save_dir: str, vocab_size: Optional[int] = None) -> list[str]:
    """Arguments of Megatron-LM's pretrain_gpt.py for this run. `blend`: the packed phase's train blend
    ([weight, prefix, …] from blend.json, prefixes relative to the phase folder, which is pulled to `data_dir`).
    The launcher's `--align-packed` points these prefixes at aligned views, so each GPTDataset sample is one packed
    sequence; kura's loss masks (prompt tokens of chat sources) are only read by kura's own trainer."""
    iters = spec.iters(seq_length)
    data = [f"{data_dir}/{x}" if i % 2 else str(x) for i, x in enumerate(blend)]
    a = [*model_args(spec, seq_length), *parallel_args(spec), *optim_args(spec, iters),
         "--data-path", *data, "--split", "100,0,0",
         "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer_model,
         "--save", save_dir, "--save-interval", str(spec.save_interval), "--ckpt-format", "torch_dist",
         "--log-interval", str(spec.log_interval), "--log-throughput", "--eval-iters", "0",
         "--eval-interval", str(max(iters, 1)), "--distributed-backend", "nccl"]
    if vocab_size:
        a += ["--make-vocab-size-divisible-by", "128"]
    a += ["--bf16"] if spec.resources.bf16 else []
    return a


def load_args(save_dir: Path, parent_dir: Optional[Path], upcycle: bool) -> list[str]:
    if (Path(save_dir) / "latest_checkpointed_iteration.txt").exists():
        return ["--load", str(save_dir)]
    if parent_dir is not None:
        return ["--load", str(parent_dir), "--finetune", "--no-load-optim", "--no-load-rng",
                *(["--moe-use-upcycling"] if upcycle else [])]
    return []


ITER_LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+)")
FIELDS = {"lm loss": "loss", "learning rate": "lr", "grad norm": "grad_norm",
          "throughput per GPU (TFLOP/s/GPU)": "tflops_per_gpu", "elapsed time per iteration (ms)": "ms_per_iter",
          "global batch size": "global_batch_size"}


def parse_iteration_line(line: str) -> Optional[dict]:
    """One Megatron-LM training log line → {step, iters, loss, lr, grad_norm, tflops_per_gpu, ...} or None."""
    m = ITER_LINE.search(line)
    if not m:
        return None
    rec: dict = {"step": int(m.group(1)), "iters": int(m.group(2))}
    for part in line.split("|"):
        if ":" not in part:
            continue
        key, _, val = part.rpartition(":")
        name = FIELDS.get(key.strip())
        if name:
            try:
                rec[name] = float(val.strip())
            except ValueError:
                pass
    return rec


def align_data_paths(cmd: list[str]) -> list[str]:
    """The training command with every `--data-path` prefix replaced by its aligned view
    (`kura.pack.megatron.megatron_lm_view`, created next to the pulled data), so Megatron-LM's GPTDataset draws
    kura's packed sequences one per sample instead of windows straddling two of them."""
    from kura.pack.megatron import megatron_lm_view

    out, i = list(cmd), 0
    while i < len(out):
        if out[i] == "--data-path":
            i += 1
            while i < len(out) and not out[i].startswith("--"):
                try:
                    float(out[i])  # a blend weight
                except ValueError:
                    out[i] = megatron_lm_view(out[i])
                i += 1
        else:
            i += 1
    return out


def follow(lines: Iterable[str], report=None) -> dict:
    """Echo Megatron's output, collect the iteration records, hand each to `report`."""
    curve = []
    for line in lines:
        sys.stdout.write(line)
        rec = parse_iteration_line(line)
        if rec:
            curve.append(rec)
            if report:
                report(rec)
    return {"records": len(curve), "last": curve[-1] if curve else None, "curve": curve}


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--save", required=True)
    ap.add_argument("--parent")
    ap.add_argument("--upcycle", action="store_true")
    ap.add_argument("--align-packed", action="store_true",
                    help="read kura's packed sequences one per sample (aligned .idx views of the --data-path prefixes)")
    ap.add_argument("--export", help="URI (s3:// or a folder) for the converted final checkpoint (pod 0)")
    ap.add_argument("--export-config", help='JSON {"spec": …, "vocab_size": N, "seq_length": N} for --export')
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.export and not args.export_config:
        ap.error("--export needs --export-config")
    if not cmd:
        ap.error("give the training command after --")
    if args.align_packed:
        cmd = align_data_paths(cmd)
    full = [*cmd, *load_args(Path(args.save), Path(args.parent) if args.parent else None, args.upcycle)]
    rank0 = os.environ.get("JOB_COMPLETION_INDEX", "0") == "0"
    pipes = None
    if rank0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        pipes = open_dagster_pipes()
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

    def report(rec):
        if pipes is not None:
            pipes.log.info(f"iteration {rec['step']}/{rec['iters']} loss {rec.get('loss')} lr {rec.get('lr')}")
            pipes.report_custom_message({"kind": "iteration", **rec})

    out = follow(proc.stdout, report if rank0 else None)
    code = proc.wait()
    exported = None
    if code == 0 and rank0 and args.export:
        exported = export(Path(args.save), args.export, json.loads(args.export_config))
    if pipes is not None:
        last = out["last"] or {}
        if code == 0:
            pipes.report_asset_materialization(metadata={
                "final_loss": last.get("loss"), "iterations": last.get("step"),
                "tflops_per_gpu": last.get("tflops_per_gpu"), "checkpoint": args.save,
                "train_seconds": round(time.perf_counter() - t0, 1),  # wall time of the job (rank 0's view)
                **({"weights_uri": args.export, "converted_from": exported["converted_from"]} if exported else {}),
                "loss_curve": {"raw_value": [{k: r.get(k) for k in ("step", "loss", "lr", "grad_norm")}
                                             for r in out["curve"]], "type": "json"}})
        pipes.close()
    return code


def export(save_dir: Path, uri: str, cfg: dict) -> dict:
    """Convert the newest checkpoint of `save_dir` and upload it to `uri`; `export.json` goes last (commit marker:
    a reader that finds it finds every file)."""
    import tempfile

    from kura.io.storage import pod_fs
    from kura.train.megatron_ckpt import convert

    with tempfile.TemporaryDirectory(prefix="kura-export-") as tmp:
        info = convert(save_dir, Path(tmp), RunSpec(**cfg["spec"]), vocab_size=int(cfg["vocab_size"]),
                       seq_length=int(cfg["seq_length"]))
        fs, root = pod_fs(uri)
        fs.makedirs(root, exist_ok=True)
        for f in sorted(Path(tmp).iterdir()):
            fs.put_file(str(f), f"{root}/{f.name}")
        with fs.open(f"{root}/export.json", "w") as fh:
            fh.write(json.dumps(info))
    return info


if __name__ == "__main__":
    sys.exit(main())
