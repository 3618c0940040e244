"""Local pretraining with megatron-core: one run spec, one packed phase, bounded steps, resumable checkpoints.

The loop is Megatron-LM's, shrunk to one process: global batch = micro-batches with gradient accumulation, AdamW
(torch's: megatron's optimizer hard-codes CUDA), linear warmup + cosine/linear decay to min_lr, gradient clipping,
MoE auxiliary loss scaled per micro-batch as Megatron's schedule does. Step i always consumes samples
[i·gbs, (i+1)·gbs) of the blended dataset, so a resumed run sees the same batches as an uninterrupted one.

Loss spikes: with `rollback_on_spike` in the spec, every step's loss and gradient norm are judged (kura.train.spikes)
before the update; a spike rolls the run back to the latest saved checkpoint and skips the batches from there to the
spike (step i then reads batch i + skipped), recorded in stats and lineage.json; more than `max_rollbacks` stops the
run with a plain error. Otherwise spikes are only reported (the checkpoint's `no_loss_spikes` check).

Resume: every `save_interval` steps a checkpoint `work_dir/iter_NNNNNNN/` (weights, optimizer, RNG, loss curve so
far) is written to a temp folder and renamed, then `latest_checkpointed_iteration.txt` (Megatron's tracker
name) is replaced atomically. A killed run restarts from the tracker's iteration; no partial checkpoint is ever
visible. The final weights go to `out_dir`, which the caller publishes only after this returns (the asset is
reported once the final checkpoint is complete).

Checkpoint folder (`out_dir`): model.safetensors (megatron-core GPTModel state dict), config.json (run spec,
vocab, sequence length), lineage.json, loss_curve.json, tokenizer files; `kura.train.hf_export` turns it into a
Hugging Face Llama/Mixtral folder.
Speed (2 CPU cores, fp32): ~14k tokens/s for the demo's 0.9M-parameter model at sequence length 128.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from kura.io.hashing import content_only
from kura.io.storage import atomic_write
from kura.train.spec import RunSpec
from kura.train.spikes import judge

TRACKER = "latest_checkpointed_iteration.txt"
PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def lr_at(step: int, spec: RunSpec, iters: int, warm: bool = False) -> float:
    """`warm`: the optimizer continues a parent's state (resume_optimizer), so there is no new warmup."""
    o = spec.optim
    if step < o.warmup_iters and not warm:
        return o.lr * (step + 1) / o.warmup_iters
    frac = min(1.0, (step - o.warmup_iters) / max(1, iters - o.warmup_iters))
    if o.decay_style == "constant":
        return o.lr
    if o.decay_style == "linear":
        return o.lr - (o.lr - o.min_lr) * frac
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * frac))


def flops_per_token(spec: RunSpec, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward = 3× forward), counting active experts only: the usual
    6·N_active plus causal attention scores (Megatron's MFU formula, simplified)."""
    m = spec.model
    h, kv = m.hidden_size, m.groups * m.kv_channels
    attn = 2 * h * h + 2 * h * kv  # q, o, k, v projections
    mlp = 3 * h * m.ffn_hidden_size * (m.moe_router_topk if m.num_experts else 1)
    n_active = m.num_layers * (attn + mlp) + h * vocab_size
    return 6 * n_active + 6 * m.num_layers * h * seq_length  # 12·L·h·s/2 for causal attention, ×3 fwd+bwd


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_tflops(name: str) -> Optional[float]:
    return next((v for k, v in PEAK_TFLOPS_BF16.items() if k in name), None)


def model_state(model) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("_extra_state")}


def load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the run's architecture (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


def latest_iteration(work_dir: Path) -> int:
    f = Path(work_dir) / TRACKER
    return int(f.read_text().strip()) if f.exists() else 0


