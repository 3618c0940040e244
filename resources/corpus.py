"""Corpus resource: the folder of raw input files. Empty `path` means the bundled default corpus, generated
(seeded, deterministic) into `default_dir` on first use."""

from pathlib import Path

import dagster as dg

from kura.corpus.default import DefaultCorpusConfig, write_default_corpus
from kura.corpus.readers import is_supported


class CorpusResource(dg.ConfigurableResource):
    """The raw corpus folder; one dynamic partition of `raw_corpus` per supported file in it."""

    path: str = ""
    """Folder of .jsonl, .jsonl.gz, .parquet, .txt or .html files. Empty: the generated default corpus."""
    default_dir: str = "/tmp/kura-default-corpus"
    """Where the default corpus is generated when `path` is empty."""
    seed: int = 20241122
    """Seed of the default corpus generator."""
    n_docs: int = 3000
    """Documents in the default corpus."""

    def folder(self) -> Path:
        if self.path:
            p = Path(self.path)
            if not p.is_dir():
                raise FileNotFoundError(f"corpus folder {p} does not exist")
            return p
        d = Path(self.default_dir) / f"seed{self.seed}-n{self.n_docs}"
        if not (d / "_COMPLETE").exists():
            write_default_corpus(d, DefaultCorpusConfig(seed=self.seed, n_docs=self.n_docs))
            (d / "_COMPLETE").write_text("ok\n")
        return d

    def list_files(self) -> list[str]:
        """Partition keys: paths relative to the folder, sorted. Entries that cannot be read (a dangling link, no
        permission) are listed too, so that they are quarantined and counted rather than silently skipped."""
        root = self.folder()
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if not p.is_dir() and is_supported(p.name))

    def file(self, key: str) -> Path:
        return self.folder() / key
