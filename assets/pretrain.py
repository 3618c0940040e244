"""Pretraining runs as a chain of assets, one factory over `pipelines/runs/*.yaml`.

Per run spec: `checkpoint/<run>` (trained by the trainer resource from `packed_dataset/<phase>`, the tokenizer and
its parent), `hf_model/<run>` (Hugging Face export: what vLLM serves and post-training loads) and
`eval_perplexity/<run>`. A run with `upcycle` gets `upcycled/<run>` between its dense parent and itself. Lineage
in the UI is the whole history: checkpoint/dense_1 → checkpoint/dense_2 → upcycled/moe_1 → checkpoint/moe_1.

Editing a run's YAML changes that run's code version (the spec is part of it), so that run and everything after it
in the chain turn stale. Resumable: a run's in-progress checkpoints live in a work folder keyed by the run's input
version; a retried or relaunched step continues from the latest one, and the checkpoint asset is published
(commit marker) only once the final weights are written.
"""

import json
import shutil
from pathlib import Path
from typing import Optional

import dagster as dg

import kura.eval.perplexity as ppl
import kura.train.export_hf as export_hf
import kura.train.mcore as mcore
import kura.train.pretrain as pretrain_mod
import kura.train.rollup as rollup
import kura.train.spikes as spikes
import kura.train.upcycle as upcycle_mod
from assets._common import curves_md, input_version_of, kura_asset, output, run_versioned, work_dir, write_json
from assets.automation import EAGER, ON_EDIT_OR_EAGER
from assets.mix import packed_key
from kura.io.inputs import result_neutral
from kura.train.spec import RunSpec
from kura.io.layout import LAYOUT
from resources import StorageResource
from resources.trainer import TrainerResource



def ckpt_key(run: str) -> dg.AssetKey:
    return dg.AssetKey(["checkpoint", run])


def upcycled_key(run: str) -> dg.AssetKey:
    return dg.AssetKey(["upcycled", run])


def hf_key(run: str) -> dg.AssetKey:
    return dg.AssetKey(["hf_model", run])


class SpikeCheckConfig(dg.Config, spikes.SpikeConfig):
    """The loss-spike rule of the checkpoint's `no_loss_spikes` check (see kura.train.spikes.SpikeConfig)."""


class CheckpointConfig(dg.Config):
    train_iters: Optional[int] = None
    """Override the spec's budget (tests, quick looks); None = the spec's train_iters / train_tokens."""
    keep_work_dir: bool = result_neutral(False, description="Keep the intermediate resumable checkpoints after "
                                                            "the run finished (default: delete them).")
    spikes: SpikeCheckConfig = result_neutral(SpikeCheckConfig(), description="The rule of the no_loss_spikes "
                                              "check: it reads the loss curve, the weights do not depend on it.")


class UpcycleConfig(dg.Config):
    verify: bool = result_neutral(True, description="Check that the upcycled model's logits equal the dense "
                                                    "parent's on a small batch (tiny models only); the check's "
                                                    "figure goes to the manifest, the weights are the same.")


class PerplexityConfig(dg.Config):
    max_docs: int = 500
    """Held-out documents scored per language and phase."""


def model_dir(st, checkpoint: dict) -> Path:
    """Local folder with a checkpoint's model.safetensors + config.json: the asset's own folder for a local run,
    the weights pod 0 converted and uploaded for a cluster run."""
    d = st.local_dir(checkpoint["dir"])
    if (d / "cluster_checkpoint.json").exists():
        return st.local_dir(json.loads((d / "cluster_checkpoint.json").read_text())["weights"])
    return d


def _copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    """kura's tokenizer (tokenizer.model + its HF export hf/), or an imported base's HF tokenizer (tokenizer_hf/)."""
    if (tokenizer_dir / "tokenizer.model").exists():
        shutil.copy(tokenizer_dir / "tokenizer.model", out / "tokenizer.model")
    for sub in ("tokenizer_hf", "hf"):  # a base also keeps its whole original folder in hf/
        if (tokenizer_dir / sub).exists():
            shutil.copytree(tokenizer_dir / sub, out / "tokenizer_hf", dirs_exist_ok=True)
            break


