"""Where the human arena's votes live: SQLite under the kura home locally, PostgreSQL on the cluster (the URL,
password included, comes from the environment: pass dagster.EnvVar). No identity: the votes themselves are hashed
into the arena's input version, so where they are stored changes nothing."""
import dagster as dg

from kura.arena.store import VoteStore


class ArenaStoreResource(dg.ConfigurableResource):
    """The arena's vote store."""

    url: str
    """SQLAlchemy URL: sqlite:///<home>/arena/votes.sqlite, or postgresql://user:pass@host/db (from KURA_ARENA_DB)."""

    def get(self) -> VoteStore:
        if self.url.startswith("sqlite:///"):
            from pathlib import Path

            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return VoteStore(self.url)
