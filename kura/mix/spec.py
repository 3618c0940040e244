"""Mix specification (`pipelines/mixes/*.yaml`), typed and validated at load time.

A mix names its sources (asset keys), a weight per source (weights must sum to 1), an optional language selector,
how many times a source may be repeated (`max_epochs`), a token budget and a sequence length. Errors name the file
and the field, e.g. "mix default.yaml: source 'synthtic' does not exist (known: deduplicated, synthetic)".
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator


class MixError(ValueError):
    """A mix that cannot be used, with a message saying what and where."""


class MixSource(BaseModel):
    """One source of a mix."""

    source: str = Field(description="Asset key of the source (e.g. deduplicated, synthetic).")
    weight: float = Field(ge=0, description="Share of the mix's training tokens taken from this source.")
    lang: str | None = Field(None, description="Only documents of this language (ja, en); all when omitted.")
    max_epochs: float = Field(1.0, ge=1.0, description="How often the source may be repeated to meet its share.")


class MixSpec(BaseModel):
    """A data mix for one training phase."""

    name: str = Field(description="Mix name, shown in lineage.")
    sequence_length: int = Field(gt=0, description="Training sequence length in tokens.")
    total_tokens: int = Field(gt=0, description="Training tokens the mix provides (before heldout).")
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5, description="Share of documents held out for evaluation, "
                                                                    "chosen by a hash of the document id.")
    seed: int = Field(0, description="Seed of the document order within each source.")
    sources: list[MixSource] = Field(min_length=1, description="The sources and their weights.")

    @model_validator(mode="after")
    def _weights(self) -> "MixSpec":
        names = [s.source + (f"[{s.lang}]" if s.lang else "") for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"a source appears twice: {names}")
        total = sum(s.weight for s in self.sources)
        if total == 0:
            raise ValueError("all weights are zero")
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights sum to {total:g}, not 1 ({', '.join(f'{n}={s.weight:g}' for n, s in zip(names, self.sources))})")
        return self


def load_mix(path: str | Path, known_sources: set[str] | None = None) -> MixSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise MixError(f"mix {path.name}: cannot read: {e}") from e
    try:
        spec = MixSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors())
        raise MixError(f"mix {path.name}: {problems}") from None
    if known_sources is not None:
        for s in spec.sources:
            if s.source not in known_sources:
                raise MixError(f"mix {path.name}: source {s.source!r} does not exist "
                               f"(known: {', '.join(sorted(known_sources))})")
    return spec