def parent_key(init_from: str) -> dg.AssetKey:
    """A run's parent: another run's checkpoint, or an imported base model (`base_model/<name>`)."""
    return dg.AssetKey.from_user_string(init_from) if init_from.startswith("base_model/") else ckpt_key(init_from)


def build_checkpoint(spec: RunSpec, tokenizer: dg.AssetKey = dg.AssetKey("tokenizer")) -> dg.AssetsDefinition:
    """`tokenizer`: what the run's phase packs with (kura's tokenizer, or an imported base model's)."""
    ins = {"packed": dg.AssetIn(key=packed_key(spec.phase))}
    if spec.upcycle:
        ins["parent"] = dg.AssetIn(key=upcycled_key(spec.name))
    elif spec.init_from:
        ins["parent"] = dg.AssetIn(key=parent_key(spec.init_from))
    if ins.get("parent") is None or ins["parent"].key != tokenizer:  # a base that is also the tokenizer: one input
        ins["tokenizer"] = dg.AssetIn(key=tokenizer)
    kind = "MoE" if spec.is_moe else "dense"

    @kura_asset(key=ckpt_key(spec.name), group_name="pretraining", ins=ins, automation_condition=ON_EDIT_OR_EAGER,
              description=f"{kind} run on phase {spec.phase}"
                          f"{', from ' + spec.init_from if spec.init_from else ''}. {spec.description}".strip(),
              code_version_extra=json.dumps(spec.model_dump(), sort_keys=True),
              kinds={"pytorch"}, tags={"kura/run": spec.name},
              check_specs=[dg.AssetCheckSpec("no_loss_spikes", asset=ckpt_key(spec.name),
                                             description="No loss or gradient-norm spike in the training curve "
                                                         "(robust z over a trailing window, kura.train.spikes); "
                                                         "fails with the spike steps. A warning: it blocks nothing.")])
    def checkpoint(context: dg.AssetExecutionContext, config: CheckpointConfig, storage: StorageResource,
                   trainer: TrainerResource, **inputs):
        st = storage.get()
        packed, parent = inputs["packed"], inputs.get("parent")
        tok = inputs.get("tokenizer", parent)
        iv = input_version_of(context, config, inputs)
        work = work_dir(st, "checkpoint", spec.name, iv)
        weights_rel = LAYOUT.cluster_weights(spec.name, iv)  # where a cluster run's pod 0 uploads the final weights

        def build(stage: Path) -> dict:
            if parent and parent.get("vocab_size") not in (None, packed["vocab_size"]):
                raise ValueError(f"checkpoint/{spec.name}: its parent {spec.init_from} has a vocabulary of "
                                 f"{parent['vocab_size']} ids but packed_dataset/{spec.phase} was tokenized with "
                                 f"{packed['vocab_size']}; a run continues its parent with the parent's tokenizer "
                                 f"(for a base model: give phase {spec.phase} `tokenizer: {spec.init_from}` in the "
                                 f"mix)")
            lineage = {"run": spec.name, "phase": spec.phase, "packed_dataset": packed["version"],
                       "data_mix": packed["mix"], "tokenizer": tok["version"],
                       "parent": parent["version"] if parent else None, "parent_run": spec.init_from,
                       "upcycled": bool(spec.upcycle),
                       "chain": [*(parent.get("lineage", {}).get("chain", []) if parent else []), spec.name]}
            init = model_dir(st, parent) / "model.safetensors" if parent else None
            init_opt = model_dir(st, parent) / "optimizer.pt" if parent and spec.resume_optimizer else None
            stats = trainer.train(context, spec, packed_dir=st.local_dir(packed["dir"]), work_dir=work,
                                  out_dir=stage, vocab_size=packed["vocab_size"], seq_length=packed["sequence_length"],
                                  init_weights=init, lineage=lineage, train_iters=config.train_iters,
                                  blend=packed.get("blend", {}).get("train"), parent=spec.init_from,
                                  dataset_dvc_path=LAYOUT.frozen(f"packed_dataset/{spec.phase}"),
                                  export_uri=None if trainer.backend == "local" else st.uri(weights_rel),
                                  init_optimizer=init_opt)
            prefixes = {info["prefix"]: label for label, info in packed.get("train", {}).items()}
            lineage["rollup"] = rollup.chain_rollup(
                (parent or {}).get("lineage", {}).get("rollup"),
                rollup.run_tokens_by_source(stats.get("train_tokens") or 0, packed.get("blend", {}).get("train") or [],
                                            prefixes))
            if (stage / "lineage.json").exists():  # the folder describes itself: its chain's tokens too
                write_json(stage / "lineage.json", {**json.loads((stage / "lineage.json").read_text()),
                                                    "rollup": lineage["rollup"]})
            stats["chain_gpu_hours"] = rollup.chain_gpu_hours((parent or {}).get("chain_gpu_hours"),
                                                              stats.get("gpu_hours"))
            _copy_tokenizer(st.local_dir(tok["dir"]), stage)
            if trainer.backend != "local":
                write_json(stage / "lineage.json", lineage)
                if not st.exists(f"{weights_rel}/export.json"):
                    raise RuntimeError(f"checkpoint/{spec.name}: the cluster run finished but {st.uri(weights_rel)} "
                                       "has no export.json (pod 0's conversion did not complete)")
                write_json(stage / "cluster_checkpoint.json", {**stats, "weights": weights_rel})
            return {"stats": stats, "lineage": lineage, "spec": spec.model_dump(), "vocab_size": packed["vocab_size"],
                    "chain_gpu_hours": stats["chain_gpu_hours"],
                    "sequence_length": packed["sequence_length"]}

        m, reused = run_versioned(context, st, config=config, upstream=inputs,
                                  build=build)
        if not config.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
        s = m["stats"]
        curve = s.get("loss_curve") or []
        md = {k: s.get(k) for k in ("parameters", "train_tokens", "tokens_per_second", "mfu", "gpu_hours", "device",
                                    "iterations", "resumed_from", "first_loss", "final_loss", "seconds")
              if s.get(k) is not None}
        if curve:
            md["loss_and_lr"] = curves_md(curve, f"checkpoint/{spec.name}")
        yield output(m, reused, **md, architecture=kind, chain=" → ".join(m["lineage"]["chain"]),
                     lineage=m["lineage"], chain_tokens=m["lineage"]["rollup"]["tokens"],
                     chain_synthetic_share=m["lineage"]["rollup"]["synthetic_share"],
                     chain_tokens_by_source=m["lineage"]["rollup"]["tokens_by_source"],
                     chain_gpu_hours=m.get("chain_gpu_hours"))
        found = spikes.spike_report(spikes.detect_spikes(curve, config.spikes))
        yield dg.AssetCheckResult(check_name="no_loss_spikes", passed=not found["spikes"],
                                  severity=dg.AssetCheckSeverity.WARN,
                                  metadata={"spikes": found["spikes"], "spike_steps": found["spike_steps"],
                                            "details": dg.MetadataValue.json(found["details"]),
                                            "logged_points": len(curve)})

    return checkpoint