def save_checkpoint(work_dir: Path, step: int, model, opt, state: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    final = work_dir / f"iter_{step:07d}"
    tmp = work_dir / f".iter_{step:07d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_state(model), str(tmp / "model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write(work_dir / TRACKER, str(step).encode())
    for old in sorted(work_dir.glob("iter_*"))[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)
    return final


class SpikeRollbackLimit(RuntimeError):
    pass


def rollback(state: dict, step: int, found: list, roll, restore: Callable[[int], dict], work_dir: Path,
             run: str) -> dict:
    """Back to the latest saved checkpoint (≤ step); the batches from there to the spike are skipped from now on.
    Returns the restored state with the rollback recorded (`at`: the step to continue from)."""
    done = state["rollbacks"]
    if len(done) >= roll.max_rollbacks:
        s = found[0]
        raise SpikeRollbackLimit(
            f"checkpoint/{run}: {s.metric} spiked at step {step} ({s.value:.4g} > {s.threshold:.4g}) after "
            f"{len(done)} rollbacks already (rollback_on_spike.max_rollbacks, at steps "
            f"{[r['spike_step'] for r in done]}); the run itself diverges, not a few batches: lower optim.lr or "
            f"raise optim.warmup_iters, or read the data of the skipped batches.")
    back = latest_iteration(work_dir)
    offset = state["data_offset"]
    record = {"spike_step": step, "metrics": sorted({s.metric for s in found}),
              "values": {s.metric: s.value for s in found}, "rolled_back_to": back,
              "skipped_batches": [back + offset, step + offset]}
    restored = restore(back)
    restored.update(data_offset=offset + step - back + 1, rollbacks=[*done, record], at=back,
                    resumed_from=state.get("resumed_from"))
    return restored


def pretrain(spec: RunSpec, packed_dir: Path, work_dir: Path, out_dir: Path, *, vocab_size: int,
             seq_length: int, init_weights: Optional[Path] = None, lineage: Optional[dict] = None,
             train_iters: Optional[int] = None, bf16: bool = False, init_optimizer: Optional[Path] = None,
             progress: Optional[Callable[[dict], None]] = None) -> dict:
    import torch
    from safetensors.torch import save_file

    from kura.train import mcore

    iters = train_iters or spec.iters(seq_length)
    n_micro = spec.global_batch_size // spec.micro_batch_size
    roll = spec.rollback_on_spike
    spare = roll.max_rollbacks * spec.save_interval if roll else 0  # batches a rollback may skip, at most
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = mcore.build_model(spec, vocab_size, seq_length, bf16=bf16)
    data = mcore.build_train_dataset(packed_dir, (iters + spare) * spec.global_batch_size, spec.seed, seq_length)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.optim.lr,
                            betas=(spec.optim.adam_beta1, spec.optim.adam_beta2), fused=device.type == "cuda")
    start = latest_iteration(work_dir)
    # data_offset: batches skipped by rollbacks so far (step i reads batch i + data_offset); accepted: the recent
    # per-step points the online spike rule judges against
    state = {"curve": [], "tokens": 0, "seconds": 0.0, "resumed_from": None, "data_offset": 0, "rollbacks": [],
             "accepted": []}

    def restore(step: int) -> dict:
        ck = work_dir / f"iter_{step:07d}"
        load_weights(model, ck / "model.safetensors")
        saved = torch.load(ck / "optimizer.pt", weights_only=False)
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        return {"data_offset": 0, "rollbacks": [], "accepted": [], **json.loads((ck / "state.json").read_text())}

    if start or (roll and (work_dir / f"iter_{0:07d}").exists()):
        state = restore(start)
        state["resumed_from"] = start or None
    else:
        if init_weights is not None:
            load_weights(model, Path(init_weights))
        if init_optimizer is not None:
            if not Path(init_optimizer).exists():
                raise FileNotFoundError(
                    f"run {spec.name}: resume_optimizer is set but the parent checkpoint has no optimizer state "
                    f"({init_optimizer}); rebuild the parent with this version of kura (checkpoints now keep it) "
                    f"or drop resume_optimizer from the spec")
            opt.load_state_dict(torch.load(init_optimizer, weights_only=False)["optimizer"])
        if roll:  # something to roll back to before the first save
            save_checkpoint(work_dir, 0, model, opt, state)
    fpt = flops_per_token(spec, vocab_size, seq_length)
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    model.train()
    t_run = time.perf_counter()
    seconds_before = state["seconds"]
    step = start
    while step < iters:
        t0 = time.perf_counter()
        lr = lr_at(step, spec, iters, warm=init_optimizer is not None)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        if spec.is_moe:
            MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / n_micro, device=device))
        loss_sum, tokens = 0.0, 0
        for k in range(n_micro):
            base = (step + state["data_offset"]) * spec.global_batch_size + k * spec.micro_batch_size
            batch = mcore.collate([data[base + j] for j in range(spec.micro_batch_size)], device)
            loss, n = mcore.loss_and_tokens(model, batch)
            (loss / n_micro).backward()
            loss_sum += float(loss.detach())
            tokens += n
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.clip_grad))
        if roll:
            point = {"step": step, "loss": loss_sum / n_micro, "grad_norm": gnorm}
            found = judge(state["accepted"], point, roll.rule)
            if found:
                state = rollback(state, step, found, roll, restore, work_dir, spec.name)
                step = state.pop("at")
                continue
            state["accepted"] = [*state["accepted"], point][-roll.rule.window:]
        opt.step()
        state["tokens"] += tokens
        dt = time.perf_counter() - t0
        if step % spec.log_interval == 0 or step == iters - 1:
            rec = {"step": step, "loss": round(loss_sum / n_micro, 4), "lr": round(lr, 7),
                   "grad_norm": round(gnorm, 4), "tokens_per_second": round(tokens / dt, 1)}
            state["curve"].append(rec)
            if progress:
                progress({**rec, "iters": iters})
        done = step + 1
        if done % spec.save_interval == 0 and done < iters:
            state["seconds"] = seconds_before + time.perf_counter() - t_run
            save_checkpoint(work_dir, done, model, opt, state)
        step = done
    seconds = seconds_before + time.perf_counter() - t_run
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(out_dir / "model.safetensors"))
    # the final optimizer state, for a child run with resume_optimizer (Megatron checkpoints keep it too)
    torch.save({"optimizer": opt.state_dict(), "iterations": iters}, out_dir / "optimizer.pt")
    name = device_name()
    n_gpus = 1 if device.type == "cuda" else 0
    tps = state["tokens"] / max(seconds, 1e-9)
    peak = peak_tflops(name)
    stats = {"run": spec.name, "iterations": iters, "resumed_from": state["resumed_from"],
             "parameters": sum(p.numel() for p in model.parameters()), "train_tokens": state["tokens"],
             "seconds": round(seconds, 2), "tokens_per_second": round(tps, 1), "device": name,
             "gpu_hours": round(seconds * n_gpus / 3600, 4),
             "mfu": round(tps * fpt / (peak * 1e12), 4) if peak and n_gpus else None,
             "flops_per_token": fpt, "first_loss": state["curve"][0]["loss"],
             "final_loss": state["curve"][-1]["loss"], "loss_curve": state["curve"],
             "rollbacks": state["rollbacks"], "optimizer_from_parent": init_optimizer is not None}
    (out_dir / "config.json").write_text(json.dumps(
        {"format": "megatron-core-gpt", "spec": spec.model_dump(), "vocab_size": vocab_size,
         "seq_length": seq_length, "iterations": iters, "precision": "bf16" if bf16 else "fp32"}, indent=1))
    lineage = {**(lineage or {}), **({"rollbacks": state["rollbacks"]} if state["rollbacks"] else {})}
    (out_dir / "lineage.json").write_text(json.dumps(lineage, indent=1, sort_keys=True))
    # hashed into the checkpoint's content version: throughput (a timing) stays in `stats`, not in the file
    (out_dir / "loss_curve.json").write_text(json.dumps(content_only(state["curve"])))
    return stats


def read_config(ckpt_dir: Path) -> dict:
    return json.loads((Path(ckpt_dir) / "config.json").read_text())


def load_model(ckpt_dir: Path):
    """The megatron-core model of a checkpoint folder, in eval mode."""
    cfg = read_config(ckpt_dir)
    model = __import__("kura.train.mcore", fromlist=["build_model"]).build_model(
        RunSpec(**cfg["spec"]), cfg["vocab_size"], cfg["seq_length"])
    load_weights(model, Path(ckpt_dir) / "model.safetensors")
    return model.eval(), cfg


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m kura.train.pretrain JOB.json`: the same run from a plain process (kill/resume tests, pods)."""
    import sys

    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    spec = RunSpec(**job.pop("spec"))

    def progress(r):
        print(json.dumps(r), flush=True)

    stats = pretrain(spec, Path(job.pop("packed_dir")), Path(job.pop("work_dir")), Path(job.pop("out_dir")),
                     progress=progress, **job)
    print(json.dumps({"done": True, **{k: v for k, v in stats.items() if k != "loss_curve"}}), flush=True)


if __name__ == "__main__":
    main()
