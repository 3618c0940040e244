"""LoRA SFT and DPO on a Hugging Face base model with peft, adapters in PEFT's format, merges.

- Data: SFT examples are chat conversations rendered with the trial's template; prompt (user) tokens carry no loss
  (labels −100), assistant answers and their turn separator do. `replay_fraction` of the examples are pretraining
  documents (loss on every token), drawn with the trial's seed; the data manifest says how many of each.
- SFT: cross-entropy on the unmasked tokens, AdamW over the adapter weights only, linear warmup/decay.
- DPO: the reference model is the same network with the adapter disabled (`model.disable_adapter()`), so no copy
  of the base is held (trl needs `ref_model=` or a peft config, else it tries to download a model); sigmoid loss
  −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]) over the answer tokens.
- Output: `adapter/` (save_pretrained: adapter_config.json + adapter_model.safetensors), `kura_adapter.json`
  (trial spec, base model version, data versions and counts, metrics). Reload is exact (tests compare tensors).
- Merges: `merge_and_unload` (base + adapter → plain weights), and `combine` for linear / task-arithmetic merges.
Sizes: on the demo's 0.9M-parameter base a trial of 64 examples × 2 epochs takes a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable, Optional

from kura.train.trials import TrialSpec


def render_chat(turns: list[dict], tmpl: tuple[str, str, str], tok, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (−100 on prompt tokens) of a conversation; segments tokenized separately so the mask
    boundary is exact."""
    user, assistant, sep = tmpl
    ids: list[int] = []
    labels: list[int] = []
    if tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
        labels.append(-100)
    for t in turns:
        prefix = user if t["role"] == "user" else assistant
        p = tok.encode(prefix, add_special_tokens=False)
        c = tok.encode(t["content"] + sep, add_special_tokens=False)
        ids += p + c
        labels += [-100] * len(p) + (c if t["role"] == "assistant" else [-100] * len(c))
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
        labels.append(tok.eos_token_id)
    return ids[:max_length], labels[:max_length]


def build_sft_data(conversations: list[list[dict]], replay_docs: list[str], spec: TrialSpec, tok,
                   tmpl: tuple[str, str, str]) -> tuple[list[tuple[list[int], list[int]]], dict]:
    rng = random.Random(spec.seed)
    convs = conversations[:]
    rng.shuffle(convs)
    convs = convs[:spec.max_examples]
    n_replay = round(len(convs) * spec.replay_fraction / (1 - spec.replay_fraction)) if spec.replay_fraction else 0
    docs = replay_docs[:]
    rng.shuffle(docs)
    docs = docs[:n_replay]
    examples = [render_chat(c, tmpl, tok, spec.max_length) for c in convs]
    for d in docs:
        ids = tok.encode(d, add_special_tokens=False)[:spec.max_length - 1] + [tok.eos_token_id]
        examples.append((ids, list(ids)))
    rng.shuffle(examples)
    manifest = {"sft_examples": len(convs), "replay_examples": len(docs),
                "replay_share": round(len(docs) / max(1, len(examples)), 4), "replay_requested": spec.replay_fraction,
                "replay_available": len(replay_docs),
                "trained_tokens": sum(sum(1 for x in lab if x != -100) for _, lab in examples)}
    return examples, manifest


def build_dpo_data(pairs: list[dict], spec: TrialSpec, tok, tmpl: tuple[str, str, str]):
    """[(chosen ids, chosen labels, rejected ids, rejected labels)] from {prompt, chosen, rejected}."""
    rng = random.Random(spec.seed)
    pairs = pairs[:]
    rng.shuffle(pairs)
    out = []
    for p in pairs[:spec.max_examples]:
        user = json.loads(p["prompt_turns"]) if p.get("prompt_turns") else [{"role": "user", "content": p["prompt"]}]
        c = render_chat(user + [{"role": "assistant", "content": p["chosen"]}], tmpl, tok, spec.max_length)
        r = render_chat(user + [{"role": "assistant", "content": p["rejected"]}], tmpl, tok, spec.max_length)
        out.append((*c, *r))
    return out, {"pairs": len(out), "pairs_available": len(pairs)}


def _pad(batch: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for k, (i, lab) in enumerate(batch):
        ids[k, :len(i)] = torch.tensor(i)
        labels[k, :len(lab)] = torch.tensor(lab)
        att[k, :len(i)] = 1
    return ids, labels, att


def sequence_logps(model, ids, labels, att):
    """Sum of log-probabilities of the labelled (answer) tokens per sequence."""
    import torch

    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1)