def build_upcycled(spec: RunSpec) -> dg.AssetsDefinition:
    @kura_asset(key=upcycled_key(spec.name), group_name="pretraining", automation_condition=ON_EDIT_OR_EAGER,
              ins={"dense": dg.AssetIn(key=parent_key(spec.init_from))},
              description=f"{spec.init_from} upcycled to {spec.model.num_experts} experts "
                          f"(top-{spec.model.moe_router_topk})",
              code_version_extra=json.dumps(spec.model_dump(), sort_keys=True),
              kinds={"pytorch"})
    def upcycled(context: dg.AssetExecutionContext, config: UpcycleConfig, storage: StorageResource,
                 dense: dict) -> dg.Output:
        st = storage.get()

        def build(stage: Path) -> dict:
            dense_dir = model_dir(st, dense)
            lineage = {**dense["lineage"], "run": spec.name, "upcycled_from": dense["version"]}
            info = upcycle_mod.upcycle_checkpoint(dense_dir, spec, stage, lineage)
            if config.verify:
                import torch

                d, cfg = pretrain_mod.load_model(dense_dir)
                u, _ = pretrain_mod.load_model(stage)
                x = torch.randint(0, cfg["vocab_size"], (2, min(32, cfg["seq_length"])),
                                  generator=torch.Generator().manual_seed(0))
                with torch.no_grad():
                    info["max_logit_diff_vs_dense"] = float((mcore.forward_logits(d, x) -
                                                             mcore.forward_logits(u, x)).abs().max())
            return {"info": info, "lineage": lineage, "chain_gpu_hours": dense.get("chain_gpu_hours")}

        m, reused = run_versioned(context, st, config=config, upstream={"dense": dense}, build=build)
        return output(m, reused, **m["info"], lineage=m["lineage"])

    return upcycled


