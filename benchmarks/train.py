"""Training throughput: kura's trainer (kura.train.pretrain: megatron-core GPTModel, BlendedMegatronDatasetBuilder,
checkpoint bookkeeping) against plain megatron-core usage (GPTModel + a bare AdamW loop over the same IndexedDataset)
on the same model, data and batch, in the same process. Prints a table: tokens/s (median of per-step rates after
warm-up), peak memory, MFU where the device's peak is known, and the overhead of kura against plain. Both use the
same model, including kura's SDPA core attention; one more row shows megatron-core's stock local spec (unfused
attention) for reference.

    .venv/bin/python benchmarks/train.py                 # CPU, fp32, small dense + small MoE
    python benchmarks/train.py --gpu                     # one GPU, bf16: ~1B dense and a small MoE
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kura.train.spec import RunSpec  # noqa: E402

SIZES = {
    "cpu": {"dense": dict(num_layers=4, hidden_size=256, num_attention_heads=4, num_query_groups=4,
                          ffn_hidden_size=704), "vocab": 4000, "seq": 256, "mbs": 8, "steps": 12,
            "moe": dict(num_layers=4, hidden_size=256, num_attention_heads=4, num_query_groups=4,
                        ffn_hidden_size=352, num_experts=4, moe_router_topk=2)},
    "gpu": {"dense": dict(num_layers=18, hidden_size=2048, num_attention_heads=16, num_query_groups=8,
                          ffn_hidden_size=5632), "vocab": 32000, "seq": 2048, "mbs": 8, "steps": 14,
            "moe": dict(num_layers=12, hidden_size=1024, num_attention_heads=16, num_query_groups=8,
                        ffn_hidden_size=2816, num_experts=8, moe_router_topk=2)},
}


def make_packed(folder: Path, vocab: int, seq: int, n: int) -> Path:
    """A packed phase folder of random sequences (seq+1 tokens each) in kura's layout."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    b = IndexedDatasetBuilder(str(folder / "train_bench.bin"), dtype=np.int32)
    for _ in range(n):
        b.add_item(torch.from_numpy(rng.integers(0, vocab, seq + 1, dtype=np.int32)))
        b.end_document()
    b.finalize(str(folder / "train_bench.idx"))
    assert len(IndexedDataset(str(folder / "train_bench"))) == n
    (folder / "blend.json").write_text(json.dumps({"train": ["1.0", "train_bench"], "valid": [], "test": []}))
    return folder


def plain_megatron(spec: RunSpec, packed: Path, vocab: int, seq: int, steps: int, bf16: bool,
                   sdpa: bool = True) -> list[float]:
    """Plain megatron-core: GPTModel + AdamW + the IndexedDataset read directly; per-step tokens/s. `sdpa`: the
    same core attention as kura's model (so the comparison measures the trainer); False: megatron's unfused one."""
    import torch
    import torch.nn.functional as F
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    from kura.train import cpu_shims  # on CPU only: megatron-core needs these to run at all

    cpu_shims.init_single_process(spec.seed)
    cuda = torch.cuda.is_available()
    m = spec.model
    kw = dict(num_moe_experts=m.num_experts, moe_router_topk=m.moe_router_topk, moe_ffn_hidden_size=m.ffn_hidden_size,
              moe_token_dispatcher_type="alltoall" if cuda else "allgather") if m.num_experts else {}
    cfg = TransformerConfig(num_layers=m.num_layers, hidden_size=m.hidden_size,
                            num_attention_heads=m.num_attention_heads, num_query_groups=m.groups,
                            ffn_hidden_size=m.ffn_hidden_size, gated_linear_unit=True, activation_func=F.silu,
                            normalization="RMSNorm", add_bias_linear=False, hidden_dropout=0.0,
                            attention_dropout=0.0, use_cpu_initialization=not cuda, bf16=bf16,
                            params_dtype=torch.bfloat16 if bf16 else torch.float32, **kw)
    layer_spec = get_gpt_layer_local_spec(m.num_experts, normalization="RMSNorm")
    if sdpa:
        from kura.train.attention import use_sdpa

        use_sdpa(layer_spec)
    model = GPTModel(config=cfg, transformer_layer_spec=layer_spec,
                     vocab_size=vocab, max_sequence_length=seq, position_embedding_type="rope",
                     share_embeddings_and_output_weights=False)
    dev = torch.device("cuda" if cuda else "cpu")
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    ds = IndexedDataset(str(packed / "train_bench"))
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=dev), diagonal=1)
    pos = torch.arange(seq, device=dev).unsqueeze(0).expand(spec.micro_batch_size, seq)
    rates = []
    for step in range(steps):
        t0 = time.perf_counter()
        rows = np.stack([ds[(step * spec.micro_batch_size + j) % len(ds)] for j in range(spec.micro_batch_size)])
        batch = torch.from_numpy(rows.astype(np.int64)).to(dev)
        loss = model(batch[:, :-1], pos, mask, labels=batch[:, 1:]).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        float(loss)  # sync, as kura's loop does when it logs the loss
        rates.append(spec.micro_batch_size * seq / (time.perf_counter() - t0))
    del model, opt
    return rates


