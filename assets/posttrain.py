"""Post-training trials as partitioned assets (one partition per trial of `pipelines/post_training/*.yaml`).

preference_pairs ──┐
synthetic ─────────┼─► adapter[trial] ─► merged_model[trial] ─► trial_eval[trial] ─► trial_leaderboard
data_mix/web ──────┤        (PEFT)        (merge_and_unload)      (tasks + held-out perplexity)
hf_model/<base> ───┘                        └─► model_merge/<name> (linear / task arithmetic of trials)

- SFT data: the gate-passed synthetic conversations (assistant-only loss) plus `replay_fraction` pretraining
  documents from the first mix phase; the adapter's manifest records both counts and the upstream versions.
- DPO pairs (`preference_pairs`): for each synthetic conversation, the teacher's answer is `chosen` and a sample of
  the base model is `rejected` (two models of known different strength — the "two teachers" construction).
- Every trial gets its evaluation partition through eager automation; `trial_leaderboard` ranks them with a
  picture. Adding a trial to the YAML adds a partition: a backfill (or the sensor) runs just the missing ones.
"""
import json
import shutil
from pathlib import Path
from typing import Optional

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

import kura.eval.contamination as contamination_mod
import kura.eval.correlation as correlation_mod
import kura.eval.judge as judge_mod
import kura.eval.perplexity as ppl
import kura.eval.tasks as tasks_mod
import kura.train.lora as lora
import kura.train.trials as trials_mod
from assets._common import input_version_of, kura_asset, output, png_md, run_versioned, work_dir, write_json
from assets.automation import EAGER, ON_EDIT_OR_EAGER
from assets.evaluation import (DEFAULT_QUESTIONS, DEFAULT_TASKS, _table, _tmpl, load_bench,
                               read_text_files)
from assets.mix import mix_key, packed_key
from assets.pretrain import hf_key
from assets.human import human_inputs, human_ins
from assets.synthetic import merge_synthetic, synthetic_ins, teacher_key
from assets.tokenizer import gated_rows
from kura.human import PAIR_SCHEMA
from kura.io import stable_hash
from kura.synth.generators import SamplingConfig
from kura.train.trials import MergeSpec, TrialSpec
from resources import GeneratorResource, StorageResource
from resources.posttrainer import PostTrainerResource


def _conversations(rows: list[dict]) -> list[list[dict]]:
    """Chat turns of each row; a system turn (human sets have them) is folded into the first user turn, as chat
    templates without a system role do."""
    out = []
    for r in rows:
        turns = json.loads(r["turns"]) if isinstance(r.get("turns"), str) else r.get("turns")
        if turns and turns[0]["role"] == "system" and len(turns) > 1:
            turns = [{"role": "user", "content": f"{turns[0]['content']}\n\n{turns[1]['content']}"}, *turns[2:]]
        if turns and any(t["role"] == "assistant" for t in turns):
            out.append(turns)
    return out


class PairsConfig(dg.Config):
    max_pairs: int = 256
    """Conversations turned into preference pairs."""
    max_tokens: int = 48
    """Length limit of the base model's (rejected) answers."""
    temperature: float = 1.0
    """Sampling temperature of the rejected answers."""
    chat_template: str = "plain"
    """Chat template the base model is prompted with."""


class TrialEvalConfig(dg.Config):
    tasks: str = DEFAULT_TASKS
    """Task folder (or s3:// prefix)."""
    max_docs: int = 200
    """Held-out documents per language and phase for perplexity."""
    max_tokens: int = 24
    """Answer length limit for the tasks and the judge questions."""
    questions: str = DEFAULT_QUESTIONS
    """Questions (FastChat's question.jsonl format) the judge grades the trial on, as eval_judge does."""
    references: Optional[str] = None
    """Reference answers in FastChat's answer format (see eval_judge)."""
    judge_max_tokens: int = 96
    """Judge reply length limit."""
    max_retries: int = 1
    """Re-asks for a judge reply without a grade."""
    force_grade: bool = True
    """After the re-asks, take the grade by constrained decoding after the judge's reply (counted as `forced`)."""


class LeaderboardConfig(dg.Config):
    rank_by: str = "task_score"
    """Metric to rank trials by (higher is better; perplexities are ranked lower-is-better). Ties (tiny models all
    score 0 on tasks) are broken by the mean held-out perplexity, lower first."""