def load_base(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return model, tok


def lora_model(model, spec: TrialSpec):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                     target_modules=list(spec.lora.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, cfg)


RESUME_NAME = "resume.pt"


def _save_resume(work_dir: Path, state: dict) -> None:
    """Atomically replace the trial's resume point (temp + rename: a kill mid-write leaves the previous one)."""
    import torch

    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".{RESUME_NAME}.tmp"
    torch.save(state, tmp)
    tmp.replace(work_dir / RESUME_NAME)


def train(spec: TrialSpec, base_dir: Path, out_dir: Path, *, examples: list, pad_id: int,
          manifest: dict, progress: Optional[Callable[[dict], None]] = None, work_dir: Optional[Path] = None,
          checkpoint_seconds: float = 60.0, checkpoint_steps: Optional[int] = None) -> dict:
    """Train one trial (SFT or DPO examples as built above); writes adapter/ and kura_adapter.json.

    With `work_dir`, a resume point (adapter weights, optimizer, schedule, both random generators, the epoch's
    order and the curve so far) is written every `checkpoint_seconds` (or `checkpoint_steps`): a trial killed
    mid-way continues from there and ends with the same bytes as an uninterrupted one."""
    import time

    import torch

    torch.manual_seed(spec.seed)
    model, _ = load_base(base_dir)
    model = lora_model(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.optim.lr, weight_decay=spec.optim.weight_decay)
    bs = spec.optim.batch_size
    steps = spec.optim.epochs * math.ceil(len(examples) / bs)
    warm = max(1, int(steps * spec.optim.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    rng = random.Random(spec.seed)
    curve, step, start_epoch, start_batch, order, resumed_from = [], 0, 0, 0, None, None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    resume = Path(work_dir) / RESUME_NAME if work_dir else None
    if resume is not None and resume.exists():
        st = torch.load(resume, weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n in trainable:
                named[n].copy_(st["params"][n])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        rng.setstate(st["python_rng"])
        curve, step, start_epoch, start_batch, order = (st["curve"], st["step"], st["epoch"], st["batch"],
                                                        st["order"])
        resumed_from = step
    last_save = time.monotonic()
    model.train()
    for epoch in range(start_epoch, spec.optim.epochs):
        if order is None or epoch != start_epoch:
            order = list(range(len(examples)))
            rng.shuffle(order)
            first = 0
        else:
            first = start_batch
        for b in range(first, len(order), bs):
            batch = [examples[i] for i in order[b:b + bs]]
            if spec.method == "sft":
                ids, labels, att = _pad(batch, pad_id)
                loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
                extra = {}
            else:
                c = _pad([(x[0], x[1]) for x in batch], pad_id)
                r = _pad([(x[2], x[3]) for x in batch], pad_id)
                pc, pr = sequence_logps(model, *c), sequence_logps(model, *r)
                with torch.no_grad(), model.disable_adapter():
                    rc, rr = sequence_logps(model, *c), sequence_logps(model, *r)
                margin = spec.beta * ((pc - rc) - (pr - rr))
                loss = -torch.nn.functional.logsigmoid(margin).mean()
                extra = {"reward_accuracy": round(float((margin > 0).float().mean()), 4),
                         "reward_margin": round(float(margin.detach().mean()), 4)}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, spec.optim.max_grad_norm)
            opt.step()
            sched.step()
            rec = {"step": step, "epoch": epoch, "loss": round(float(loss.detach()), 4), **extra}
            curve.append(rec)
            step += 1
            due = (checkpoint_steps and step % checkpoint_steps == 0) or \
                time.monotonic() - last_save >= checkpoint_seconds
            if resume is not None and due and step < steps:
                named = dict(model.named_parameters())
                _save_resume(Path(work_dir), {
                    "params": {n: named[n].detach().clone() for n in trainable}, "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": rng.getstate(), "curve": curve, "step": step, "epoch": epoch,
                    "batch": b + bs, "order": order})
                last_save = time.monotonic()
            if progress:
                progress({**rec, "steps": steps})
    model.eval()
    out_dir = Path(out_dir)
    # adapter_config.json is hashed into the adapter's content version: name the base by its storage key
    # (<asset>/<partition>/<content version>), not by this machine's absolute path. The base is always loaded from
    # the folder kura passes in, never from this field. PEFT's generated README.md (a template card that embeds the
    # absolute path in its tags) is dropped: kura_adapter.json describes the adapter.
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = "/".join(Path(base_dir).parts[-3:])
    model.save_pretrained(str(out_dir / "adapter"))
    (out_dir / "adapter" / "README.md").unlink(missing_ok=True)
    canonical_adapter_config(out_dir / "adapter" / "adapter_config.json")
    # One batch's loss is noisy (different examples each step); the per-epoch mean is what tells whether it learns.
    epochs = [[r["loss"] for r in curve if r["epoch"] == e] for e in range(spec.optim.epochs)]
    stats = {"steps": steps, "first_loss": curve[0]["loss"], "final_loss": curve[-1]["loss"],
             "epoch_losses": [round(sum(v) / len(v), 4) for v in epochs if v],
             "trainable_parameters": sum(p.numel() for p in params), "curve": curve, "data": manifest,
             **({"resumed_from": resumed_from} if resumed_from is not None else {})}
    if spec.method == "dpo":
        tail = curve[-max(1, len(curve) // 4):]
        stats["reward_accuracy"] = round(sum(r["reward_accuracy"] for r in tail) / len(tail), 4)
    return stats


def canonical_adapter_config(path: Path) -> None:
    """PEFT keeps `target_modules` as a set and writes it in set order, which follows the process's string-hash
    seed: the same adapter saved by two processes got two content versions (a killed and resumed trial never matched
    the uninterrupted one). Sets are written sorted and keys in order, so the file depends on the adapter only."""
    cfg = json.loads(path.read_text())
    for k in ("target_modules", "modules_to_save", "exclude_modules", "layers_to_transform"):
        if isinstance(cfg.get(k), list):
            cfg[k] = sorted(cfg[k], key=str)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_adapter(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel

    model, tok = load_base(base_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), tok


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """base + adapter → plain HF weights (merge_and_unload), with the tokenizer; returns the max logit difference
    against base+adapter on a fixed batch."""
    import torch

    peft_model, tok = load_adapter(base_dir, adapter_dir)
    x = torch.randint(0, peft_model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = peft_model(input_ids=x).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        after = merged(input_ids=x).logits
    merged.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return {"max_logit_diff_vs_adapter": float((before - after).abs().max())}


def combine(base_dir: Path, model_dirs: list[Path], weights: list[float], out_dir: Path) -> dict:
    """base + Σ w_i (model_i − base): with weights summing to 1 the linear (averaging) merge; any weights give task
    arithmetic."""
    import torch
    from safetensors.torch import load_file

    model, tok = load_base(base_dir)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    others = [load_file(str(Path(d) / "model.safetensors")) for d in model_dirs]
    new = {}
    for k, b in base.items():
        delta = sum(w * (o[k] - b) for w, o in zip(weights, others) if k in o)
        new[k] = b + delta if torch.is_tensor(delta) else b
    model.load_state_dict(new)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    changed = sum(1 for k in base if not torch.equal(base[k], new[k]))
    return {"tensors_changed": changed, "weights": weights}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True))


def run_job(job: dict, workdir: Path) -> dict:
    """Train from a job description (what the GPU pod runs): {spec, base_dir, examples, pad_id, manifest}; base_dir
    and the output may be s3:// URIs (fetched / put with fsspec, endpoint from KURA_S3_ENDPOINT)."""
    from kura.io.storage import pod_fs

    base = job["base_dir"]
    if base.startswith("s3://"):
        local = workdir / "base"
        fs, path = pod_fs(base)
        fs.get(path.rstrip("/") + "/", str(local) + "/", recursive=True)
        base = str(local)
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    spec = TrialSpec(**job["spec"])
    examples = [tuple(x) for x in job["examples"]]
    stats = train(spec, Path(base), out, examples=examples, pad_id=job["pad_id"], manifest=job["manifest"])
    if job.get("out_uri", "").startswith("s3://"):
        fs, path = pod_fs(job["out_uri"])
        fs.put(str(out / "adapter") + "/", path.rstrip("/") + "/", recursive=True)
    return stats


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m kura.train.lora JOB_URI RESULT_URI` (the post-training pod's entry point)."""
    import sys
    import tempfile

    from kura.io.storage import pod_fs

    job_uri, result_uri = (argv or sys.argv[1:])[:2]
    fs, path = pod_fs(job_uri)
    with fs.open(path, "r") as f:
        job = json.load(f)
    with tempfile.TemporaryDirectory(prefix="kura-lora-") as tmp:
        stats = run_job(job, Path(tmp))
    fs, path = pod_fs(result_uri)
    with fs.open(path, "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
