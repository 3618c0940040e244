"""Level 1: the loss-spike rule (kura.train.spikes) on curves shaped like real ones."""
from __future__ import annotations

import math

import numpy as np

from kura.train.spikes import SpikeConfig, detect_spikes, spike_report


def curve(losses, gnorms=None):
    gnorms = gnorms if gnorms is not None else [0.5] * len(losses)
    return [{"step": 10 * i, "loss": lo, "grad_norm": g} for i, (lo, g) in enumerate(zip(losses, gnorms))]


def falling(n=60, seed=0):
    r = np.random.default_rng(seed)
    return [float(2.0 + 6.0 * math.exp(-i / 8) + r.normal(0, 0.02)) for i in range(n)]


def test_a_healthy_run_has_no_spikes():
    losses = falling()
    gn = [float(x) for x in np.random.default_rng(1).uniform(0.3, 0.7, len(losses))]
    gn[1] = 2.6  # warmup moves the gradient norm a lot: not judged
    assert detect_spikes(curve(losses, gn)) == []


def test_a_loss_spike_is_reported_at_its_step_and_a_run_that_stays_high_keeps_reporting():
    losses = falling()
    losses[40] += 1.5
    found = detect_spikes(curve(losses))
    assert [(s.step, s.metric) for s in found] == [(400, "loss")]
    assert found[0].value > found[0].threshold > found[0].median
    stuck = falling()
    stuck[45:] = [x + 2.0 for x in stuck[45:]]  # diverged and never came back
    steps = [s.step for s in detect_spikes(curve(stuck))]
    assert steps[0] == 450 and len(steps) == 15, "later windows leave spikes out"


def test_gradient_norm_spikes_and_non_finite_values():
    losses = falling()
    gn = [0.5] * len(losses)
    gn[30] = 9.0
    losses[50] = float("nan")
    got = {(s.step, s.metric) for s in detect_spikes(curve(losses, gn))}
    assert got == {(300, "grad_norm"), (500, "loss")}
    rep = spike_report(detect_spikes(curve(losses, gn)))
    assert rep["spikes"] == 2 and rep["spike_steps"] == [300, 500]


def test_noise_on_a_flat_run_is_not_a_spike_and_thresholds_are_settings():
    flat = [2.0 + 0.001 * (i % 3) for i in range(50)]  # MAD ~0: the minimum rise keeps noise out
    flat[30] = 2.05
    assert detect_spikes(curve(flat)) == []
    assert [s.step for s in detect_spikes(curve(flat), SpikeConfig(min_loss_rise=0.01))] == [300]
    assert detect_spikes(curve(flat[:4] + [9.0])) == [], "not judged before min_history points"


# ------------------------------------------------------------------ level 2: a real run that meets bad batches

ARCH = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2, "ffn_hidden_size": 96}


def _spiky_packed(out, n_garbage=8, vocab=97, seq=32):
    """A phase the model learns almost perfectly (one repeated pattern) with a few sequences of random tokens:
    a batch holding one of them is a loss and gradient-norm spike, as a corrupt shard is in a real run."""
    from kura.pack.megatron import write_blend, write_packed_source

    rng = np.random.default_rng(0)
    docs = [(np.array(list(range(5, 21)) * 2), None) for _ in range(300)]
    docs += [(rng.integers(5, vocab, seq), None) for _ in range(n_garbage)]
    out.mkdir(parents=True, exist_ok=True)
    write_blend(out, {"web": write_packed_source(out, "web", docs, seq, eod=1, pad=0, vocab_size=vocab)})
    return out


def _spec(rollback):
    from kura.train.spec import RunSpec

    return RunSpec(name="spiky", phase="web", train_iters=60, save_interval=5, log_interval=1, global_batch_size=4,
                   micro_batch_size=4, seed=1, model=ARCH, optim={"warmup_iters": 2, "lr": 3e-3},
                   rollback_on_spike=rollback)


