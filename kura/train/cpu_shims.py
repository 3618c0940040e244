"""The few patches megatron-core 0.16 needs to build and train `GPTModel` on a CPU, in one place.

Why: megatron-core assumes CUDA in a handful of helpers even with `use_cpu_initialization=True`. On a GPU none
of the CUDA stand-ins is applied (only the TransformerEngine one, which any image without TE needs).
Measured on this project's CPU machines:
- `torch.cuda.current_device()` is called while building parameters and the RNG tracker → return CPU;
- `torch.cuda.synchronize()` is called by dist_checkpointing and timers → no-op;
- the CUDA RNG tracker's `add`/`fork` touch CUDA generator state → CPU-safe versions that fork the CPU RNG;
- `moe_utils.te_general_gemm` is referenced when TransformerEngine is absent → defined as None.
Also: one single-process gloo group and model-parallel sizes of 1 (`init_single_process`), since every
megatron-core module asks parallel_state for its groups.
"""
from __future__ import annotations

import contextlib
import os

_applied = False


def apply() -> None:
    global _applied
    import torch

    if _applied:
        return
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):  # TransformerEngine absent (CPU, or a GPU image without it)
        moe_utils.te_general_gemm = None
    _applied = True
    if torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None

    from megatron.core.tensor_parallel import random as mrandom

    tracker = mrandom.get_cuda_rng_tracker()
    cls = type(tracker)

    def add(self, name, seed):
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()
        self.seeds_.add(seed)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            add(self, name, 1234)
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

    cls.add, cls.fork = add, fork


def init_single_process(seed: int = 1234) -> None:
    """One-process torch.distributed group (gloo on CPU, NCCL on GPU) and model parallel sizes of 1; idempotent."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    apply()
    if not torch.distributed.is_initialized():
        # a private loopback store; MASTER_ADDR/PORT are left alone (child processes would inherit a taken port)
        port = os.environ.get("KURA_DIST_PORT")
        if not port:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = str(s.getsockname()[1])
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo", world_size=1, rank=0,
                                             init_method=f"tcp://127.0.0.1:{port}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    if torch.cuda.is_available():
        model_parallel_cuda_manual_seed(seed)
    else:
        from megatron.core.tensor_parallel import random as mrandom

        tracker = mrandom.get_cuda_rng_tracker()
        tracker.reset()
        tracker.add("model-parallel-rng", seed)
        if hasattr(mrandom, "_EXPERT_PARALLEL_RNG_TRACKER_NAME"):
            tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1)
        if hasattr(mrandom, "_DATA_PARALLEL_RNG_TRACKER_NAME"):
            tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed + 2)