def kura_trainer(spec: RunSpec, packed: Path, vocab: int, seq: int, steps: int, bf16: bool, tmp: Path) -> list[float]:
    from kura.train.pretrain import pretrain

    rates = []
    pretrain(spec, packed, tmp / f"work-{spec.name}", tmp / f"out-{spec.name}", vocab_size=vocab, seq_length=seq,
             train_iters=steps, bf16=bf16, progress=lambda r: rates.append(r["tokens_per_second"]))
    return rates


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        v = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return v
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpu", action="store_true", help="GPU sizes in bf16 (needs CUDA)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per implementation (best kept)")
    args = ap.parse_args()
    import torch

    from kura.train.pretrain import device_name, flops_per_token, peak_tflops

    size = SIZES["gpu" if args.gpu else "cpu"]
    bf16 = args.gpu
    steps = args.steps or size["steps"]
    warm = 3
    tmp = Path(tempfile.mkdtemp(prefix="kura-bench-train-"))
    packed = make_packed(tmp / "packed", size["vocab"], size["seq"], steps * size["mbs"] + 64)
    name = device_name()
    peak = peak_tflops(name) if args.gpu else None
    rows = []
    for kind in ("dense", "moe"):
        spec = RunSpec(name=f"bench_{kind}", phase="bench", train_iters=steps, save_interval=10**6, log_interval=1,
                       micro_batch_size=size["mbs"], global_batch_size=size["mbs"], model=size[kind],
                       optim={"lr": 1e-4, "min_lr": 1e-5, "warmup_iters": 1})
        fpt = flops_per_token(spec, size["vocab"], size["seq"])
        best: dict = {}
        for rnd in range(args.rounds):  # alternate the order; best round per implementation
            for impl in (("plain megatron-core", "kura trainer") if rnd % 2 == 0 else
                         ("kura trainer", "plain megatron-core")):
                t0 = time.perf_counter()
                if impl == "kura trainer":
                    rates = kura_trainer(spec, packed, size["vocab"], size["seq"], steps, bf16, tmp)
                else:
                    rates = plain_megatron(spec, packed, size["vocab"], size["seq"], steps, bf16)
                tps = statistics.median(rates[warm:])
                mem = peak_memory_mb()
                print(f"  [{kind}] round {rnd}: {impl}: {tps:.0f} tokens/s, peak {mem:.0f} MB", flush=True)
                if tps > best.get(impl, (0,))[0]:
                    best[impl] = (tps, mem, time.perf_counter() - t0)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        t0 = time.perf_counter()
        try:
            rates = plain_megatron(spec, packed, size["vocab"], size["seq"], steps, bf16, sdpa=False)
            best["megatron-core, unfused attn"] = (statistics.median(rates[warm:]), peak_memory_mb(),
                                                   time.perf_counter() - t0)
        except torch.OutOfMemoryError:  # the [b·heads, s, s] scores do not fit at this micro-batch
            best["megatron-core, unfused attn"] = (float("nan"), float("nan"), time.perf_counter() - t0)
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        for impl in ("plain megatron-core", "kura trainer", "megatron-core, unfused attn"):
            tps, mem, wall = best[impl]
            rows.append({"model": kind, "impl": impl, "tok_s": tps, "mem": mem,
                         "mfu": tps * fpt / (peak * 1e12) if peak else None, "wall": wall, "fpt": fpt})
    print(f"\ndevice: {name}; precision: {'bf16' if bf16 else 'fp32'}; sequence {size['seq']}, micro-batch "
          f"{size['mbs']}, {steps} steps (median of per-step rates after {warm} warm-up steps); "
          f"OMP threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'model':6s} {'implementation':28s} {'tokens/s':>10s} {'GFLOP/token':>12s} {'MFU':>7s} {'peak MB':>9s} "
          f"{'wall s':>7s}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None and r["mfu"] == r["mfu"] else "n/a"
        print(f"{r['model']:6s} {r['impl']:28s} {r['tok_s']:10.0f} {r['fpt'] / 1e9:12.3f} {mfu:>7s} {r['mem']:9.0f} "
              f"{r['wall']:7.1f}")
    for kind in ("dense", "moe"):
        plain = next(r for r in rows if r["model"] == kind and r["impl"].startswith("plain"))
        kura = next(r for r in rows if r["model"] == kind and r["impl"].startswith("kura"))
        print(f"kura overhead vs plain megatron-core [{kind}]: {1 - kura['tok_s'] / plain['tok_s']:+.1%}")


if __name__ == "__main__":
    main()
