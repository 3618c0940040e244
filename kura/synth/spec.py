"""Teachers and synthetic datasets as specs: one YAML file each under `pipelines/teachers/` and
`pipelines/synthetic/`, typed and validated here; one factory turns each into an asset (`teacher/<name>`,
`synthetic/<name>`).

Why: Tanuki's synthetic data came from six teachers (chosen partly by licence) as 38 separately named datasets, and
a team changes them one at a time ("more code and math from Nemotron"). So a dataset is its own asset with its own
code version (the spec's text): editing one regenerates only it and what reads it. The teacher's identity (content
hash of a local folder, or model id + revision + what the endpoint says it serves) is in every shard's version.

Adding a dataset is one file; a new recipe kind is one class registered with
`@kura.synth.recipes.recipe_kind("name")`. Errors name the file and the field: an unknown teacher or recipe kind,
a recipe parameter the kind does not have, a teacher kind without what it needs (a folder without weights, an
endpoint without a model id).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import kura.synth.chains  # noqa: F401 - registers its recipe kinds
import kura.synth.more_recipes  # noqa: F401 - registers its recipe kinds
from kura.synth.checks import OutputChecks
from kura.synth.generators import SamplingConfig
from kura.synth.recipes import RECIPES, recipe_kind  # noqa: F401 - recipe_kind: the registration entry point
from kura.synth.teacher import TeacherConfig

class SpecError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class TeacherSpec(_Strict):
    """A model that writes synthetic data (or judges it)."""

    name: str = Field(description="Asset name: teacher/<name>; datasets name it.")
    kind: Literal["trained", "hf_folder", "endpoint", "kura_run"] = Field(
        description="trained: the demo's tiny teacher, trained here from the deduplicated corpus; hf_folder: a local "
                    "Hugging Face folder (content-hashed); endpoint: an OpenAI-compatible server; kura_run: a kura "
                    "run's hf_model export.")
    description: str = Field("", description="What the teacher is, for the UI.")
    licence: str = Field("unknown", description="Licence of the teacher's outputs (Tanuki chose teachers by it).")
    train: TeacherConfig = Field(default_factory=TeacherConfig,
                                 description="kind trained: architecture and budget of the tiny teacher.")
    max_examples: int = Field(3000, ge=1, description="kind trained: training examples drawn from the corpus.")
    path: Optional[str] = Field(None, description="kind hf_folder: the folder (relative paths from the spec file).")
    base_url_env: str = Field("KURA_TEACHER_URL", description="kind endpoint: environment variable holding the "
                                                              "base URL, e.g. http://vllm.kura.svc:8000/v1.")
    api_key_env: str = Field("KURA_TEACHER_API_KEY", description="kind endpoint: environment variable of the key "
                                                                 "(never stored or logged).")
    model: Optional[str] = Field(None, description="kind endpoint: the model id the server serves.")
    revision: Optional[str] = Field(None, description="kind endpoint: the weights' revision, recorded in versions.")
    api: Literal["completions", "chat"] = Field(
        "completions", description="kind endpoint: completions (the recipe's prompt as is) or chat (the prompt as a "
                                   "user message; the server applies the model's own chat template: instruction-"
                                   "tuned teachers need it).")
    concurrency: int = Field(8, ge=1, description="kind endpoint: parallel requests (throughput only).")
    retries: int = Field(4, ge=0, description="kind endpoint: retries with backoff per request (throughput only).")
    run: Optional[str] = Field(None, description="kind kura_run: the run whose hf_model export teaches.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the model is split over (vLLM tensor parallel); a "
                                                           "cluster generation pod requests tp × pp GPUs.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vLLM pipeline-parallel stages.")
    source_file: Optional[str] = Field(None, exclude=True, description="Where the spec was read (not versioned).")

    @model_validator(mode="after")
    def _needs(self) -> "TeacherSpec":
        need = {"hf_folder": ("path",), "endpoint": ("model",), "kura_run": ("run",)}.get(self.kind, ())
        missing = [f for f in need if not getattr(self, f)]
        if missing:
            raise ValueError(f"kind {self.kind} needs {', '.join(missing)}")
        return self

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def folder(self) -> Path:
        p = Path(self.path or "")
        return p if p.is_absolute() or not self.source_file else Path(self.source_file).parent / p

    def identity(self) -> dict:
        """What of the spec can change a teacher's outputs (its version): never the key, the concurrency or retries,
        or where the spec file lies."""
        keep = {"trained": ("kind", "train", "max_examples"), "hf_folder": ("kind",), "kura_run": ("kind", "run"),
                "endpoint": ("kind", "model", "revision", "api")}[self.kind]
        return {k: v for k, v in self.model_dump().items() if k in keep}


class DatasetSpec(_Strict):
    """One named synthetic dataset: a recipe kind with its parameters, a teacher, sampling, a daily budget."""

    name: str = Field(description="Asset name: synthetic/<name>; mixes name it.")
    recipe: str = Field(description="Recipe kind (registered in kura.synth.spec.RECIPES).")
    params: dict = Field(default_factory=dict, description="The recipe's parameters (its fields; see the class).")
    teacher: str = Field(description="Name of a teacher spec.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling of every request.")
    prompts_per_day: int = Field(128, ge=1, description="Sources (documents, seeds, questions) per day shard.")
    checks: OutputChecks = Field(default_factory=OutputChecks, description="Output checks and the reject gate.")
    tags: list[str] = Field(default_factory=list, description="Free tags (code, math, logic, …); mixes select by "
                                                              "them.")
    licence: Optional[str] = Field(None, description="Licence of the dataset (default: its teacher's).")
    description: str = Field("", description="What the dataset is, for the UI.")
    batch_size: int = Field(64, ge=1, description="Prompts per generation call; each finished batch is appended "
                                                  "to the shard's request log (throughput only).")
    source_file: Optional[str] = Field(None, exclude=True, description="Where the spec was read (not versioned).")

    def build_recipe(self):
        return RECIPES[self.recipe](**self.params)

    def version_text(self) -> str:
        """The spec's result-relevant content: this dataset's code version, so an edit regenerates only it. Tags,
        licence and description change no shard (mixes select by tags at their own step), so they are left out."""
        return json.dumps(self.model_dump(exclude={"batch_size", "description", "tags", "licence"}), sort_keys=True)


def _where(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{loc + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}"


def load_spec_folder(folder: Path, cls, what: str) -> dict:
    specs: dict = {}
    for f in sorted(Path(folder).glob("*.yaml")):
        try:
            raw = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SpecError(f"{what} spec {f}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{what} spec {f}: expected a mapping of fields")
        raw.setdefault("name", f.stem)
        try:
            spec = cls(**raw, source_file=str(f))
        except ValidationError as e:
            raise SpecError(f"{what} spec {f}: {_where(e)}") from None
        if spec.name in specs:
            raise SpecError(f"{what} spec {f}: name {spec.name!r} is used twice")
        specs[spec.name] = spec
    return specs


def load_teachers(folder: str | Path, runs: set[str] | None = None,
                  check_folders: bool = True) -> dict[str, TeacherSpec]:
    """All teacher specs of a folder; a local folder without weights or a run that does not exist is refused."""
    teachers = load_spec_folder(Path(folder), TeacherSpec, "teacher")
    for t in teachers.values():
        if t.kind == "hf_folder" and check_folders:
            d = t.folder()
            if not d.is_dir():
                raise SpecError(f"teacher spec {t.source_file}: path: {d} is not a folder")
            if not (d / "config.json").is_file() or not any((d / w).is_file() for w in WEIGHT_FILES):
                raise SpecError(f"teacher spec {t.source_file}: path: {d} holds no Hugging Face model (needs "
                                f"config.json and one of {', '.join(WEIGHT_FILES)})")
    if runs is not None:
        check_runs(teachers, runs)
    return teachers


def check_runs(teachers: dict[str, TeacherSpec], runs: set[str]) -> None:
    """A kura_run teacher must name a run spec (known only once the mix and runs are loaded)."""
    for t in teachers.values():
        if t.kind == "kura_run" and t.run not in runs:
            raise SpecError(f"teacher spec {t.source_file}: run: {t.run!r} names no run spec ({sorted(runs)})")


def load_datasets(folder: str | Path, teachers: dict[str, TeacherSpec]) -> dict[str, DatasetSpec]:
    """All dataset specs of a folder, each checked against the teachers and the recipe registry."""
    datasets = load_spec_folder(Path(folder), DatasetSpec, "synthetic dataset")
    for d in datasets.values():
        if d.teacher not in teachers:
            raise SpecError(f"synthetic dataset spec {d.source_file}: teacher: {d.teacher!r} names no teacher spec "
                            f"(known: {', '.join(sorted(teachers)) or 'none'})")
        if d.recipe not in RECIPES:
            raise SpecError(f"synthetic dataset spec {d.source_file}: recipe: unknown kind {d.recipe!r} (known: "
                            f"{', '.join(sorted(RECIPES))}; a new kind is one class with @recipe_kind)")
        try:
            d.build_recipe()
        except ValidationError as e:
            raise SpecError(f"synthetic dataset spec {d.source_file}: params.{_where(e)}") from None
        except TypeError as e:
            raise SpecError(f"synthetic dataset spec {d.source_file}: params: {e}") from None
    return datasets


def endpoint_settings(t: TeacherSpec) -> tuple[str, str]:
    """(base URL, key) of an endpoint teacher from the environment; a missing URL is refused in one sentence."""
    url = os.environ.get(t.base_url_env, "")
    if not url:
        raise SpecError(f"teacher {t.name} ({t.source_file}): the endpoint's base URL is read from "
                        f"${t.base_url_env}, which is not set; export it (e.g. http://host:8000/v1) and rerun")
    return url, os.environ.get(t.api_key_env, "") or "EMPTY"


def endpoint_generator(t: TeacherSpec):
    """The generator of an endpoint teacher: its chat teachers get each prompt as one user message."""
    from kura.synth.generators import OpenAICompatibleGenerator

    url, key = endpoint_settings(t)
    return OpenAICompatibleGenerator(url, t.model or "", key, t.concurrency, t.retries, api=t.api,
                                     chat_prompts=t.api == "chat")


def select_datasets(datasets: dict[str, DatasetSpec], recipe=None, teacher=None, tags=None) -> list[str]:
    """Names of the datasets a mix selector picks: every given criterion must hold (a tag selector: any tag)."""
    return sorted(n for n, d in datasets.items()
                  if (not recipe or d.recipe in recipe) and (not teacher or d.teacher in teacher)
                  and (not tags or set(tags) & set(d.tags)))
