"""`kura` command line: `kura demo` runs the whole DAG on CPU; `kura ui` starts the Dagster UI on 127.0.0.1.

The demo materializes through Dagster (a persistent instance under $KURA_HOME/dagster_home), so the UI started
afterwards shows every run, version, check and lineage edge the demo produced.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from kura.io.layout import LAYOUT

DAGSTER_YAML = """\
# written by kura: keep everything local, send nothing anywhere
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
"""

# the terminal gets kura's own lines; failures are explained in one sentence with the trace in a log file
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def prepare_env(home: Path, corpus: str | None = None) -> None:
    """Point KURA_* and DAGSTER_HOME at `home` and write a telemetry-free dagster.yaml."""
    home = home.absolute()
    dh = home / "dagster_home"
    dh.mkdir(parents=True, exist_ok=True)
    if not (dh / "dagster.yaml").exists():
        (dh / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["KURA_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dh)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(home / "cache" / "vllm"))
    os.environ.setdefault("HF_HOME", str(home / "cache" / "hf"))          # nothing under ~/.cache
    os.environ.setdefault("XDG_CACHE_HOME", str(home / "cache" / "xdg"))
    if corpus:
        os.environ["KURA_CORPUS_DIR"] = str(Path(corpus).absolute())


def job_run_config(job_assets: list[str], ops_config: dict | None) -> dict:
    ops = {k: {"config": v} for k, v in (ops_config or {}).items() if k in job_assets}
    return {**QUIET, "ops": ops} if ops else QUIET


def run_pipeline(instance, defs, day: str | None = None, log=print, ops_config: dict | None = None) -> dict:
    """Materialize the whole graph in dependency order; returns {asset: manifest} (for partitioned assets,
    {asset: {partition: manifest}}). Bad input files do not stop the run: they are quarantined and counted.
    `ops_config` maps asset names to their run config (tests use it for tiny budgets)."""
    from assets.corpus import corpus_partitions
    from assets.synthetic import daily_partitions
    from pipelines.definitions import INGEST

    import dagster as dg

    with dg.build_resources({"corpus": defs.resources["corpus"]}) as res:  # resolves EnvVar credentials
        files = res.corpus.list_files()
        where = res.corpus.path or str(res.corpus.folder())
    if not files:
        raise SystemExit(f"no supported files in {where}")
    existing = set(instance.get_dynamic_partitions(corpus_partitions.name))
    instance.add_dynamic_partitions(corpus_partitions.name, [f for f in files if f not in existing])
    out: dict = {"raw_corpus": {}, "cleaned": {}}
    for f in files:
        t = time.perf_counter()
        r = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, partition_key=f,
                                                              run_config=job_run_config(INGEST, ops_config),
                                                              raise_on_error=False)
        for a in ("raw_corpus", "cleaned"):
            try:
                out[a][f] = r.output_for_node(a)
            except Exception:  # noqa: BLE001 - a failed partition is reported below, the others go on
                pass
        checks = [c for c in r.get_asset_check_evaluations()]
        failed = [c.check_name for c in checks if not c.passed]
        c = out["cleaned"].get(f, {})
        log(f"  ingest {f:28s} kept {c.get('kept', '-'):>5} dropped {c.get('dropped', '-'):>4} "
            f"rejected-at-read {out['raw_corpus'].get(f, {}).get('rejected', '-'):>3} "
            f"{'CHECK FAILED ' + ','.join(failed) if failed else 'checks ok'} ({time.perf_counter() - t:.1f}s)")
    # one summary version of every cleaned shard, so staleness reaches `deduplicated` through its big fan-in
    defs.resolve_job_def("corpus_snapshot_job").execute_in_process(instance=instance, run_config=QUIET)
    # which teacher and judge are behind the resources now: another model makes what they produced stale
    defs.resolve_job_def("observe_models_job").execute_in_process(instance=instance, run_config=QUIET)
    syn_pk = day or daily_partitions.get_last_partition_key()  # one day of every synthetic dataset
    steps = [("curate_job", None), ("synthetic_job", syn_pk), ("model_job", None)]
    if "post_training_job" in {j.name for j in defs.jobs}:
        trials = defs.resolve_job_def("post_training_job").partitions_def.get_partition_keys()
        pairs = [("preference_data_job", None)] if "preference_data_job" in {j.name for j in defs.jobs} else []
        steps += [*pairs, *(("post_training_job", t) for t in trials),
                  ("post_training_summary_job", None)]
    out["left_out"] = []
    for job, pk in steps:
        t = time.perf_counter()
        if job.startswith(("preference_data", "post_training")) and _synthetic_left_out(out):
            if job == "preference_data_job":
                out["left_out"].append("post-training trials (SFT/DPO learn from synthetic conversations, and no "
                                       "synthetic shard passed its gate)")
                log(f"  {job:12s} left out: no synthetic conversations passed the gate")
            continue
        names = list(defs.resolve_job_def(job).graph.node_dict)  # op names: "tokenizer", "data_mix__web", ...
        r = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=pk,
                                                         run_config=job_run_config(names, ops_config),
                                                     raise_on_error=False)
        if not r.success:
            from pipelines.failures import blocked_shard, explain_failure

            why = blocked_shard(r) if job == "synthetic_job" else None
            if why is None:
                raise SystemExit(explain_failure(job, pk, r, Path(os.environ.get("KURA_HOME", ".kura")) / "logs"))
            # the shard is recorded and skipped by every reader; a mix that declares synthetic `optional` goes on
            out["left_out"].append(why)
            log(f"  {job:12s} {'[' + pk + ']':14s} gate failed, shard left out: {why}")
        for name in names:
            value = {pk: r.output_for_node(name)} if pk else r.output_for_node(name)
            if "__" in name:  # a phase asset: out["data_mix"]["web"]
                prefix, phase = name.split("__", 1)
                out.setdefault(prefix, {})[phase] = value
            elif pk:  # a partitioned asset: out["adapter"]["sft-r4"] (a dataset: out["synthetic"]["qa_web"][day])
                out.setdefault(name, {}).update(value)
            else:
                out[name] = value
        if r.success:
            log(f"  {job:12s} {'[' + pk + ']' if pk else '':14s} ok ({time.perf_counter() - t:.1f}s)")
    return out


def _synthetic_left_out(out: dict) -> bool:
    """True when the mix had to leave synthetic data out of every phase that names it (no shard passed its gate)."""
    phases = [m["summary"] for m in out.get("data_mix", {}).values()
              if any(k.startswith("synthetic") for k in (*m["summary"]["sources"], *m["summary"].get("left_out", {})))]
    return bool(phases) and all(any(k.startswith("synthetic") for k in p.get("left_out", {})) for p in phases)


def quiet_warnings() -> None:
    import warnings

    import dagster as dg

    for cat in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=cat)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


def demo(args) -> int:
    prepare_env(Path(args.home), args.corpus)
    quiet_warnings()
    import dagster as dg

    from pipelines.definitions import build_definitions

    t0 = time.perf_counter()
    instance = dg.DagsterInstance.get()
    defs = build_definitions()
    print(f"kura demo: corpus {defs.resources['corpus'].folder()}")
    out = run_pipeline(instance, defs, args.day)
    secs = time.perf_counter() - t0
    evs = out["eval_perplexity"]
    cks = dict(sorted(out["checkpoint"].items(), key=lambda kv: len(kv[1]["lineage"]["chain"])))
    print("\nResults")
    print(f"  documents kept after cleaning : {sum(m['kept'] for m in out['cleaned'].values())} "
          f"(dropped {sum(m['dropped'] for m in out['cleaned'].values())}, "
          f"rejected at read: {sum(m['rejected'] for m in out['raw_corpus'].values())} — bad or unreadable input, "
          f"WARC records that are not pages)")
    by_reason = ", ".join(f"{v} {k}" for k, v in sorted(out["deduplicated"]["duplicates_by_reason"].items()))
    print(f"  after dedup (exact + near)    : {out['deduplicated']['kept']} ({by_reason})")
    for name, days in out["synthetic"].items():
        for day, syn in days.items():
            rejected = ", ".join(f"{v} {k}" for k, v in sorted(syn["rejected_by_reason"].items())) or "none"
            print(f"  synthetic/{name} [{day}, teacher {syn['teacher_name']}, {syn['backend']}]: {syn['kept']}/"
                  f"{syn['prompts']} kept (rejected: {rejected}); {syn['generated']} generated at "
                  f"{syn['tokens_per_second']} tok/s, {syn['resumed']} from the request log")
    for name, h in out.get("human", {}).items():
        pairs = f", {h['pairs']} preference pairs" if h["kind"] == "preference" else ""
        print(f"  human/{name} [{h['kind']}]: {h['records']} conversations{pairs} from {h['lines']} lines "
              f"({h['bad_lines']} quarantined)")
    for phase, m in out["data_mix"].items():
        named = ", ".join(f"{k} {v['tokens_selected']}" for k, v in m["summary"]["sources"].items())
        print(f"  mix [{phase}] tokens by source : {named}")
    for phase, p in out["packed_dataset"].items():
        srcs = ", ".join(f"{k} {v['real_tokens']}" for k, v in p["train"].items())
        print(f"  packed [{phase}]{' ' * max(0, 19 - len(phase))}: {p['train_tokens']} tokens at length "
              f"{p['sequence_length']} ({srcs}); utilization {p['utilization']:.2%}")
    for run, ck in cks.items():
        st = ck["stats"]
        up = out.get("upcycled", {}).get(run)
        extra = (f"; upcycled to {up['info']['experts']} experts (logits vs dense differ by "
                 f"{up['info'].get('max_logit_diff_vs_dense', float('nan')):.1e})" if up else "")
        print(f"  checkpoint/{run:<9s}: {' → '.join(ck['lineage']['chain'])}; {st['parameters']} params, "
              f"{st['iterations']} steps, loss {st['first_loss']} -> {st['final_loss']}, "
              f"{st['tokens_per_second']:.0f} tok/s{extra}")
        r = ck["lineage"].get("rollup")
        if r:
            print(f"    along its chain: {r['tokens']} tokens, {r['synthetic_tokens']} synthetic "
                  f"({r['synthetic_share']:.1%}); GPU-hours {ck.get('chain_gpu_hours')}")
    for run, ev in sorted(evs.items(), key=lambda kv: list(cks).index(kv[0])):
        ppls = ", ".join(f"{phase}/{lang} {v['perplexity']}" for phase, langs in ev["perplexity"].items()
                         for lang, v in langs.items())
        print(f"  held-out perplexity [{run}]: {ppls}")
    for run in cks:
        t, j = out["eval_tasks"][run]["overall"], out["eval_judge"][run]
        c = sum(v["contaminated"] for v in out["contamination"][run]["eval_sets"].values())
        print(f"  evals [{run}]: tasks {t['score']:.2f} (format compliance {t['format_compliance']:.2f}, lenient "
              f"{t['lenient_score']:.2f}); judge {j['mean_score']} on {j['graded']}/{j['graded'] + j['ungraded']}"
              f" graded ({j['parse_failures']} unparsed after {j['retries']} re-asks, {j['forced']} forced; turn 1 "
              f"{j['per_turn'].get('1')}, turn 2 {j['per_turn'].get('2')}); contaminated eval items {c}")
    board = ", ".join(f"{r['model']} {r['elo']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}]"
                      for r in out["arena"]["leaderboard"])
    print(f"  arena (Bradley–Terry Elo, {out['arena']['judge_votes']} judge votes, {out['arena']['forced_votes']} "
          f"forced, {out['arena']['ties']} ties): {board}")
    rho = [f"{c['metric_a']}~{c['metric_b']} {'n/a' if c['spearman'] is None else c['spearman']}"
           for c in out["eval_leaderboard"]["correlations"]
           if c["metric_a"] == "elo" and not c["metric_b"].startswith("ppl_")]
    print(f"  which metric to trust (Spearman ρ over {len(out['eval_leaderboard']['rows'])} models): {', '.join(rho)}")
    from kura.train.trials import mean_perplexity

    for r in out.get("trial_leaderboard", {}).get("rows", []):
        a = out["adapter"][r["trial"]]
        d = a["data"]
        data = (f"{d['sft_examples']} conversations + {d['replay_examples']} replay docs" if "sft_examples" in d
                else f"{d['pairs']} preference pairs")
        extra = f", reward accuracy {a['reward_accuracy']}" if "reward_accuracy" in a else ""
        curve = " -> ".join(str(x) for x in a.get("epoch_losses") or [a["first_loss"], a["final_loss"]])
        print(f"  trial #{r['rank']} {r['trial']:<12s}: {r['method']} on {a['base_run']} ({data}); loss by epoch "
              f"{curve}{extra}; tasks {r['task_score']:.2f}, compliance "
              f"{r['format_compliance']:.2f}, judge {r['judge_score']}, held-out ppl {mean_perplexity(r):.3f}; "
              f"merged vs adapter logits "
              f"{out['merged_model'][r['trial']]['max_logit_diff_vs_adapter']:.1e}")
    left = [f"mix phase {ph}: {src} ({why})" for ph, m in out["data_mix"].items()
            for src, why in m["summary"].get("left_out", {}).items()] + out.get("left_out", [])
    if left:
        print("\n  Left out, the chain went on without them (see each line's reason):")
        for line in left:
            print(f"    - {line}")
    last = list(cks)[-1]
    print(f"\n  checkpoint : {cks[last]['uri']}")
    print(f"  HF export  : {out['hf_model'][last]['uri']}  (AutoModelForCausalLM / vLLM)")
    print(f"  eval       : {evs[last]['uri']}/perplexity.json")
    print(f"  leaderboard: {out['eval_leaderboard']['uri']}/leaderboard.json")
    print(f"  mix report : {out['mix_report']['uri']}/mix_report.png")
    print(f"  storage    : {defs.resources['storage'].root}")
    print(f"\nWhole DAG in {secs:.0f} s. Open the lineage in the Dagster UI:  make ui   → http://127.0.0.1:3000")
    if args.json:
        ppl = {r: e["perplexity"] for r, e in evs.items()}
        Path(args.json).write_text(json.dumps({"seconds": secs, "perplexity": ppl}, indent=1))
    return 0


def ui(args) -> int:
    prepare_env(Path(args.home), args.corpus)
    cmd = [os.path.join(os.path.dirname(sys.executable), "dagster"), "dev", "-m", "pipelines.definitions",
           "-h", "127.0.0.1", "-p", str(args.port)]
    print("starting:", " ".join(cmd), f"(DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
    os.execv(cmd[0], cmd)
    return 0


def freeze_cmd(args) -> int:
    """Copy the latest committed output of an asset into a DVC-tracked folder (see dvc.yaml)."""
    prepare_env(Path(args.home))
    from kura.io.freeze import freeze
    from pipelines.definitions import build_resources
    from pipelines.settings import Settings

    storage = build_resources(Settings.from_env())["storage"].get()
    rel = LAYOUT.manifest(args.asset.split("/"))
    if not storage.exists(rel):
        print(f"kura freeze: {args.asset!r} has no materialization in {os.environ['KURA_HOME']}: run `make demo` "
              f"first (or materialize {args.asset} in `make ui`), then freeze it.", file=sys.stderr)
        return 2
    pointer = storage.read_json(rel)
    m = freeze(storage, pointer["dir"], args.out)
    print(f"froze {args.asset} version {m['version']} ({len(m['files'])} files) into {args.out}")
    return 0


def k8s_cmd(args) -> int:
    """Render the GPU job templates (validated against the Kubernetes schemas) as YAML into a folder."""
    import yaml

    from kura.k8s.manifests import (VllmJobConfig, validate,
                                    vllm_generation_job)

    from kura.k8s.helm import DeploySettings, helm_values
    from resources.posttrainer import PostTrainerResource

    values = Path(args.values)
    values.parent.mkdir(parents=True, exist_ok=True)
    values.write_text("# Rendered by `python -m pipelines.cli k8s` from kura/k8s/helm.py (DeploySettings); edit the "
                      "settings\n# there, not this file (tests/test_deploy.py fails when they drift).\n"
                      "#   helm upgrade --install kura dagster/dagster -n kura -f k8s/values.yaml\n"
                      + yaml.safe_dump(helm_values(DeploySettings()), sort_keys=False))
    print(f"wrote {values}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {"vllm-generation-job.yaml": [vllm_generation_job("kura-synthetic-example", VllmJobConfig(),
                                                             f"{PREVIEW_STORAGE_ROOT}/requests/example.json",
                                                             f"{PREVIEW_STORAGE_ROOT}/results/example.json")],
            "posttrain-trial-job.yaml": [PostTrainerResource(backend="kubernetes").job_object(
                "kura-trial-example", f"{PREVIEW_STORAGE_ROOT}/{LAYOUT.posttrain('example')}/job.json",
                f"{PREVIEW_STORAGE_ROOT}/{LAYOUT.posttrain('example')}/result.json")],
            **pretraining_jobs()}
    for name, objs in docs.items():
        for o in objs:
            validate(o)
        (out / name).write_text(yaml.safe_dump_all(objs, sort_keys=False))
        print(f"wrote {out / name} ({len(objs)} objects, schema-valid)")
    return 0


PREVIEW_STORAGE_ROOT = "s3://kura-artifacts"


def pretraining_jobs() -> dict[str, list[dict]]:
    """One [Service, Indexed Job] per run spec in pipelines/runs (KURA_RUNS_DIR), from the same specs the local
    trainer uses; the blend names the phase's sources with the mix's weights."""
    from kura.mix.spec import load_mix
    from kura.pack.megatron import safe_name
    from kura.train.spec import load_run_specs
    from kura.tokenize.spm import TokenizerConfig
    from pipelines.settings import Settings
    from resources.trainer import TrainerResource

    s = Settings.from_env()
    # A preview must not embed this machine's storage folder: with a local storage root (the demo's), the Jobs
    # point at the example bucket the other rendered templates use; with an s3:// root, at that root.
    root = s.storage_root.rstrip("/") if s.storage_root.startswith("s3://") else PREVIEW_STORAGE_ROOT
    mix = load_mix(s.mix_file)
    phases = {p.name: p for p in mix.phases}
    trainer = TrainerResource(backend="kubernetes", namespace=s.k8s_namespace, image=s.image_megatron,
                              gpu_pool=s.gpu_pool)
    out = {}
    for spec in load_run_specs(s.runs_dir, list(phases)):
        ph = phases[spec.phase]
        blend = [x for src in ph.sources for x in (str(src.weight or 1.0), f"train_{safe_name(src.source)}")]
        # the export URI's last part is the checkpoint asset's input version at run time
        out[f"pretrain-{spec.name}.yaml"] = trainer.job_objects(
            spec, seq_length=ph.sequence_length, blend=blend, parent=spec.init_from,
            dataset_dvc_path=LAYOUT.frozen(f"packed_dataset/{spec.phase}"),
            export_uri=f"{root}/{LAYOUT.cluster_weights(spec.name, 'INPUT_VERSION')}",
            vocab_size=TokenizerConfig().vocab_size)
    return out


SECRETS = {"kura-s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "kura-model-store": ("HF_TOKEN",)}


def k8s_secrets_cmd(args) -> int:
    """Print the Secrets (values from this process's environment) for `kubectl apply -f -`; nothing is written."""
    import yaml

    from kura.k8s.manifests import secret, validate

    missing = [v for keys in SECRETS.values() for v in keys if v not in os.environ]
    if missing:
        print(f"set {', '.join(missing)} in the environment first", file=sys.stderr)
        return 2
    objs = [secret(name, args.namespace, {k: os.environ[k] for k in keys}) for name, keys in SECRETS.items()]
    for o in objs:
        validate(o)
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0


def versions_cmd(args) -> int:
    """What each asset's derived code version covers: project modules (with the definitions reached in each),
    third-party packages and the hash (kura.io.codeversion). `--json` prints it machine-readably."""
    import json

    import pipelines.definitions  # noqa: F401 - loading the definitions derives every asset's code version
    from assets._common import CODE_VERSIONS

    keys = sorted(CODE_VERSIONS)
    if args.asset:
        keys = [k for k in keys if k == args.asset or k.startswith(args.asset.rstrip("/") + "/")]
        if not keys:
            print(f"kura versions: no asset {args.asset!r}; assets are: {', '.join(sorted(CODE_VERSIONS))}",
                  file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({k: {**CODE_VERSIONS[k].describe(), "names": CODE_VERSIONS[k].names} for k in keys},
                         indent=1, sort_keys=True))
        return 0
    for k in keys:
        cv = CODE_VERSIONS[k]
        print(f"{k}  code version {cv.hash}")
        for mod, h in cv.modules.items():
            names = cv.names[mod]
            shown = ", ".join(names[:8]) + (f", … (+{len(names) - 8})" if len(names) > 8 else "")
            print(f"  {mod:<28} {h}  {shown}")
        if cv.packages:
            print("  packages: " + ", ".join(f"{n}=={v}" for n, v in cv.packages.items()))
        if cv.extra:
            print(f"  + definition spec ({len(cv.extra)} characters)")
    return 0


def drops_cmd(args) -> int:
    """Print what the rules dropped in the latest `cleaned` partitions: counts per reason and samples to read."""
    import pyarrow.parquet as pq

    from kura.text.drops import format_review, review_drops
    from kura.text.rules import FAMILIES, RULES
    from pipelines.definitions import build_resources
    from pipelines.settings import Settings

    quiet_warnings()
    if args.rule and not (args.rule in RULES or args.rule.startswith(FAMILIES) or args.rule.startswith("lang_")):
        print(f"kura drops: no rule {args.rule!r}; rules are {', '.join(sorted(RULES))} (or a family prefix such "
              f"as ja_)", file=sys.stderr)
        return 2
    prepare_env(Path(args.home))
    storage = build_resources(Settings.from_env())["storage"].get()
    folder = LAYOUT.manifests("cleaned")
    manifests = [f for f in storage.list_files(folder) if f.endswith(".json")] if storage.exists(folder) else []
    if not manifests:
        print(f"kura drops: no cleaned partition in {os.environ['KURA_HOME']}: run `make demo` (or ingest a corpus "
              f"in `make ui`) first.", file=sys.stderr)
        return 2

    def shards():
        for rel in manifests:
            m = storage.read_json(rel)
            table = pq.read_table(storage.local_dir(m["dir"]) / "quarantine.parquet",
                                  columns=["doc_id", "source", "reason", "text"])
            yield Path(rel).stem, table.to_pylist()

    review = review_drops(shards(), args.rule, args.sample, args.seed)
    print(format_review(review, args.width))
    return 0


def arena_contestants(spec, storage, workdir: Path, stack) -> list:
    """Contestants ready to answer: kura models are served by vLLM from their latest export (the chat API, with the
    arena's chat template rendered as a Jinja template), external ones are used where they are."""
    import dagster as dg

    from kura.arena.contestants import Contestant
    from kura.pack.chat import jinja_template
    from kura.synth.vllm_server import serve
    from resources.io_manager import latest_manifest

    template = workdir / "chat_template.jinja"
    template.write_text(jinja_template(spec.chat_template), encoding="utf-8")
    out = []
    for c in spec.contestants:
        if c.base_url:
            out.append(Contestant(c, c.base_url, spec.chat_template))
            continue
        # an asset key (hf_model/<run>) or a partition of one (merged_model/<trial>)
        head, _, part = c.serve.rpartition("/")
        m = latest_manifest(storage, dg.AssetKey(c.serve.split("/"))) or (
            latest_manifest(storage, dg.AssetKey(head.split("/")), part) if head else None)
        if m is None:
            raise SystemExit(f"kura arena: contestant {c.name!r} serves {c.serve!r}, which has no materialization "
                             f"here: run `make demo` (or materialize it in `make ui`) first, or remove it from "
                             f"the arena spec")
        model_dir = storage.local_dir(m["dir"])
        ctx = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
        print(f"  serving {c.name} ({c.serve} version {m['version']}) with vLLM …", flush=True)
        url, _ = stack.enter_context(serve(str(model_dir), c.model or c.name, workdir / f"{c.name}.log", ctx,
                                           template))
        out.append(Contestant(c.model_copy(update={"version": m["version"], "api": "chat",
                                                   "max_tokens": min(c.max_tokens, ctx // 2)}), url,
                              spec.chat_template))
    return out


def arena_cmd(args) -> int:
    """Serve the arena web app on 127.0.0.1 (kura models through vLLM); votes go to the arena store."""
    import contextlib

    import uvicorn

    from kura.arena.app import create_app
    from kura.arena.contestants import load_spec
    from kura.eval.judge import load_questions
    from pipelines.definitions import build_resources
    from pipelines.settings import Settings

    prepare_env(Path(args.home))
    spec_path = Path(args.spec)
    try:
        spec = load_spec(spec_path)
    except ValueError as e:
        print(f"kura arena: {e}", file=sys.stderr)
        return 2
    prompts = None
    if spec.prompts:
        qfile = (spec_path.parent / spec.prompts).resolve()
        prompts = [{"prompt": q.turns[0], "category": q.category}
                   for q in load_questions(qfile.read_text(encoding="utf-8"), str(qfile))]
    res = build_resources(Settings.from_env())
    admin = os.environ.get("KURA_ARENA_ADMIN_TOKEN", "")
    if not admin:
        import secrets

        admin = secrets.token_urlsafe(24)
        print(f"  no KURA_ARENA_ADMIN_TOKEN set; this session's admin token: {admin}")
    workdir = Path(os.environ["KURA_HOME"]) / "arena"
    workdir.mkdir(parents=True, exist_ok=True)
    # SIGTERM (also the one uvicorn re-raises after its shutdown) as SystemExit: the vLLM servers are stopped too
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        contestants = arena_contestants(spec, res["storage"].get(), workdir, stack)
        app = create_app(res["arena_store"].get(), contestants, admin, prompts, spec.battles_per_minute,
                         spec.max_prompt_chars, spec.max_turns)
        print(f"kura arena: http://{args.host}:{args.port}  ({len(contestants)} contestants; create rater tokens "
              f"with  curl -X POST -H 'Authorization: Bearer <admin token>' -H 'Content-Type: application/json' "
              f"-d '{{\"name\": \"…\"}}' http://{args.host}:{args.port}/admin/raters)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def arena_pairs_cmd(args) -> int:
    """Export the arena's decided votes as DPO preference pairs (JSONL: prompt, history, chosen, rejected)."""
    from kura.arena.store import preference_pairs
    from pipelines.definitions import build_resources
    from pipelines.settings import Settings

    prepare_env(Path(args.home))
    pairs = preference_pairs(build_resources(Settings.from_env())["arena_store"].get().votes())
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{len(pairs)} preference pairs from the arena's votes written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kura", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("demo", "ui"):
        sp = sub.add_parser(name)
        sp.add_argument("--home", default=os.environ.get("KURA_HOME", ".kura"),
                        help="state folder: storage, Dagster instance, caches (default .kura)")
        sp.add_argument("--corpus", default=os.environ.get("KURA_CORPUS_DIR"),
                        help="folder of .jsonl/.jsonl.gz/.parquet/.txt/.html files (default: generated corpus)")
    d = sub.choices["demo"]
    d.add_argument("--day", help="synthetic partition to generate (default: the latest complete day)")
    d.add_argument("--json", help="also write a summary JSON here")
    sub.choices["ui"].add_argument("--port", type=int, default=3000)
    f = sub.add_parser("freeze", help="copy an asset's latest output into a folder for `dvc add`/`dvc push`")
    f.add_argument("asset")
    f.add_argument("--out", required=True)
    f.add_argument("--home", default=os.environ.get("KURA_HOME", ".kura"))
    k = sub.add_parser("k8s", help="render the GPU Job templates (vLLM generation, Megatron Indexed Job) as YAML")
    k.add_argument("--out", default="k8s/rendered")
    k.add_argument("--values", default="k8s/values.yaml", help="where the Helm values are written")
    ks = sub.add_parser("k8s-secrets", help="print the S3 and model-store Secrets from the environment "
                                            "(pipe into kubectl apply -f -)")
    ks.add_argument("--namespace", default="kura")
    v = sub.add_parser("versions", help="what an asset's derived code version covers (modules, packages, hash)")
    v.add_argument("asset", nargs="?", help="asset key, e.g. synthetic/qa_web or checkpoint/dense_1 (default: all)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    a = sub.add_parser("arena", help="serve the human arena web app (kura models through vLLM) on 127.0.0.1")
    a.add_argument("--home", default=os.environ.get("KURA_HOME", ".kura"))
    a.add_argument("--spec", default=str(Path(__file__).parent / "arena" / "arena.yaml"))
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8765)
    ap = sub.add_parser("arena-pairs", help="export the arena's decided votes as DPO preference pairs (JSONL)")
    ap.add_argument("--home", default=os.environ.get("KURA_HOME", ".kura"))
    ap.add_argument("--out", required=True)
    dr = sub.add_parser("drops", help="samples of the documents each cleaning rule dropped, per reason")
    dr.add_argument("--home", default=os.environ.get("KURA_HOME", ".kura"))
    dr.add_argument("--rule", help="a rule/reason (ja_no_sentences) or a family prefix (ja_); default: all")
    dr.add_argument("--sample", type=int, default=20, help="documents shown per reason")
    dr.add_argument("--width", type=int, default=400, help="characters shown per document")
    dr.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    commands = {"arena": arena_cmd, "arena-pairs": arena_pairs_cmd, "demo": demo, "drops": drops_cmd, "ui": ui,
                "freeze": freeze_cmd, "k8s": k8s_cmd, "k8s-secrets": k8s_secrets_cmd, "versions": versions_cmd}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