def build_post_training_assets(trials: dict[str, TrialSpec], merges: list[MergeSpec], phases: list[str],
                               templates: dict, parts: dg.StaticPartitionsDefinition, datasets,
                               judge_teacher: str) -> list:
    """`datasets`: the synthetic datasets SFT and the DPO prompts learn from; `judge_teacher`: the local judge."""
    if not trials:
        return []
    bases = sorted({t.base for t in trials.values()})
    dpo_bases = sorted({t.base for t in trials.values() if t.method == "dpo" and t.preferences == "preference_pairs"})
    humans = sorted({h for t in trials.values() for h in trials_mod.trial_humans(t)})
    replay_phase = phases[0]
    out: list = []

    if dpo_bases:
        @kura_asset(name="preference_pairs", group_name="post_training", automation_condition=EAGER,
                  ins={**synthetic_ins(datasets), "base": dg.AssetIn(key=hf_key(dpo_bases[0]))},
                  description=f"chosen = teacher answer, rejected = a sample "
                                                                 f"of {dpo_bases[0]} (DPO pairs)")
        def preference_pairs(context: dg.AssetExecutionContext, config: PairsConfig, storage: StorageResource,
                             candidates: GeneratorResource, base: dict, **shards) -> dg.Output:
            st = storage.get()
            synthetic = merge_synthetic(shards)
            user, assistant, sep = _tmpl(templates, config.chat_template)

            def build(stage: Path) -> dict:
                convs = [c for c in _conversations(gated_rows(st, synthetic))][:config.max_pairs]
                prompts = [f"{user}{c[0]['content']}{sep}{assistant}" for c in convs]
                gen = candidates.build_for(st, base["dir"])
                samples = gen.generate(prompts, SamplingConfig(max_tokens=config.max_tokens,
                                                               temperature=config.temperature, seed=0)).completions
                rows, same = [], 0
                for i, (c, s) in enumerate(zip(convs, samples)):
                    chosen = next(t["content"] for t in c if t["role"] == "assistant")
                    rejected = s.strip().split(f"{sep}{user.strip()}")[0].strip()
                    if rejected == chosen.strip() or not rejected:
                        same += 1
                        continue
                    rows.append({"doc_id": str(i), "prompt": c[0]["content"], "chosen": chosen, "rejected": rejected})
                pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), stage / "pairs.parquet")
                return {"pairs": len(rows), "dropped_identical_or_empty": same, "rejected_model": base["version"],
                        "chosen_from": {k: v["version"] for k, v in sorted(synthetic.items())}}

            m, reused = run_versioned(context, st, config=config, upstream={"synthetic": synthetic, "base": base},
                                      build=build)
            return output(m, reused, pairs=m["pairs"], dropped=m["dropped_identical_or_empty"])

        out.append(preference_pairs)

    # the synthetic datasets some SFT trial reads (a DPO-only grid, or SFT on human sets only, reads none)
    sft_datasets = sorted({d for t in trials.values() if t.method == "sft" for d in datasets
                           if "synthetic" in t.data or f"synthetic/{d}" in t.data})
    ins = {**synthetic_ins(sft_datasets), **human_ins(humans), "replay_mix": dg.AssetIn(key=mix_key(replay_phase))}
    ins.update({f"base_{b}": dg.AssetIn(key=hf_key(b)) for b in bases})
    if dpo_bases:
        ins["pairs"] = dg.AssetIn("preference_pairs")

    @kura_asset(name="adapter", group_name="post_training", partitions_def=parts, automation_condition=EAGER, ins=ins,
              description="LoRA adapter of one trial (PEFT format) with the texts it was trained on")
    def adapter(context: dg.AssetExecutionContext, storage: StorageResource, post_trainer: PostTrainerResource,
                **inputs) -> dg.Output:
        st = storage.get()
        tid = context.partition_key
        spec = trials[tid]
        base = inputs[f"base_{spec.base}"]
        synthetic = trials_mod.trial_shards(spec, merge_synthetic(inputs))
        hum = {n: m for n, m in human_inputs(inputs).items() if n in trials_mod.trial_humans(spec)}
        tmpl = _tmpl(templates, spec.chat_template)
        if spec.method == "dpo":
            data = inputs["pairs"] if spec.preferences == "preference_pairs" else hum[spec.preferences[6:]]
        else:
            data = {**synthetic, **{f"human/{n}": m for n, m in hum.items()}}
        upstream = {"base": base, "replay_mix": inputs["replay_mix"], "data": data}
        work = work_dir(st, "adapter", tid, input_version_of(context, spec.model_dump(), upstream))

        def build(stage: Path) -> dict:
            _, tok = lora.load_base(st.local_dir(base["dir"]))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if spec.method == "sft":
                convs = _conversations(gated_rows(st, synthetic) + gated_rows(st, hum))
                docs = pq.read_table(st.local_dir(inputs["replay_mix"]["dir"]) / "documents.parquet",
                                     columns=["text"]).column("text").to_pylist()
                examples, man = lora.build_sft_data(convs, [d for d in docs if d], spec, tok, tmpl)
            else:
                pairs = pq.read_table(st.local_dir(data["dir"]) / "pairs.parquet").to_pylist()
                examples, man = lora.build_dpo_data(pairs, spec, tok, tmpl)
            man.update(base_model=base["version"], replay_source=f"data_mix/{replay_phase}",
                       replay_mix_version=inputs["replay_mix"]["version"],
                       data_versions=({spec.preferences: data["version"]} if spec.method == "dpo" else
                                      {(k if k.startswith("human/") else f"synthetic[{k}]"): v["version"]
                                       for k, v in sorted(data.items())}))
            _write_training_texts(stage / "training_texts.jsonl", examples, tok)
            stats = post_trainer.train(context, st, spec, base["dir"], stage, examples=examples, pad_id=pad,
                                       manifest=man, work_dir=work)
            info = {"trial": tid, "spec": spec.model_dump(), "base_run": spec.base, **stats}
            write_json(stage / "kura_adapter.json", info)
            return {k: v for k, v in info.items() if k != "curve"}

        m, reused = run_versioned(context, st, config=spec.model_dump(), upstream=upstream, build=build)
        shutil.rmtree(work, ignore_errors=True)
        d = m["data"]
        return output(m, reused, method=spec.method, base=spec.base, lora_r=spec.lora.r, lr=spec.optim.lr,
                      final_loss=m["final_loss"], epoch_losses=m.get("epoch_losses") or [], steps=m["steps"],
                      trainable_parameters=m["trainable_parameters"],
                      data=d, **({"reward_accuracy": m["reward_accuracy"]} if "reward_accuracy" in m else {}))

    out.append(adapter)

    mins = {"adapter": dg.AssetIn("adapter")}
    mins.update({f"base_{b}": dg.AssetIn(key=hf_key(b)) for b in bases})

    @kura_asset(name="merged_model", group_name="post_training", partitions_def=parts, automation_condition=EAGER,
              ins=mins, description="base + adapter merged (merge_and_unload)")
    def merged_model(context: dg.AssetExecutionContext, storage: StorageResource, **inputs) -> dg.Output:
        st = storage.get()
        spec = trials[context.partition_key]
        base, ad = inputs[f"base_{spec.base}"], inputs["adapter"]

        def build(stage: Path) -> dict:
            info = lora.merge(st.local_dir(base["dir"]), st.local_dir(ad["dir"]) / "adapter", stage)
            return {**info, "adapter": ad["version"], "base_model": base["version"], "base_dir": base["dir"],
                    "trial": context.partition_key}

        m, reused = run_versioned(context, st, config={}, upstream={"adapter": ad, "base": base}, build=build)
        return output(m, reused, max_logit_diff_vs_adapter=m["max_logit_diff_vs_adapter"], adapter=m["adapter"])

    out.append(merged_model)

    for mg in merges:
        out.append(_merge_asset(mg, trials, parts))

    eins = {"model": dg.AssetIn("merged_model"), "judge_model": dg.AssetIn(key=teacher_key(judge_teacher)),
            "adapter": dg.AssetIn("adapter")}
    eins.update({f"packed_{p}": dg.AssetIn(key=packed_key(p)) for p in phases})
    eins.update({f"contamination_{b}": dg.AssetIn(key=dg.AssetKey(["contamination", b])) for b in bases})

    @kura_asset(name="trial_eval", group_name="post_training", partitions_def=parts, automation_condition=EAGER,
              ins=eins, description="Every trial's tasks (score, format compliance), held-out perplexity, judge "
                                    "grades and contamination (its base's, plus its own fine-tuning data)")
    def trial_eval(context: dg.AssetExecutionContext, config: TrialEvalConfig, storage: StorageResource,
                   candidates: GeneratorResource, judge: GeneratorResource, **inputs) -> dg.Output:
        st = storage.get()
        spec = trials[context.partition_key]
        files = read_text_files(storage, config.tasks, ".jsonl")
        qfile, read, questions = load_bench(storage, config.questions, config.references)
        model = inputs["model"]

        def build(stage: Path) -> dict:
            d = st.local_dir(model["dir"])
            cfg = json.loads((d / "config.json").read_text())
            gen = candidates.build_for(st, model["dir"])
            t = tasks_mod.run_tasks(tasks_mod.load_task_dir(files), judge_mod.candidate_fn(gen, config.max_tokens),
                                    *_tmpl(templates, spec.chat_template))
            lm = ppl.load_hf(d)
            p = {ph: ppl.evaluate_heldout(lm, st.local_dir(inputs[f"packed_{ph}"]["dir"]),
                                          cfg["max_position_embeddings"], cfg["vocab_size"], config.max_docs)
                 for ph in phases}
            tmpl = _tmpl(templates, spec.chat_template)
            _, graded = judge_mod.run_bench(questions, gen, judge.build_for(st, inputs["judge_model"]["dir"]), tmpl,
                                            max_tokens=config.max_tokens, judge_max_tokens=config.judge_max_tokens,
                                            max_retries=config.max_retries, force=config.force_grade)
            res = {"trial": context.partition_key, "method": spec.method, "tasks": t["tasks"],
                   "overall": t["overall"], "perplexity": p, "model": model["version"],
                   "judge": {k: v for k, v in graded.items() if k != "records"},
                   "judge_model": judge.model_label(inputs["judge_model"]["version"]),
                   "contamination": _trial_contamination(st, files, questions, Path(qfile).stem, inputs["adapter"],
                                                         inputs[f"contamination_{spec.base}"])}
            write_json(stage / "trial_eval.json", res)
            with open(stage / "judge_grades.jsonl", "w", encoding="utf-8") as f:
                for r in graded["records"]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            return res

        upstream = {"model": model, "tasks": stable_hash(files), **read,
                    "judge_model": inputs["judge_model"], "adapter": inputs["adapter"],
                    "base_contamination": inputs[f"contamination_{spec.base}"],
                    **{k: v for k, v in inputs.items() if k.startswith("packed_")}}
        m, reused = run_versioned(context, st, config=config, upstream=upstream, build=build)
        md = {f"perplexity_{ph}_{lang}": v["perplexity"] for ph, langs in m["perplexity"].items()
              for lang, v in langs.items()}
        return output(m, reused, task_score=m["overall"]["score"],
                      format_compliance=m["overall"]["format_compliance"], judge_score=m["judge"]["mean_score"],
                      judge_parse_failures=m["judge"]["parse_failures"], judge_forced=m["judge"]["forced"],
                      contaminated_items=m["contamination"]["contaminated_items"], **md)

    out.append(trial_eval)

    @kura_asset(name="trial_leaderboard", group_name="post_training", automation_condition=EAGER,
              ins={"evals": dg.AssetIn("trial_eval", partition_mapping=dg.AllPartitionMapping()),
                   "adapters": dg.AssetIn("adapter", partition_mapping=dg.AllPartitionMapping())},
              description="Trials ranked by the chosen metric")
    def trial_leaderboard(context: dg.AssetExecutionContext, config: LeaderboardConfig, storage: StorageResource,
                          evals: dict, adapters: dict) -> dg.Output:
        st = storage.get()
        rows = []
        for tid, e in sorted(evals.items()):
            a = adapters.get(tid, {})
            row = {"trial": tid, "method": e["method"], "lora_r": trials[tid].lora.r, "lr": trials[tid].optim.lr,
                   "replay": trials[tid].replay_fraction, "task_score": e["overall"]["score"],
                   "format_compliance": e["overall"]["format_compliance"], "final_loss": a.get("final_loss"),
                   "judge_score": e["judge"]["mean_score"],
                   "contaminated_items": e["contamination"]["contaminated_items"]}
            for ph, langs in e["perplexity"].items():
                for lang, v in langs.items():
                    row[f"ppl_{ph}_{lang}"] = v["perplexity"]
            rows.append(row)
        rows = trials_mod.rank_trials(rows, config.rank_by)
        # which metric to trust over the trials (the runs' table, with arena Elo, is on eval_leaderboard)
        metrics = ["judge_score", "task_score", "format_compliance"] + sorted(
            k for k in (rows[0] if rows else {}) if k.startswith("ppl_"))

        def build(stage: Path) -> dict:
            write_json(stage / "trial_leaderboard.json", rows)
            return {"rows": rows, "rank_by": config.rank_by,
                    "correlations": correlation_mod.correlations(rows, metrics)}

        m, reused = run_versioned(context, st, config=config, upstream={"evals": evals, "adapters": adapters},
                                  build=build)
        return output(m, reused, leaderboard=_table(m["rows"], list(m["rows"][0])) if m["rows"] else "empty",
                      plot=_trial_plot(m["rows"], config.rank_by), trials=len(m["rows"]),
                      metric_correlations=_table(m["correlations"], correlation_mod.COLUMNS))

    out.append(trial_leaderboard)
    return out


