"""The code location: `dagster dev -m pipelines.definitions`.

Graph: raw_corpus[file] → cleaned[file] (+GX check) → deduplicated → teacher/<t> (pipelines/teachers/*.yaml) →
synthetic/<dataset>[day] (pipelines/synthetic/*.yaml) → tokenizer → data_mix/<phase> (YAML) → packed_dataset/<phase>
(+read-back check) → checkpoint/<run> chain from pipelines/runs/*.yaml (dense_1 → dense_2 → upcycled/moe_1 → moe_1)
→ hf_model/<run> → eval_perplexity/<run>, eval_tasks/<run>, eval_judge/<run> (judge: teacher/<KURA_JUDGE_TEACHER>
or KURA_JUDGE_URL), contamination/<run> → arena → eval_leaderboard; mix_report beside them.
The resource set is chosen by KURA_ENV: `local` (folder storage, local vLLM engine, in-process steps) or `cluster`
(S3 storage and input, vLLM GPU Jobs for generation, every step in its own pod through k8s_job_executor).
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from assets.arena_votes import arena_votes, arena_votes_sensor
from assets.corpus import cleaned, corpus_partitions, corpus_snapshot, deduplicated, raw_corpus
from assets.frozen import frozen_dataset
from assets.models_in_use import resource_observations
from assets.bases import build_base_model
from assets.human import build_human_dataset
from assets.mix import build_mix_assets, load_mix_spec, tokenizer_key
from assets.quality import quality_classifier, quality_examples, reference_lm
from assets.synthetic import build_synthetic_assets, daily_partitions
from assets.tokenizer import build_tokenizer
from assets.evaluation import build_evaluation_assets
from assets.posttrain import build_post_training_assets
from assets.pretrain import build_pretraining_assets
from pipelines.settings import Settings
from kura.human import load_human
from kura.train.import_hf import load_bases
from kura.synth.spec import SpecError, check_runs, load_datasets, load_teachers
from kura.train.spec import load_run_specs
from kura.train.trials import check_trial_data, load_post_training
from kura.io.layout import LAYOUT
from resources import ArenaStoreResource, CorpusResource, GeneratorResource, ManifestIOManager, StorageResource
from resources.posttrainer import PostTrainerResource
from resources.trainer import TrainerResource

INGEST = ["raw_corpus", "cleaned"]
CURATE = dg.AssetSelection.assets("deduplicated", "quality_examples", "quality_classifier", "reference_lm") | \
    dg.AssetSelection.key_prefixes(["teacher"], ["human"])
SYNTH = dg.AssetSelection.key_prefixes(["synthetic"])
MODEL = dg.AssetSelection.assets("tokenizer", "mix_report") | \
    dg.AssetSelection.key_prefixes(["base_model"], ["data_mix"], ["packed_dataset"], ["checkpoint"], ["upcycled"],
                                   ["hf_model"],
                                   ["eval_perplexity"], ["eval_tasks"], ["eval_judge"], ["contamination"]) | \
    dg.AssetSelection.assets("arena", "eval_leaderboard")
POST = ["adapter", "merged_model", "trial_eval"]
POST_SUMMARY = dg.AssetSelection.assets("trial_leaderboard") | dg.AssetSelection.key_prefixes(["model_merge"])


def s3_credentials(s: Settings) -> dict:
    """Endpoint and credentials for S3 resources: the secrets are read from the environment at run time."""
    return {"endpoint_url": s.s3_endpoint, "access_key_id": dg.EnvVar("AWS_ACCESS_KEY_ID"),
            "secret_access_key": dg.EnvVar("AWS_SECRET_ACCESS_KEY")}


def build_resources(s: Settings) -> dict:
    """KURA_ENV=local: folder (or S3) storage, the local vLLM engine. KURA_ENV=cluster: S3 storage and input,
    vLLM GPU Jobs on Kubernetes for generation (the steps themselves run as pods via k8s_job_executor)."""
    if s.env == "cluster" and not s.storage_root.startswith("s3://"):
        raise ValueError(f"KURA_ENV=cluster needs KURA_STORAGE_ROOT=s3://bucket/prefix (pods share no disk); "
                         f"got {s.storage_root!r}")
    if s.s3_endpoint or s.storage_root.startswith("s3://"):
        storage = StorageResource(root=s.storage_root, cache_dir=str(s.home / "cache"), **s3_credentials(s))
    else:
        storage = StorageResource(root=s.storage_root, cache_dir=str(s.home / "cache"))
    return {
        "storage": storage,
        "io_manager": ManifestIOManager(storage=storage),
        "corpus": CorpusResource(path=s.corpus_dir, default_dir=str(s.home / "default_corpus"),
                                 n_docs=s.default_corpus_docs, cache_dir=str(s.home / "cache"),
                                 **(s3_credentials(s) if s.corpus_dir.startswith("s3://") else {})),
        "generator": GeneratorResource(backend="kubernetes", namespace=s.k8s_namespace, image=s.image_vllm,
                                       gpu_pool=s.gpu_pool, s3_endpoint=s.s3_endpoint or "")
        if s.env == "cluster" else GeneratorResource(backend="openai", base_url=s.teacher_url,
                                                     served_model=s.teacher_served_model,
                                                     api_key=dg.EnvVar("KURA_TEACHER_API_KEY"))
        if s.teacher_url else GeneratorResource(backend="auto"),
        "trainer": TrainerResource(backend="kubernetes", namespace=s.k8s_namespace, image=s.image_megatron,
                                   gpu_pool=s.gpu_pool, pipes_bucket=s.pipes_bucket, s3_endpoint=s.s3_endpoint or "")
        if s.env == "cluster" else TrainerResource(backend="local"),
        # evaluation: candidates are generated from each run's HF export; the judge is teacher/<judge_teacher>
        # locally, or any OpenAI-compatible endpoint (KURA_JUDGE_URL, a vLLM server) when one is configured
        "candidates": GeneratorResource(backend="kubernetes", namespace=s.k8s_namespace, image=s.image_vllm,
                                        gpu_pool=s.gpu_pool, s3_endpoint=s.s3_endpoint or "")
        if s.env == "cluster" else GeneratorResource(backend="transformers"),
        "post_trainer": PostTrainerResource(backend="kubernetes", namespace=s.k8s_namespace,
                                            image=s.image_megatron, gpu_pool=s.gpu_pool,
                                            s3_endpoint=s.s3_endpoint or "")
        if s.env == "cluster" else PostTrainerResource(backend="local"),
        "arena_store": ArenaStoreResource(url=dg.EnvVar("KURA_ARENA_DB") if os.environ.get("KURA_ARENA_DB")
                                          else s.arena_db),
        "judge": GeneratorResource(backend="openai", base_url=s.judge_url, served_model=s.judge_model,
                                   api=s.judge_api, api_key=dg.EnvVar("KURA_JUDGE_API_KEY"))
        if s.judge_url else GeneratorResource(backend="transformers"),
    }


ingest_job = dg.define_asset_job("ingest_job", selection=INGEST, partitions_def=corpus_partitions,
                                 description="Read and clean one corpus file (one partition).")
corpus_snapshot_job = dg.define_asset_job("corpus_snapshot_job", selection=["corpus_snapshot"],
                                         description="Observe the cleaned shards' versions (one summary version).")
# include_sources: without it a key-prefix selection leaves observable sources out and the job observes nothing
observe_models_job = dg.define_asset_job("observe_models_job",
                                         selection=dg.AssetSelection.key_prefixes(["resource"], include_sources=True),
                                         description="Observe which models the generator and judge resources reach.")
curate_job = dg.define_asset_job("curate_job", selection=CURATE,
                                 description="Dedup across shards; train the teacher, the quality classifier and the "
                                            "reference LM.")
synthetic_job = dg.define_asset_job("synthetic_job", selection=SYNTH, partitions_def=daily_partitions,
                                    description="Generate one day of every synthetic dataset.")
model_job = dg.define_asset_job("model_job", selection=MODEL,
                                description="Tokenizer, mix, packing, the pretraining chain, export and evaluation.")

synthetic_nightly = dg.build_schedule_from_partitioned_job(synthetic_job, hour_of_day=2, minute_of_hour=0,
                                                           name="synthetic_nightly")


IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def _recorded_fingerprint(instance, key: str) -> str | None:
    """The input fingerprint the latest `raw_corpus` materialization of partition `key` recorded (None: unknown,
    e.g. materialized before fingerprints were recorded)."""
    flt = dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_corpus"), asset_partitions=[key])
    recs = instance.fetch_materializations(flt, limit=1).records
    md = recs[0].asset_materialization.metadata if recs and recs[0].asset_materialization else {}
    return md["source_fingerprint"].value if "source_fingerprint" in md else None


def _sensor_state(cursor: str | None) -> dict:
    """The cursor: {"seen": {file: fingerprint it was last requested or found ingested with}}. An older integer
    cursor (a position in the partition order) starts an empty ledger; already ingested files are then
    recognised from their recorded fingerprints instead of being ingested again."""
    import json

    try:
        state = json.loads(cursor) if cursor else {}
    except ValueError:
        state = {}
    return state if isinstance(state, dict) and isinstance(state.get("seen"), dict) else {"seen": {}}


@dg.sensor(jobs=[ingest_job], minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def corpus_files_sensor(context: dg.SensorEvaluationContext, corpus: CorpusResource) -> dg.SensorResult:
    """Keeps the `corpus_files` partitions equal to the files in the corpus folder, and each ingested partition
    equal to its file's current bytes:
    - a new file gets a partition at once and an ingest run;
    - a changed file (same name, another size/mtime or ETag than when it was ingested) is ingested again, so its
      new content version flows downstream; run keys carry the fingerprint, so one change is one run;
    - a deleted file's partition is removed (reported in the tick's log); the next `corpus_snapshot` observation
      then differs, which makes `deduplicated` stale and the automation sensor rebuilds it (once) without the
      file's documents; the rebuild counts the removed shards and documents.
    Ingest runs are requested with backpressure: at most `corpus.max_runs_in_flight` queued or running, so a crawl
    of 100,000 files is ingested over many ticks (benchmarks/partitions.py). At most `LOOKUPS_PER_TICK` already
    ingested files of unknown fingerprint are checked against their recorded one per tick."""
    import json

    state = _sensor_state(context.cursor)
    seen: dict[str, str] = state["seen"]
    fps = corpus.fingerprints()
    existing = context.instance.get_dynamic_partitions(corpus_partitions.name)
    known = set(existing)
    new = [k for k in fps if k not in known]
    gone = sorted(k for k in known if k not in fps)
    in_flight = context.instance.get_runs_count(dg.RunsFilter(job_name=ingest_job.name, statuses=IN_FLIGHT))
    room = max(0, corpus.max_runs_in_flight - in_flight)
    unseen = [k for k in fps if k not in seen]
    done = context.instance.get_materialized_partitions(dg.AssetKey("raw_corpus")) if unseen else set()
    requests: list[dg.RunRequest] = []
    changed = [k for k, fp in fps.items() if k in seen and seen[k] != fp]
    for k in changed:
        if len(requests) >= room:
            break
        context.log.info(f"corpus file {k} changed (fingerprint {seen[k]} → {fps[k]}): ingesting it again")
        requests.append(dg.RunRequest(job_name=ingest_job.name, partition_key=k, run_key=f"{k}@{fps[k]}"))
        seen[k] = fps[k]
    lookups = 0
    for k in unseen:
        if len(requests) >= room:
            break
        if k in done:
            if lookups >= LOOKUPS_PER_TICK:
                continue
            lookups += 1
            recorded = _recorded_fingerprint(context.instance, k)
            if recorded is None or recorded == fps[k]:
                seen[k] = fps[k]
                continue
            context.log.info(f"corpus file {k} differs from when it was ingested: ingesting it again")
            requests.append(dg.RunRequest(job_name=ingest_job.name, partition_key=k, run_key=f"{k}@{fps[k]}"))
        else:
            requests.append(dg.RunRequest(job_name=ingest_job.name, partition_key=k, run_key=k))
        seen[k] = fps[k]
    partition_requests = []
    if new:
        partition_requests.append(corpus_partitions.build_add_request(new))
    if gone:
        context.log.warning(f"{len(gone)} corpus file(s) were deleted ({', '.join(gone[:5])}"
                            f"{', …' if len(gone) > 5 else ''}): their partitions are removed; deduplicated is "
                            f"stale from the next corpus snapshot and is rebuilt without their documents")
        partition_requests.append(corpus_partitions.build_delete_request(gone))
        for k in gone:
            seen.pop(k, None)
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests,
                           cursor=json.dumps({"seen": seen}, separators=(",", ":")))


LOOKUPS_PER_TICK = 1000


REPO_ROOT = Path(__file__).resolve().parents[1]


def frozen_sources(repo: Path = REPO_ROOT) -> list[dg.AssetsDefinition]:
    """One observable source per folder that dvc.yaml freezes under data/frozen/ (data version = DVC md5)."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text()) if (repo / "dvc.yaml").exists() else {}
    outs = [o for st in (spec.get("stages") or {}).values() for o in st.get("outs", [])
            if isinstance(o, str) and o.startswith(LAYOUT.FROZEN + "/")]
    return [frozen_dataset(o.rsplit("/", 1)[-1], o, str(repo)) for o in outs]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    s = settings or Settings.from_env()
    teachers = load_teachers(s.teachers_dir)
    datasets = load_datasets(s.synthetic_dir, teachers)
    humans = load_human(s.human_dir, REPO_ROOT)
    bases = load_bases(s.bases_dir, REPO_ROOT)
    mix = load_mix_spec(s.mix_file, datasets, humans, set(bases))
    phases = [p.name for p in mix.phases]
    runs = load_run_specs(s.runs_dir, phases, {n: b.model_spec(REPO_ROOT) for n, b in bases.items()})
    check_runs(teachers, {r.name for r in runs})  # kura_run teachers, now that the runs are known
    judge = teachers.get(s.judge_teacher)
    if judge is None or judge.kind == "endpoint":
        raise SpecError(f"KURA_JUDGE_TEACHER={s.judge_teacher!r}: the local judge must be a teacher spec in "
                        f"{s.teachers_dir} with a local model (trained, hf_folder or kura_run); teachers: "
                        f"{', '.join(f'{t.name} ({t.kind})' for t in teachers.values()) or 'none'}")
    trials, merges = load_post_training(s.post_training_dir, [r.name for r in runs])
    check_trial_data(trials, datasets, humans)
    builds_pairs = any(t.method == "dpo" and t.preferences == "preference_pairs" for t in trials.values())
    templates = {k: v.model_dump() for k, v in mix.chat_templates.items()}
    trial_parts = dg.StaticPartitionsDefinition(sorted(trials)) if trials else None
    post_jobs = [
        dg.define_asset_job("post_training_job", selection=POST, partitions_def=trial_parts,
                            description="One post-training trial (adapter → merged_model → trial_eval); a backfill "
                                        "over the trial partitions runs the missing ones."),
        dg.define_asset_job("post_training_summary_job", selection=POST_SUMMARY,
                            description="Trial leaderboard and model merges, once the trials exist."),
        *([dg.define_asset_job("preference_data_job", selection=["preference_pairs"],
                               description="DPO preference pairs (teacher answer vs base model sample).")]
          if builds_pairs else []),
    ] if trials else []
    return dg.Definitions(
        assets=[raw_corpus, cleaned, corpus_snapshot, deduplicated, quality_examples, quality_classifier,
                reference_lm,
                *build_synthetic_assets(teachers, datasets),
                *(build_human_dataset(h, REPO_ROOT) for h in humans.values()),
                build_tokenizer(datasets),
                *build_mix_assets(s.mix_file, mix, datasets),
                *(build_base_model(b, REPO_ROOT) for b in bases.values()),
                *build_pretraining_assets(runs, phases, {p.name: tokenizer_key(p.tokenizer) for p in mix.phases}),
                *build_evaluation_assets(runs, phases, templates, s.judge_teacher),
                *build_post_training_assets(trials, merges, phases, templates, trial_parts, datasets,
                                            s.judge_teacher),
                *frozen_sources(), *resource_observations, arena_votes],
        jobs=[ingest_job, corpus_snapshot_job, observe_models_job, curate_job, synthetic_job, model_job, *post_jobs],
        executor=k8s_job_executor if s.env == "cluster" else None,
        schedules=[synthetic_nightly],
        sensors=[corpus_files_sensor, arena_votes_sensor,
                 dg.AutomationConditionSensorDefinition("kura_automation", target=dg.AssetSelection.all(),
                                                        default_status=dg.DefaultSensorStatus.RUNNING)],
        resources=build_resources(s),
    )


defs = build_definitions()
