"""Teachers and synthetic datasets, one asset per spec: `teacher/<name>` from `pipelines/teachers/*.yaml` (the
demo's tiny teacher trained here, a local Hugging Face folder, an OpenAI-compatible endpoint, or a kura run's export)
and `synthetic/<name>[day]` from `pipelines/synthetic/*.yaml` (a recipe kind with its parameters, a teacher,
sampling, a daily budget). Each dataset's code version is its spec's text, so editing one dataset regenerates only
it and what reads it; the teacher's version (content hash or endpoint identity) is in every shard's version."""

import json
import shutil
from pathlib import Path

import dagster as dg

import kura.synth.checks as checks
import kura.synth.shard as shard
import kura.synth.teacher as teacher_mod
from assets._common import kura_asset, output, read_parquet, run_versioned, write_json, write_parquet
from assets.automation import ON_EDIT_OR_EAGER, regenerate_for_new_teacher
from kura.io.hashing import hash_dir
from kura.io.layout import LAYOUT
from kura.synth.generators import served_model_identity
from kura.synth.recipes import QADialogueRecipe
from kura.synth.requestlog import RequestLog
from kura.synth.spec import DatasetSpec, TeacherSpec, endpoint_generator, endpoint_settings
from resources import GeneratorResource, StorageResource

daily_partitions = dg.DailyPartitionsDefinition(start_date="2026-11-01", end_offset=0)


def teacher_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["teacher", name])


def synthetic_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["synthetic", name])


def synthetic_ins(names) -> dict[str, dg.AssetIn]:
    """Inputs of a reader of synthetic datasets: every materialized day of each named dataset."""
    return {f"synthetic__{n}": dg.AssetIn(key=synthetic_key(n), partition_mapping=dg.AllPartitionMapping())
            for n in sorted(names)}


def merge_synthetic(inputs: dict) -> dict[str, dict]:
    """{"<dataset>|<day>": shard manifest} over a reader's synthetic inputs, in (dataset, day) order."""
    return {f"{k.split('__', 1)[1]}|{day}": m for k, v in sorted(inputs.items()) if k.startswith("synthetic__")
            for day, m in sorted((v or {}).items())}


def _teacher_out(spec: TeacherSpec, m: dict, reused: bool) -> dg.Output:
    return output(m, reused, kind=spec.kind, licence=spec.licence, identity=m.get("identity", {}))


def _teacher_info(spec: TeacherSpec, **extra) -> dict:
    return {"name": spec.name, "kind": spec.kind, "identity": spec.identity(), **extra}


def build_teacher(spec: TeacherSpec) -> dg.AssetsDefinition:
    """`teacher/<name>` for one teacher spec (one builder per kind)."""
    return {"trained": _trained_teacher, "hf_folder": _folder_teacher, "endpoint": _endpoint_teacher,
            "kura_run": _run_teacher}[spec.kind](spec)


def _common(spec: TeacherSpec, **kw) -> dict:
    return dict(key=teacher_key(spec.name), group_name="synthetic", code_version_extra=json.dumps(
        spec.identity(), sort_keys=True), description=f"Teacher {spec.name} ({spec.kind}, licence {spec.licence})"
        + (f": {spec.description}" if spec.description else ""), **kw)


def _trained_teacher(spec: TeacherSpec) -> dg.AssetsDefinition:
    @kura_asset(**_common(spec, automation_condition=ON_EDIT_OR_EAGER))
    def _teacher(context: dg.AssetExecutionContext, deduplicated: dict, storage: StorageResource) -> dg.Output:
        """A Llama-architecture teacher in Hugging Face format, trained on rule-based rewrites so it emits the Q/A
        format (no downloads). A cluster names a real model instead (kind hf_folder or endpoint)."""
        st = storage.get()

        def build(stage):
            docs = read_parquet(st, deduplicated, "documents.parquet", ["doc_id", "text", "lang"]).to_pylist()
            examples = shard.teacher_examples(docs, QADialogueRecipe(), spec.max_examples, spec.train.seed)
            stats = teacher_mod.train_teacher(examples, stage, spec.train)
            write_json(stage / "lineage.json", {"deduplicated": deduplicated["version"]})
            return _teacher_info(spec, stats=stats)

        m, reused = run_versioned(context, st, config=spec.identity(), upstream={"deduplicated": deduplicated},
                                  build=build)
        return _teacher_out(spec, m, reused)

    return _teacher


