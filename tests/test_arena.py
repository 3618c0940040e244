"""The human arena: the vote store (hashed tokens, own battles only, one vote per battle, the observed version),
the web app's guards (sign-in, CSRF, JSON only, size and rate limits, anonymity until the vote) and, in a real
browser (Debian's chromium through Playwright) against real vLLM servers, a rater's battles flowing into the
`arena` asset through the votes observation and the automation sensor's own conditions."""
import json
import threading
import time

import pytest
from starlette.testclient import TestClient

from kura.arena.app import create_app
from kura.arena.contestants import ArenaSpec, Contestant, ContestantSpec
from kura.arena.store import ArenaError, VoteStore, preference_pairs, rating_votes
from kura.mix.spec import ChatTemplate

ADMIN = "admin-token-0123456789"


class Scripted(Contestant):
    """A contestant that answers from a script (the app's guards need no model; the browser test uses real ones)."""

    def __init__(self, name: str, answer: str):
        super().__init__(ContestantSpec(name=name, base_url="http://unused/v1"), "http://unused/v1", ChatTemplate())
        self.answer = answer

    def stream(self, history):
        yield from (self.answer[:3], self.answer[3:])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The same store tests on SQLite (one machine) and on a real PostgreSQL server (a shared deployment)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'v.sqlite'}"
        return
    import psycopg2

    pg = request.getfixturevalue("postgres_server")
    db = f"arena_{tmp_path.name.replace('-', '_').lower()}"
    conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=pg.database)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {db}")
    yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{db}"
    conn.cursor().execute(f"DROP DATABASE {db} WITH (FORCE)")
    conn.close()


def _stored_tokens(st: VoteStore) -> bytes:
    """Every value of the raters table as bytes (what someone reading the database sees)."""
    import sqlalchemy as sa

    with st.engine.connect() as c:
        return repr(c.execute(sa.text("SELECT * FROM arena_raters")).all()).encode()


def test_store_keeps_tokens_hashed_battles_private_and_one_vote_each(store_url, tmp_path):
    st = VoteStore(store_url)
    ta, tb = st.create_rater("alice"), st.create_rater("bob")
    alice, bob = st.rater(ta), st.rater(tb)
    assert alice.name == "alice" and st.rater("nope") is None and st.rater("") is None
    assert ta.encode() not in _stored_tokens(st), "tokens are stored hashed"
    if store_url.startswith("sqlite"):
        assert ta.encode() not in (tmp_path / "v.sqlite").read_bytes()
    bid = st.new_battle(alice, ("m1", "v1"), ("m2", "v2"), "writing")
    st.add_turn(alice, bid, "q1")
    with pytest.raises(ArenaError, match="no such battle"):
        st.battle(bob, bid)
    with pytest.raises(ArenaError, match="after both answers"):
        st.vote(alice, bid, "a")
    v0 = st.version()
    st.set_answers(bid, 1, "x1", "y1")
    st.add_turn(alice, bid, "q2")
    st.set_answers(bid, 2, "x2", "y2")
    assert st.version() == v0, "the observed version changes with votes only"
    with pytest.raises(ArenaError, match="one of"):
        st.vote(alice, bid, "c")
    assert st.vote(alice, bid, "b") == {"model_a": "m1", "model_b": "m2", "version_a": "v1", "version_b": "v2"}
    with pytest.raises(ArenaError, match="already voted"):
        st.vote(alice, bid, "a")
    assert st.version() != v0
    rows = st.votes()
    assert len(rows) == 1 and rows[0]["rater_id"] == alice.id and "token" not in json.dumps(rows)
    assert rating_votes(rows)[0]["winner"] == "b"
    pair = preference_pairs(rows)[0]
    assert (pair["prompt"], pair["chosen"], pair["rejected"], pair["chosen_model"]) == ("q2", "y2", "x2", "m2")
    assert pair["history"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "y1"}]
    assert VoteStore(store_url).version() == st.version(), "a second process reads the same votes"
    st.engine.dispose()


