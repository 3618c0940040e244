"""Votes are data: raters, battles (the two contestants, their model versions, the category), every turn's prompt
and both answers, and the vote, in SQLite locally or PostgreSQL on the cluster (one SQLAlchemy Core schema).

Rater tokens are stored as SHA-256 hashes only (a leaked database does not leak sign-ins); a rater sees only their
own battles; exports carry the rater's number, never the token. `version()` hashes the votes (not timestamps of
unvoted battles), so the `arena_votes` observation changes exactly when a vote is cast.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import sqlalchemy as sa

WINNERS = ("a", "b", "tie", "bothbad")
META = sa.MetaData()
RATERS = sa.Table("arena_raters", META,
                  sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                  sa.Column("name", sa.String(200), nullable=False),
                  sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
                  sa.Column("created", sa.Float, nullable=False))
BATTLES = sa.Table("arena_battles", META,
                   sa.Column("id", sa.String(32), primary_key=True),
                   sa.Column("rater_id", sa.Integer, sa.ForeignKey("arena_raters.id"), nullable=False, index=True),
                   sa.Column("model_a", sa.String(200), nullable=False),
                   sa.Column("model_b", sa.String(200), nullable=False),
                   sa.Column("version_a", sa.String(200), nullable=False),
                   sa.Column("version_b", sa.String(200), nullable=False),
                   sa.Column("category", sa.String(100), nullable=False),
                   sa.Column("created", sa.Float, nullable=False))
TURNS = sa.Table("arena_turns", META,
                 sa.Column("battle_id", sa.String(32), sa.ForeignKey("arena_battles.id"), primary_key=True),
                 sa.Column("turn", sa.Integer, primary_key=True),
                 sa.Column("prompt", sa.Text, nullable=False),
                 sa.Column("answer_a", sa.Text),
                 sa.Column("answer_b", sa.Text),
                 sa.Column("created", sa.Float, nullable=False))
VOTES = sa.Table("arena_votes", META,
                 sa.Column("battle_id", sa.String(32), sa.ForeignKey("arena_battles.id"), primary_key=True),
                 sa.Column("rater_id", sa.Integer, nullable=False),
                 sa.Column("winner", sa.String(10), nullable=False),
                 sa.Column("created", sa.Float, nullable=False))


class ArenaError(ValueError):
    """A request the store refuses; `status` is the HTTP status the web app answers with."""
    status = 400


class NotFound(ArenaError):
    """No such battle for this rater (unknown, or someone else's: both answer the same, so ids cannot be probed)."""
    status = 404


class Conflict(ArenaError):
    """The battle is not in a state that allows the request (already voted, answer still streaming)."""
    status = 409


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Rater:
    id: int
    name: str


class VoteStore:
    """`url`: an SQLAlchemy URL (`sqlite:///…/votes.sqlite`, `postgresql://…`)."""

    def __init__(self, url: str):
        self.url = url
        u = sa.engine.make_url(url)
        # SQLAlchemy 2.1 defaults to psycopg 3; the lock has psycopg2 (dagster-postgres)
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg2")
        self.engine = sa.create_engine(u, pool_pre_ping=True)
        META.create_all(self.engine)

    def create_rater(self, name: str) -> str:
        """A new rater; returns the token (shown once, stored hashed)."""
        token = secrets.token_urlsafe(24)
        with self.engine.begin() as c:
            c.execute(RATERS.insert().values(name=name[:200], token_sha256=_sha(token), created=time.time()))
        return token

    def rater(self, token: str) -> Optional[Rater]:
        if not token:
            return None
        with self.engine.connect() as c:
            row = c.execute(sa.select(RATERS.c.id, RATERS.c.name).where(RATERS.c.token_sha256 == _sha(token))).first()
        return Rater(row.id, row.name) if row else None

    def new_battle(self, rater: Rater, a: tuple[str, str], b: tuple[str, str], category: str) -> str:
        bid = secrets.token_hex(16)
        with self.engine.begin() as c:
            c.execute(BATTLES.insert().values(id=bid, rater_id=rater.id, model_a=a[0], version_a=a[1], model_b=b[0],
                                              version_b=b[1], category=category[:100], created=time.time()))
        return bid

    def battle(self, rater: Rater, bid: str) -> dict:
        """The rater's own battle with its turns and vote; another rater's battle is as unknown as a missing one."""
        with self.engine.connect() as c:
            b = c.execute(sa.select(BATTLES).where(BATTLES.c.id == bid, BATTLES.c.rater_id == rater.id)).first()
            if b is None:
                raise NotFound("no such battle")
            turns = c.execute(sa.select(TURNS).where(TURNS.c.battle_id == bid).order_by(TURNS.c.turn)).all()
            v = c.execute(sa.select(VOTES.c.winner).where(VOTES.c.battle_id == bid)).first()
        return {**b._asdict(), "turns": [t._asdict() for t in turns], "winner": v.winner if v else None}

    def add_turn(self, rater: Rater, bid: str, prompt: str) -> int:
        b = self.battle(rater, bid)
        if b["winner"]:
            raise Conflict("this battle is already voted on: start a new one")
        if b["turns"] and b["turns"][-1]["answer_b"] is None:
            raise Conflict("the previous turn has not been answered yet")
        n = len(b["turns"]) + 1
        with self.engine.begin() as c:
            c.execute(TURNS.insert().values(battle_id=bid, turn=n, prompt=prompt, created=time.time()))
        return n

    def set_answers(self, bid: str, turn: int, answer_a: str, answer_b: str) -> None:
        with self.engine.begin() as c:
            c.execute(TURNS.update().where(TURNS.c.battle_id == bid, TURNS.c.turn == turn)
                      .values(answer_a=answer_a, answer_b=answer_b))

    def vote(self, rater: Rater, bid: str, winner: str) -> dict:
        if winner not in WINNERS:
            raise ArenaError(f"a vote is one of {', '.join(WINNERS)}")
        b = self.battle(rater, bid)
        if b["winner"]:
            raise Conflict("this battle is already voted on")
        if not b["turns"] or b["turns"][-1]["answer_b"] is None:
            raise Conflict("vote after both answers have arrived")
        with self.engine.begin() as c:
            c.execute(VOTES.insert().values(battle_id=bid, rater_id=rater.id, winner=winner, created=time.time()))
        return {"model_a": b["model_a"], "model_b": b["model_b"], "version_a": b["version_a"],
                "version_b": b["version_b"]}

    def remove_rater(self, rater_id: int) -> int:
        """Remove a rater with their battles, turns and votes (a spammer's, or a test's); returns the votes removed.
        The observed version then changes and the `arena` asset re-rates without them."""
        with self.engine.begin() as c:
            ids = sa.select(BATTLES.c.id).where(BATTLES.c.rater_id == rater_id).scalar_subquery()
            n = c.execute(VOTES.delete().where(VOTES.c.battle_id.in_(ids))).rowcount
            c.execute(TURNS.delete().where(TURNS.c.battle_id.in_(ids)))
            c.execute(BATTLES.delete().where(BATTLES.c.rater_id == rater_id))
            c.execute(RATERS.delete().where(RATERS.c.id == rater_id))
        return n

    def recent_battles(self, rater: Rater, seconds: float) -> int:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(BATTLES).where(
                BATTLES.c.rater_id == rater.id, BATTLES.c.created > time.time() - seconds)).scalar_one()

    def votes(self, with_turns: bool = True) -> list[dict]:
        """Every vote with its battle: rater number, contestants and versions, category, turns, winner, times.
        `with_turns=False` leaves the conversations out (the sensor's version check reads only what a rating uses)."""
        q = (sa.select(VOTES.c.battle_id, VOTES.c.rater_id, VOTES.c.winner, VOTES.c.created.label("voted"),
                       BATTLES.c.model_a, BATTLES.c.model_b, BATTLES.c.version_a, BATTLES.c.version_b,
                       BATTLES.c.category)
             .join(BATTLES, BATTLES.c.id == VOTES.c.battle_id).order_by(VOTES.c.created, VOTES.c.battle_id))
        with self.engine.connect() as c:
            rows = [r._asdict() for r in c.execute(q)]
            if not with_turns:
                return rows
            turns: dict[str, list] = {}
            for t in c.execute(sa.select(TURNS).order_by(TURNS.c.battle_id, TURNS.c.turn)):
                turns.setdefault(t.battle_id, []).append({"prompt": t.prompt, "answer_a": t.answer_a,
                                                          "answer_b": t.answer_b})
        for r in rows:
            r["turns"] = turns.get(r["battle_id"], [])
        return rows

    def version(self) -> str:
        """A hash of what the votes say (battle, contestants, versions, winner): the observed data version."""
        rows = [(r["battle_id"], r["model_a"], r["version_a"], r["model_b"], r["version_b"], r["category"],
                 r["winner"]) for r in self.votes(with_turns=False)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def rating_votes(rows: list[dict]) -> list[dict]:
    """Store votes as Bradley–Terry votes (kura.eval.arena): `bothbad` counts as a tie, as in Chatbot Arena."""
    return [{"model_a": r["model_a"], "model_b": r["model_b"], "winner": "tie" if r["winner"] == "bothbad"
             else r["winner"], "category": r["category"], "source": "human", "question_id": r["battle_id"]}
            for r in rows]


def preference_pairs(rows: list[dict]) -> list[dict]:
    """Decided votes as DPO pairs (prompt = the conversation up to the last turn, chosen / rejected = the last
    answers); ties and both-bad give no pair."""
    out = []
    for r in rows:
        if r["winner"] not in ("a", "b") or not r["turns"]:
            continue
        *earlier, last = r["turns"]
        win, lose = ("answer_a", "answer_b") if r["winner"] == "a" else ("answer_b", "answer_a")
        history = []
        for t in earlier:  # the winner's side of the earlier turns is the context both answers continued
            history += [{"role": "user", "content": t["prompt"]}, {"role": "assistant", "content": t[win]}]
        out.append({"prompt": last["prompt"], "history": history, "chosen": last[win], "rejected": last[lose],
                    "source": f"arena:{r['battle_id']}", "category": r["category"],
                    "chosen_model": r["model_a"] if r["winner"] == "a" else r["model_b"],
                    "rejected_model": r["model_b"] if r["winner"] == "a" else r["model_a"]})
    return out