def build_hf_model(spec: RunSpec) -> dg.AssetsDefinition:
    @kura_asset(key=hf_key(spec.name), group_name="pretraining", automation_condition=EAGER,
              ins={"checkpoint": dg.AssetIn(key=ckpt_key(spec.name))},
              description=f"checkpoint/{spec.name} as a Hugging Face {'Mixtral' if spec.is_moe else 'Llama'} folder",
              kinds={"huggingface"})
    def hf_model(context: dg.AssetExecutionContext, storage: StorageResource, checkpoint: dict) -> dg.Output:
        st = storage.get()

        def build(stage: Path) -> dict:
            info = export_hf.export_hf(model_dir(st, checkpoint), stage, tokenizer_dir=st.local_dir(checkpoint["dir"]))
            return {"info": info, "checkpoint": checkpoint["version"], "lineage": checkpoint["lineage"]}

        m, reused = run_versioned(context, st, config={}, upstream={"checkpoint": checkpoint}, build=build)
        return output(m, reused, **m["info"], checkpoint=m["checkpoint"])

    return hf_model


def build_eval_perplexity(spec: RunSpec, phases: list[str]) -> dg.AssetsDefinition:
    ins = {f"packed_{p}": dg.AssetIn(key=packed_key(p)) for p in phases}
    ins["model"] = dg.AssetIn(key=hf_key(spec.name))

    @kura_asset(key=dg.AssetKey(["eval_perplexity", spec.name]), group_name="evaluation", ins=ins,
              automation_condition=EAGER, kinds={"pytorch"},
              description=f"Held-out perplexity of {spec.name} per phase and language")
    def eval_perplexity(context: dg.AssetExecutionContext, config: PerplexityConfig, storage: StorageResource,
                        **inputs) -> dg.Output:
        st = storage.get()
        model_m = inputs["model"]

        def build(stage: Path) -> dict:
            model_dir = st.local_dir(model_m["dir"])
            cfg = json.loads((model_dir / "config.json").read_text())
            model = ppl.load_hf(model_dir)
            res = {p: ppl.evaluate_heldout(model, st.local_dir(inputs[f"packed_{p}"]["dir"]),
                                           cfg["max_position_embeddings"], cfg["vocab_size"], config.max_docs)
                   for p in phases}
            result = {"perplexity": res, "model": model_m["version"], "run": spec.name,
                      "packed_dataset": {p: inputs[f"packed_{p}"]["version"] for p in phases}}
            write_json(stage / "perplexity.json", result)
            return result

        m, reused = run_versioned(context, st, config=config, upstream=inputs, build=build)
        md = {f"perplexity_{p}_{lang}": v["perplexity"] for p, langs in m["perplexity"].items()
              for lang, v in langs.items()}
        return output(m, reused, **md, details=m["perplexity"], model=m["model"])

    return eval_perplexity


def build_pretraining_assets(specs: list[RunSpec], phases: list[str],
                             phase_tokenizers: dict[str, dg.AssetKey] | None = None) -> list[dg.AssetsDefinition]:
    """`phase_tokenizers`: the tokenizer asset each phase packs with; a run is evaluated on the held-out sets of
    the phases sharing its phase's tokenizer (other token ids mean nothing to it)."""
    tk = phase_tokenizers or {}
    default = dg.AssetKey("tokenizer")
    out: list[dg.AssetsDefinition] = []
    for s in specs:
        if s.upcycle:
            out.append(build_upcycled(s))
        mine = tk.get(s.phase, default)
        same = [p for p in phases if tk.get(p, default) == mine]
        out += [build_checkpoint(s, mine), build_hf_model(s), build_eval_perplexity(s, same)]
    return out