def _write_training_texts(path: Path, examples: list[tuple], tok) -> None:
    """What the trial trained on, as text (decoded from the very token ids, after truncation): SFT conversations,
    replay documents (labels = inputs, nothing masked), DPO chosen/rejected pairs. The contamination check of the
    trial reads it; it is also the trial's data for anyone reproducing it."""
    with open(path, "w", encoding="utf-8") as f:
        for i, ex in enumerate(examples):
            if len(ex) == 4:
                rows = [("dpo_chosen", ex[0]), ("dpo_rejected", ex[2])]
            else:
                rows = [("replay" if list(ex[1]) == list(ex[0]) else "conversation", ex[0])]
            for kind, ids in rows:
                f.write(json.dumps({"example": i, "kind": kind, "text": tok.decode(ids, skip_special_tokens=True)},
                                   ensure_ascii=False) + "\n")


def _trial_contamination(st, files: dict, questions, qname: str, adapter: dict, base_report: dict) -> dict:
    """The base run's contamination (its whole pretraining lineage) plus a check of the texts the trial itself was
    fine-tuned on (its adapter's training_texts.jsonl: conversations and replay for SFT, pairs for DPO)."""
    items = {f"tasks/{name}": [(f"{name}:{it.index}", it.text()) for it in its]
             for name, its in tasks_mod.load_task_dir(files).items()}
    items[f"judge/{qname}"] = [(q.qid, "\n".join(q.turns)) for q in questions]
    with open(st.local_dir(adapter["dir"]) / "training_texts.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    docs = ((f"adapter/{adapter['trial']}:{r['kind']}", str(r["example"]), r["text"]) for r in rows)
    own = contamination_mod.check(items, docs, base_report["ngram"], base_report["min_hits"])
    merged = {}
    for name, v in own["eval_sets"].items():
        b = base_report["eval_sets"].get(name, {"contaminated": 0, "sources": [], "examples": []})
        merged[name] = {"fine_tuning_contaminated": v["contaminated"], "base_contaminated": b["contaminated"],
                        "sources": sorted(set(v["sources"]) | set(b["sources"]))}
    return {"eval_sets": merged, "contaminated_items": sum(v["fine_tuning_contaminated"] + v["base_contaminated"]
                                                           for v in merged.values()),
            "fine_tuning_documents": own["training_documents"]}


def _merge_asset(mg: MergeSpec, trials: dict[str, TrialSpec], parts) -> dg.AssetsDefinition:
    base_run = trials[mg.trials[0]].base

    @kura_asset(key=dg.AssetKey(["model_merge", mg.name]), group_name="post_training",
                automation_condition=ON_EDIT_OR_EAGER,
              ins={"merged": dg.AssetIn("merged_model", partition_mapping=dg.SpecificPartitionsPartitionMapping(
                  list(mg.trials)))},
              code_version_extra=json.dumps(mg.model_dump(), sort_keys=True),
              description=f"{mg.method} merge of {', '.join(mg.trials)}")
    def model_merge(context: dg.AssetExecutionContext, storage: StorageResource, merged: dict):
        """Depends on the trials' merged models only (each names its base), so it rebuilds after them, never
        combining trials of an old base with a new one."""
        st = storage.get()
        bases = {merged[t]["base_model"] for t in mg.trials}
        if len(bases) != 1:
            raise ValueError(f"merge {mg.name}: the trials' merged models have different bases {sorted(bases)} "
                             "(some are stale: rebuild them first)")

        def build(stage: Path) -> dict:
            base_dir = st.local_dir(merged[mg.trials[0]]["base_dir"])
            info = lora.combine(base_dir, [st.local_dir(merged[t]["dir"]) for t in mg.trials], mg.weights, stage)
            return {**info, "method": mg.method, "base_model": bases.pop(), "base_run": base_run,
                    "trials": {t: merged[t]["version"] for t in mg.trials}}

        m, reused = run_versioned(context, st, config=mg.model_dump(), upstream={"merged": merged}, build=build)
        return output(m, reused, method=m["method"], trials=m["trials"], tensors_changed=m["tensors_changed"])

    return model_merge


def _trial_plot(rows: list[dict], metric: str) -> dg.MetadataValue:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 0.4 * max(1, len(rows)) + 1.0), dpi=90)
    names = [r["trial"] for r in rows][::-1]
    vals = [r.get(metric) or 0 for r in rows][::-1]
    colors = ["#4c72b0" if r["method"] == "sft" else "#dd8452" for r in rows][::-1]
    ax.barh(names, vals, color=colors)
    ax.set_xlabel(f"{metric} (blue: SFT, orange: DPO)", fontsize=8)
    ax.tick_params(labelsize=8)
    return png_md(fig, "trials")
