"""Environment → settings. Read when the definitions load (not at import of kura), from `KURA_<FIELD>` variables
(pydantic-settings), so the UI, the daemon, the demo and the tests point at the same places. Every field says what
it is and which variable sets it; a bad value (KURA_ENV=prod, KURA_DEFAULT_CORPUS_DOCS=many) is refused with the
variable named."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PIPELINES_DIR = Path(__file__).resolve().parent


class Settings(BaseSettings):
    """Where kura keeps things and which outside services it uses (each field from KURA_<FIELD NAME>)."""

    model_config = SettingsConfigDict(env_prefix="KURA_", frozen=True, extra="ignore", populate_by_name=True)

    env: Literal["local", "cluster"] = Field("local", description="KURA_ENV: `local` (CPU, in-process trainers and "
                                                                  "generators) or `cluster` (Kubernetes jobs).")
    home: Path = Field(Path(".kura"), description="KURA_HOME: the state folder (storage, Dagster instance, caches); "
                                                  "relative paths are taken from the working directory.")
    storage_root: str = Field("", description="KURA_STORAGE_ROOT: where assets are written, a folder or s3://bucket/"
                                              "prefix (default <home>/storage).")
    corpus_dir: str = Field("", description="KURA_CORPUS_DIR: folder (or s3:// prefix) of input files; empty: the "
                                            "generated default corpus.")
    mix_file: Path = Field(PIPELINES_DIR / "mixes" / "default.yaml", description="KURA_MIX_FILE: the data mix spec.")
    s3_endpoint: Optional[str] = Field(None, description="KURA_S3_ENDPOINT: S3-compatible endpoint URL (empty: AWS).")
    default_corpus_docs: int = Field(3000, ge=1, description="KURA_DEFAULT_CORPUS_DOCS: documents of the generated "
                                                             "default corpus.")
    k8s_namespace: str = Field("kura", description="KURA_K8S_NAMESPACE: namespace of the cluster jobs.")
    gpu_pool: str = Field("gpu", description="KURA_GPU_POOL: node pool label of GPU nodes.")
    image_vllm: str = Field("ghcr.io/your-org/kura-gpu-vllm:0.1.0", description="KURA_IMAGE_VLLM: generation image.")
    runs_dir: Path = Field(PIPELINES_DIR / "runs", description="KURA_RUNS_DIR: folder of pretraining run specs.")
    teachers_dir: Path = Field(PIPELINES_DIR / "teachers", description="KURA_TEACHERS_DIR: folder of teacher specs "
                                                                       "(one asset teacher/<name> each).")
    synthetic_dir: Path = Field(PIPELINES_DIR / "synthetic", description="KURA_SYNTHETIC_DIR: folder of synthetic "
                                                                         "dataset specs (synthetic/<name> each).")
    bases_dir: Path = Field(PIPELINES_DIR / "bases", description="KURA_BASES_DIR: folder of imported base model "
                                                                 "specs (base_model/<name> each).")
    human_dir: Path = Field(PIPELINES_DIR / "human", description="KURA_HUMAN_DIR: folder of human-written dataset "
                                                                 "specs (human/<name> each).")
    judge_teacher: str = Field("demo", description="KURA_JUDGE_TEACHER: the teacher spec whose model judges locally "
                                                   "(when no KURA_JUDGE_URL endpoint is set).")
    image_megatron: str = Field("ghcr.io/your-org/kura-gpu-megatron:0.1.0",
                                description="KURA_IMAGE_MEGATRON: Megatron-LM training image.")
    pipes_bucket: str = Field("", description="KURA_PIPES_BUCKET: S3 bucket of Dagster Pipes messages (cluster).")
    judge_url: str = Field("", description="KURA_JUDGE_URL: an OpenAI-compatible judge endpoint (empty: the local "
                                           "teacher judges).")
    post_training_dir: Path = Field(PIPELINES_DIR / "post_training",
                                    description="KURA_POST_TRAINING_DIR: folder of post-training trial specs.")
    judge_model: str = Field("judge", description="KURA_JUDGE_MODEL: model id the judge endpoint serves.")
    arena_db: str = Field("", description="KURA_ARENA_DB: vote store of the human arena, an SQLAlchemy URL (default "
                                          "SQLite under <home>/arena).")
    judge_api: Literal["completions", "chat"] = Field(
        "completions", description="KURA_JUDGE_API: how the endpoint judge is asked, `completions`, or `chat` for an "
                                   "instruction-tuned / GPT-4-class judge that needs its own chat template.")
    teacher_url: str = Field("", description="KURA_TEACHER_URL: an OpenAI-compatible endpoint (e.g. `vllm serve`) "
                                             "that writes the synthetic shards of every dataset whose teacher is a "
                                             "local model (its key from KURA_TEACHER_API_KEY); a teacher spec of kind "
                                             "endpoint names its own.")
    teacher_served_model: str = Field("teacher", validation_alias=AliasChoices("KURA_TEACHER_MODEL",
                                                                               "teacher_served_model"),
                                      description="KURA_TEACHER_MODEL: model id the teacher endpoint serves.")

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """Defaults that follow from other fields: the storage and the arena's votes live under the home."""
        if not isinstance(data, dict):
            return data
        home = Path(data.get("home") or ".kura").absolute()
        data = {**data, "home": home}
        if not data.get("storage_root"):
            data["storage_root"] = str(home / "storage")
        if not data.get("arena_db"):
            data["arena_db"] = f"sqlite:///{home / 'arena' / 'votes.sqlite'}"
        if not data.get("s3_endpoint"):
            data["s3_endpoint"] = None
        return data

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings of this process's environment; a bad variable is refused in one sentence that names it."""
        try:
            return cls()
        except ValidationError as e:
            err = e.errors()[0]
            name = f"KURA_{str(err['loc'][0]).upper()}" if err.get("loc") else "a KURA_ variable"
            raise ValueError(f"{name}={err.get('input')!r}: {err['msg']} (see pipelines/settings.py)") from None