def test_rollback_on_spike_skips_the_bad_batches_and_records_them(tmp_path):
    import json

    import pytest

    from kura.train.pretrain import SpikeRollbackLimit, pretrain

    packed = _spiky_packed(tmp_path / "packed")
    plain = pretrain(_spec(None), packed, tmp_path / "w0", tmp_path / "o0", vocab_size=97, seq_length=32)
    assert detect_spikes(plain["loss_curve"]), "the bad batches spike a run that does not react"
    assert plain["rollbacks"] == []

    st = pretrain(_spec({"max_rollbacks": 6}), packed, tmp_path / "w1", tmp_path / "o1", vocab_size=97,
                  seq_length=32)
    rb = st["rollbacks"]
    assert rb and all(r["rolled_back_to"] <= r["spike_step"] and r["rolled_back_to"] % 5 == 0 for r in rb)
    assert all(a["skipped_batches"][1] < b["skipped_batches"][0] for a, b in zip(rb, rb[1:])), "ranges move on"
    assert [c["step"] for c in st["loss_curve"]] == list(range(60)), "one continuous curve"
    assert detect_spikes(st["loss_curve"]) == [], "the run that rolled back passes no_loss_spikes"
    assert st["final_loss"] < plain["final_loss"] + 0.05
    assert json.loads((tmp_path / "o1" / "lineage.json").read_text())["rollbacks"] == rb

    with pytest.raises(SpikeRollbackLimit, match=r"after 1 rollbacks already .* lower optim.lr"):
        pretrain(_spec({"max_rollbacks": 1}), packed, tmp_path / "w2", tmp_path / "o2", vocab_size=97,
                 seq_length=32)


def test_a_child_run_can_continue_its_parents_optimizer_without_a_new_warmup(tmp_path):
    """resume_optimizer: the child's AdamW continues the parent's moments and step count and skips warmup;
    the default starts a fresh optimizer with warmup from the parent's weights."""
    import pytest
    import torch

    from kura.train.pretrain import lr_at, pretrain
    from kura.train.spec import RunSpec

    packed = _spiky_packed(tmp_path / "packed", n_garbage=0)
    common = dict(phase="web", save_interval=50, log_interval=1, global_batch_size=4, micro_batch_size=4, seed=3,
                  model=ARCH, optim={"warmup_iters": 4, "lr": 1e-3, "decay_style": "constant"})
    parent = RunSpec(name="p", train_iters=6, **common)
    pretrain(parent, packed, tmp_path / "wp", tmp_path / "p", vocab_size=97, seq_length=32)

    def child(resume):
        s = RunSpec(name="c", train_iters=3, init_from="p", resume_optimizer=resume, **common)
        out = tmp_path / f"c{int(resume)}"
        st = pretrain(s, packed, tmp_path / f"w{int(resume)}", out, vocab_size=97, seq_length=32,
                      init_weights=tmp_path / "p" / "model.safetensors",
                      init_optimizer=tmp_path / "p" / "optimizer.pt" if resume else None)
        steps = {float(v["step"]) for v in torch.load(out / "optimizer.pt", weights_only=False)["optimizer"][
            "state"].values()}
        return s, st, steps

    s_warm, warm, warm_steps = child(True)
    s_fresh, fresh, fresh_steps = child(False)
    assert warm_steps == {9.0} and fresh_steps == {3.0}, "AdamW's step count continues from the parent's 6"
    assert warm["loss_curve"][0]["lr"] == pytest.approx(1e-3) and warm["optimizer_from_parent"]
    assert fresh["loss_curve"][0]["lr"] == pytest.approx(lr_at(0, s_fresh, 3)), "fresh: warmup again"
    assert lr_at(0, s_fresh, 3) < 1e-3
    with pytest.raises(ValueError, match="resume_optimizer needs init_from"):
        RunSpec(name="x", train_iters=3, resume_optimizer=True, **common)
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        pretrain(s_warm, packed, tmp_path / "wx", tmp_path / "x", vocab_size=97, seq_length=32,
                 init_optimizer=tmp_path / "missing.pt")