def _folder_teacher(spec: TeacherSpec) -> dg.AssetsDefinition:
    @kura_asset(**_common(spec, automation_condition=dg.AutomationCondition.code_version_changed()))
    def _teacher(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.Output:
        """A local Hugging Face folder, content-hashed and copied into storage (what the generator pods read)."""
        st, folder = storage.get(), spec.folder()
        content, files = hash_dir(folder)

        def build(stage):
            shutil.copytree(folder, stage, dirs_exist_ok=True)
            return _teacher_info(spec, content=content, files=len(files))

        m, reused = run_versioned(context, st, config={**spec.identity(), "content": content}, upstream={},
                                  build=build)
        return _teacher_out(spec, m, reused)

    return _teacher


def _endpoint_teacher(spec: TeacherSpec) -> dg.AssetsDefinition:
    @kura_asset(**_common(spec, automation_condition=dg.AutomationCondition.code_version_changed()))
    def _teacher(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.Output:
        """An OpenAI-compatible endpoint: its identity is the model id, revision, API and what `/v1/models` says it
        serves (an endpoint that answers nothing is refused here, before any shard is attempted)."""
        url, key = endpoint_settings(spec)
        served = served_model_identity(url, spec.model or "", key)
        ident = {**spec.identity(), "endpoint": url, "served": served}

        def build(stage):
            write_json(stage / "identity.json", ident)
            return _teacher_info(spec, identity=ident)

        m, reused = run_versioned(context, storage.get(), config=ident, upstream={}, build=build)
        return _teacher_out(spec, m, reused)

    return _teacher


def _run_teacher(spec: TeacherSpec) -> dg.AssetsDefinition:
    from assets.pretrain import hf_key

    @kura_asset(**_common(spec, ins={"hf_model": dg.AssetIn(key=hf_key(spec.run or ""))},
                          automation_condition=ON_EDIT_OR_EAGER))
    def _teacher(context: dg.AssetExecutionContext, hf_model: dict, storage: StorageResource) -> dg.Output:
        """A kura run's Hugging Face export as a teacher (e.g. the previous model writing the next one's data)."""
        st = storage.get()

        def build(stage):
            shutil.copytree(st.local_dir(hf_model["dir"]), stage, dirs_exist_ok=True)
            return _teacher_info(spec, run=spec.run)

        m, reused = run_versioned(context, st, config=spec.identity(), upstream={"hf_model": hf_model}, build=build)
        return _teacher_out(spec, m, reused)

    return _teacher


def request_log_path(st, partition: str, teacher_version: str) -> Path:
    """The durable log of finished requests of one shard. Local root: beside the outputs (survives the run);
    object store: the local cache (append needs a file system)."""
    base = Path(st.path("")) if st.is_local else st.cache_dir
    return base / LAYOUT.request_log(partition, teacher_version)


def build_dataset(spec: DatasetSpec, tspec: TeacherSpec) -> dg.AssetsDefinition:
    """`synthetic/<name>[day]` for one dataset spec. An endpoint teacher is spoken to directly (its URL and key from
    the environment), so the local generator resource is not in such a dataset's version; a local teacher runs on
    the `generator` resource (vLLM on CPU here, a GPU Job with tensor parallelism on the cluster)."""
    key = synthetic_key(spec.name)
    ins = {"deduplicated": dg.AssetIn("deduplicated"), "teacher": dg.AssetIn(key=teacher_key(tspec.name))}
    kw = dict(key=key, ins=ins, group_name="synthetic", partitions_def=daily_partitions,
              automation_condition=regenerate_for_new_teacher(teacher_key(tspec.name)),
              code_version_extra=spec.version_text(), tags={"kura/recipe": spec.recipe, "kura/teacher": tspec.name},
              description=f"Synthetic dataset {spec.name}: recipe {spec.recipe}, teacher {tspec.name}, "
                          f"{spec.prompts_per_day} prompts a day" + (f". {spec.description}" if spec.description
                                                                    else ""),
              check_specs=[dg.AssetCheckSpec("reject_rate_within_limit", asset=key, blocking=True,
                                             description="Rejected prompts (parse, validation and output checks) / "
                                                         "all prompts <= checks.max_reject_rate. Blocks downstream.")])
    if tspec.kind == "endpoint":
        @kura_asset(**kw)
        def _remote(context: dg.AssetExecutionContext, deduplicated: dict, teacher: dict, storage: StorageResource):
            yield from generate_day(context, spec, deduplicated, teacher, storage.get(),
                                    lambda st: endpoint_generator(tspec), spec.licence or tspec.licence)
        return _remote

    @kura_asset(**kw)
    def _local(context: dg.AssetExecutionContext, deduplicated: dict, teacher: dict, storage: StorageResource,
               generator: GeneratorResource):
        yield from generate_day(context, spec, deduplicated, teacher, storage.get(),
                                lambda st: generator.build_for_teacher(st, teacher["dir"], tspec, context=context),
                                spec.licence or tspec.licence)
    return _local


def generate_day(context: dg.AssetExecutionContext, spec: DatasetSpec, deduplicated: dict, teacher: dict, st,
                 make_generator, licence: str):
    """One day of a dataset: the recipe's sources (documents, seed topics, questions, generated problems) turned
    into conversations by the teacher. Completions that fail to parse, validate or pass the output checks
    (truncated, refusal, repetition, wrong language, copy of the source, near duplicate) are quarantined with the
    reason. Generation resumes from the shard's request log."""
    day = context.partition_key
    pk = f"{spec.name}|{day}"
    recipe = spec.build_recipe()
    sampling = spec.sampling

    def build(stage):
        docs = read_parquet(st, deduplicated, "documents.parquet", ["doc_id", "text", "lang"]).to_pylist()
        picked = recipe.sources(docs, spec.prompts_per_day, sampling.seed, day)
        if not picked:
            context.log.warning(f"dataset {spec.name} ({spec.recipe}): no sources for {day} (see its spec); the "
                                f"shard is empty")
        gen = make_generator(st)
        log = RequestLog(request_log_path(st, pk, teacher["version"]))
        out = shard.generate_shard(picked, recipe, gen, sampling, pk, log=log, model_id=teacher["version"],
                                   checks=spec.checks, batch_size=spec.batch_size)
        kept, bad, reasons, res = out.kept, out.rejected, out.reasons, out.generation
        write_parquet(stage / "records.parquet", kept, shard.RECORD_SCHEMA)
        write_parquet(stage / "quarantine.parquet", bad, shard.QUARANTINE_SCHEMA)
        rate = checks.reject_rate(len(picked), reasons)
        info = {"dataset": spec.name, "day": day, "recipe_kind": spec.recipe, "prompts": len(picked), "kept": len(kept),
                "rejected": len(bad), "rejected_by_reason": dict(reasons), "teacher": teacher["version"],
                "teacher_name": teacher.get("name"), "teacher_uri": teacher["uri"], "backend": res.backend,
                "recipe": recipe.name, "template_hash": recipe.template_hash(), "sampling": sampling.__dict__,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "generation_seconds": round(res.seconds, 2), "tokens_per_second": round(res.tokens_per_second, 1),
                "generated": out.generated, "resumed": out.resumed, "reject_rate": round(rate, 4),
                "gate_passed": rate <= spec.checks.max_reject_rate,
                **{f"backend_{k}": v for k, v in res.extra.items()}}
        write_json(stage / "generation.json", info)  # sidecar: the shard describes how it was made
        return info

    m, reused = run_versioned(context, st, config=json.loads(spec.version_text()),
                              upstream={"deduplicated": deduplicated, "teacher": teacher}, build=build)
    yield output(m, reused, **{k: m[k] for k in ("dataset", "prompts", "kept", "rejected", "rejected_by_reason",
                                                 "teacher", "teacher_name", "backend", "recipe", "template_hash",
                                                 "sampling", "completion_tokens", "tokens_per_second", "generated",
                                                 "resumed", "reject_rate")},
                 tags=spec.tags, licence=licence)
    rate, limit = m["reject_rate"], spec.checks.max_reject_rate
    top = ", ".join(f"{k} {v}" for k, v in sorted(m["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:3])
    why = (f"synthetic shard {spec.name}[{day}]: the teacher's outputs were rejected at {rate:.0%} "
           f"(limit {limit:.0%}; top reasons: {top or 'none'}); generate with a stronger teacher, or raise "
           f"checks.max_reject_rate in {Path(spec.source_file or spec.name).name} if these rejects are acceptable")
    yield dg.AssetCheckResult(check_name="reject_rate_within_limit", passed=m["gate_passed"],
                              severity=dg.AssetCheckSeverity.ERROR,
                              metadata={"reject_rate": rate, "max_reject_rate": limit,
                                        "rejected_by_reason": dg.MetadataValue.json(m["rejected_by_reason"]),
                                        **({} if m["gate_passed"] else {"explanation": why})})


def build_synthetic_assets(teachers: dict[str, TeacherSpec], datasets: dict[str, DatasetSpec]) -> list:
    """Every teacher and dataset spec as an asset."""
    return [*(build_teacher(t) for t in teachers.values()),
            *(build_dataset(d, teachers[d.teacher]) for d in datasets.values())]