def test_app_guards_sign_in_csrf_limits_and_anonymity(tmp_path):
    st = VoteStore(f"sqlite:///{tmp_path / 'v.sqlite'}")
    app = create_app(st, [Scripted("m1", "hello A"), Scripted("m2", "hello B")], ADMIN, battles_per_minute=2,
                     max_body_bytes=2048, max_prompt_chars=100, seed=0)
    c = TestClient(app)
    assert c.post("/admin/raters", json={"name": "x"}).status_code == 401
    token = c.post("/admin/raters", json={"name": "alice"}, headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
    assert c.post("/api/battle", json={"prompt": "hi"}).status_code == 401, "signed out"
    assert c.post("/api/login", json={"token": "wrong"}).status_code == 401
    r = c.post("/api/login", json={"token": token})
    assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    h = {"X-CSRF-Token": r.json()["csrf"]}
    assert c.post("/api/battle", json={"prompt": "hi"}).status_code == 403, "no CSRF token"
    assert c.post("/api/battle", data="prompt=hi", headers={**h, "Content-Type": "application/x-www-form-urlencoded"}
                  ).status_code == 415, "a cross-site form cannot post JSON"
    assert c.post("/api/battle", json={"prompt": "x" * 101}, headers=h).status_code == 413
    assert c.post("/api/battle", content=b"{" + b" " * 3000 + b"}", headers={**h, "Content-Type": "application/json"}
                  ).status_code == 413
    bid = c.post("/api/battle", json={"prompt": "<script>alert(1)</script>"}, headers=h).json()["battle"]
    lines = [json.loads(x) for x in c.post(f"/api/battle/{bid}/stream", json={}, headers=h).text.splitlines()]
    assert lines[-1] == {"complete": True, "turn": 1}
    assert all("m1" not in json.dumps(x) and "m2" not in json.dumps(x) for x in lines), "anonymous until the vote"
    assert "".join(x.get("delta", "") for x in lines if x.get("side") == "a") in ("hello A", "hello B")
    assert set(c.post(f"/api/battle/{bid}/vote", json={"winner": "tie"}, headers=h).json().values()) == {"m1", "m2"}
    c.post("/api/battle", json={"prompt": "again"}, headers=h)
    limited = c.post("/api/battle", json={"prompt": "and again"}, headers=h)
    assert limited.status_code == 429 and "2 battles a minute" in limited.json()["error"]
    page = c.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and "<script>" not in page.text.split(
        "</head>")[1], "no inline script"
    assert c.get("/static/../store.py").status_code == 404


def test_arena_spec_needs_two_distinct_contestants_with_one_source_each():
    with pytest.raises(ValueError, match="either `serve`"):
        ContestantSpec(name="x")
    with pytest.raises(ValueError, match="unique"):
        ArenaSpec(contestants=[{"name": "a", "base_url": "http://h/v1"}, {"name": "a", "serve": "hf_model/a"}])


@pytest.mark.slow
def test_a_rater_votes_in_the_browser_and_the_arena_asset_rates_it(graph, served_models, tmp_path):
    """Real browser, real vLLM servers (dense_2 and the teacher through their chat APIs), the session's Dagster
    instance: two battles voted through the page, then the sensor's observation of `arena_votes` and the
    automation conditions re-rate `arena` once with both human votes; removing the rater re-rates it back."""
    import uvicorn
    import dagster as dg

    from tests.conftest import free_port

    store = graph.defs.resources["arena_store"].get()
    contestants = [Contestant(ContestantSpec(name=n, base_url=served_models[n], max_tokens=12), served_models[n],
                              ChatTemplate()) for n in ("dense_2", "judge")]
    app = create_app(store, contestants, ADMIN, [{"prompt": "春について一言", "category": "writing"}],
                     battles_per_minute=20)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    token = TestClient(app).post("/admin/raters", json={"name": "rater-1"},
                                 headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
    before = len(store.votes())
    rater = store.rater(token)
    try:
        _vote_in_the_browser(graph, store, base, token, before)
    finally:
        # the session's graph is shared: remove this rater's votes and re-rate, so the arena (and every later
        # test's view of it) is back at the version it had, reused from storage rather than rebuilt
        server.should_exit = True
        removed = store.remove_rater(rater.id)
        _settle_votes(graph, quick=False, rerated=removed > 0)  # the session's own arena config: its earlier output is reused
    mat = graph.instance.get_latest_materialization_event(dg.AssetKey("arena")).asset_materialization
    assert mat.metadata["human_votes"].value == 0 and mat.metadata["reused_existing_output"].value is True
    assert mat.metadata["content_version"].value == graph.out["arena"]["version"]


def _settle_votes(graph, quick: bool = True, rerated: bool = True):
    """The daemon's sensor reports the votes' version; automation then re-rates the arena exactly once (with a
    cheaper judge and bootstrap when `quick`)."""
    import dagster as dg

    from assets.arena_votes import arena_votes_sensor
    from tests.automation_driver import drive
    from tests.conftest import TINY_OPS

    cheap = {"ops": {"arena": {"config": {"judge_max_tokens": 24, "bootstrap": 20}}}}

    def config_for(keys):
        ops = {k: {"config": v} for k, v in TINY_OPS.items() if k in {x.to_python_identifier() for x in keys}}
        return {"ops": {**ops, **cheap["ops"]}} if quick and dg.AssetKey("arena") in keys else {"ops": ops}

    settle = drive(graph.defs, graph.instance, observe=(), run_config_for=config_for)
    with dg.build_sensor_context(instance=graph.instance, resources={"arena_store": graph.defs.resources[
            "arena_store"]}) as ctx:
        result = arena_votes_sensor(ctx)
    assert len(result.asset_events) == 1
    graph.instance.report_runless_asset_event(result.asset_events[0])
    d = drive(graph.defs, graph.instance, cursor=settle.cursor, observe=(), run_config_for=config_for)
    assert d.twice() == {} and {k for k, _ in d.materialized()} == ({"arena", "eval_leaderboard"} if rerated
                                                                    else set())


def _vote_in_the_browser(graph, store, base, token, before):
    import dagster as dg
    from playwright.sync_api import expect, sync_playwright

    from tests.conftest import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda d: (_ for _ in ()).throw(AssertionError("a script from a prompt ran")))
        page.goto(base, wait_until="domcontentloaded")
        page.fill("#token", token)
        page.click("#signin-button")
        page.wait_for_selector("#arena:not([hidden])")
        # battle 1: a prompt with a script tag, shown as text; a follow-up turn; vote A
        evil = "<script>alert('x')</script><img src=x onerror=alert(1)>こんにちは"
        page.fill("#prompt", evil)
        page.click("#send")
        page.wait_for_selector("#votes:not([hidden])", timeout=120_000)
        assert page.locator(".turn").first.text_content() == "You: " + evil
        assert page.locator("img").count() == 0, "nothing the rater wrote became markup"
        first = (page.text_content("#answer-a"), page.text_content("#answer-b"))
        assert all(first), "both answers streamed in"
        page.fill("#prompt", "もう少し")
        page.click("#send")
        page.wait_for_selector("#votes:not([hidden])", timeout=120_000)
        page.click("#votes button[data-winner=a]")
        page.wait_for_selector("#reveal:not([hidden])")
        assert set(page.text_content("#reveal").replace("Model A: ", "").split(" / Model B: ")) == {
            "dense_2", "judge"}, "the names only after the vote"
        # battle 2: a drawn prompt; vote both bad
        page.click("#new-battle")
        page.click("#draw")
        # the draw is an async fetch; a locator assertion polls without eval (the page's CSP forbids eval)
        expect(page.locator("#prompt")).to_have_value("春について一言", timeout=30_000)
        page.click("#send")
        page.wait_for_selector("#votes:not([hidden])", timeout=120_000)
        page.click("#votes button[data-winner=bothbad]")
        page.wait_for_selector("#reveal:not([hidden])")
        browser.close()
    rows = store.votes()[before:]
    assert [(r["winner"], len(r["turns"]), r["category"]) for r in rows] == [("a", 2, "free"), ("bothbad", 1,
                                                                                              "writing")]
    assert rows[0]["turns"][0]["prompt"] == evil
    assert {rows[0]["version_a"], rows[0]["version_b"]} <= {"dense_2", "judge"}

    _settle_votes(graph)
    md = graph.instance.get_latest_materialization_event(dg.AssetKey("arena")).asset_materialization.metadata
    assert md["human_votes"].value >= 2
    board = {r["model"] for r in md["leaderboard"].value.records for r in [r.data]}
    assert "judge" in board, "a contestant outside the runs is rated too"
