"""Environment → settings. Read when the definitions load (not at import of kura), from KURA_* variables, so the
UI, the daemon, the demo and the tests point at the same places."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PIPELINES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    env: str
    home: Path
    storage_root: str
    corpus_dir: str
    mix_file: Path
    s3_endpoint: str | None
    default_corpus_docs: int = 3000
    k8s_namespace: str = "kura"
    gpu_pool: str = "gpu"
    image_vllm: str = "ghcr.io/your-org/kura-gpu-vllm:0.1.0"
    runs_dir: Path = PIPELINES_DIR / "runs"
    image_megatron: str = "ghcr.io/your-org/kura-gpu-megatron:0.1.0"
    pipes_bucket: str = ""
    judge_url: str = ""
    post_training_dir: Path = PIPELINES_DIR / "post_training"
    judge_model: str = "judge"
    arena_db: str = ""
    """Vote store of the human arena (KURA_ARENA_DB: an SQLAlchemy URL; default SQLite under the home)."""
    judge_api: str = "completions"
    """How the endpoint judge is asked (KURA_JUDGE_API): `completions`, or `chat` for an instruction-tuned /
    GPT-4-class judge that needs its own chat template."""
    teacher_url: str = ""
    """An OpenAI-compatible endpoint (e.g. `vllm serve`) that writes the synthetic shards instead of the local
    teacher_model (KURA_TEACHER_URL; its key from KURA_TEACHER_API_KEY)."""
    teacher_served_model: str = "teacher"

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("KURA_HOME", Path.cwd() / ".kura")).absolute()
        env = os.environ.get("KURA_ENV", "local")
        if env not in ("local", "cluster"):
            raise ValueError(f"KURA_ENV={env!r}: expected 'local' or 'cluster'")
        return cls(env=env, home=home,
                   storage_root=os.environ.get("KURA_STORAGE_ROOT", str(home / "storage")),
                   corpus_dir=os.environ.get("KURA_CORPUS_DIR", ""),
                   mix_file=Path(os.environ.get("KURA_MIX_FILE", PIPELINES_DIR / "mixes" / "default.yaml")),
                   s3_endpoint=os.environ.get("KURA_S3_ENDPOINT") or None,
                   default_corpus_docs=int(os.environ.get("KURA_DEFAULT_CORPUS_DOCS", "3000")),
                   k8s_namespace=os.environ.get("KURA_K8S_NAMESPACE", "kura"),
                   gpu_pool=os.environ.get("KURA_GPU_POOL", "gpu"),
                   image_vllm=os.environ.get("KURA_IMAGE_VLLM", "ghcr.io/your-org/kura-gpu-vllm:0.1.0"),
                   runs_dir=Path(os.environ.get("KURA_RUNS_DIR", PIPELINES_DIR / "runs")),
                   image_megatron=os.environ.get("KURA_IMAGE_MEGATRON", "ghcr.io/your-org/kura-gpu-megatron:0.1.0"),
                   pipes_bucket=os.environ.get("KURA_PIPES_BUCKET", ""),
                   judge_url=os.environ.get("KURA_JUDGE_URL", ""),
                   post_training_dir=Path(os.environ.get("KURA_POST_TRAINING_DIR", PIPELINES_DIR / "post_training")),
                   judge_model=os.environ.get("KURA_JUDGE_MODEL", "judge"),
                   judge_api=os.environ.get("KURA_JUDGE_API", "completions"),
                   arena_db=os.environ.get("KURA_ARENA_DB") or f"sqlite:///{home / 'arena' / 'votes.sqlite'}",
                   teacher_url=os.environ.get("KURA_TEACHER_URL", ""),
                   teacher_served_model=os.environ.get("KURA_TEACHER_MODEL", "teacher"))
