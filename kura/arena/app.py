"""The arena web app (Starlette, served by uvicorn on 127.0.0.1 by default).

A rater signs in with a rater token (the admin creates tokens: `POST /admin/raters` with the admin token), writes a
prompt or draws one from the prompt set, and gets two anonymous answers streamed side by side from a random pair of
contestants; follow-up turns go to the same pair; a vote (A / B / tie / both bad) ends the battle and only then
names the models. Safe by default:
- sessions are random ids held by the server (an HttpOnly, SameSite=Strict cookie); every state-changing request
  needs the session's CSRF token in `X-CSRF-Token` and a JSON body, so a form on another site cannot vote;
- the page never inserts HTML: prompts and answers are set as text (`textContent`), and a Content-Security-Policy
  allows scripts from this origin only, so a `<script>` in a prompt or an answer is shown, not run;
- request bodies are limited (`max_body_bytes`), prompts too; each rater may start `battles_per_minute` battles or
  turns a minute; sign-in attempts are limited per client address;
- a rater reads only their own battles; nothing lists raters or their votes; tokens are stored hashed.
"""
from __future__ import annotations

import json
import queue
import random
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kura.arena.contestants import Contestant
from kura.arena.store import ArenaError, Rater, VoteStore

STATIC = Path(__file__).with_name("static")
SESSION_COOKIE = "kura_arena_session"
HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                      "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(store: VoteStore, contestants: list[Contestant], admin_token: str, prompts: Optional[list] = None,
               battles_per_minute: int = 6, max_prompt_chars: int = 4000, max_turns: int = 4,
               max_body_bytes: int = 16384, session_seconds: float = 12 * 3600,
               seed: Optional[int] = None) -> Starlette:
    """`prompts`: [{"prompt", "category"}] raters may draw from. `seed` fixes the pairing (tests)."""
    if len(contestants) < 2:
        raise ValueError("the arena needs at least two contestants")
    if len(admin_token) < 16:
        raise ValueError("the admin token must have at least 16 characters")
    by_name = {c.name: c for c in contestants}
    sessions: dict[str, dict] = {}
    logins: dict[str, deque] = defaultdict(deque)
    rng = random.Random(seed)
    lock = threading.Lock()

    def reply(data, status: int = 200) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers=HEADERS)

    async def body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Refused(415, "send JSON (Content-Type: application/json)")
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > max_body_bytes:
            raise _Refused(413, f"the request is larger than {max_body_bytes} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise _Refused(413, f"the request is larger than {max_body_bytes} bytes")
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Refused(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise _Refused(400, "the request body must be a JSON object")
        return data

    def rater_of(request: Request, state_changing: bool = True) -> Rater:
        s = sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if s is None or s["expires"] < time.time():
            raise _Refused(401, "sign in with your rater token")
        if state_changing and not secrets.compare_digest(request.headers.get("x-csrf-token", ""), s["csrf"]):
            raise _Refused(403, "missing or wrong CSRF token: reload the page")
        return s["rater"]

    def limit(rater: Rater) -> None:
        if store.recent_battles(rater, 60) >= battles_per_minute:
            raise _Refused(429, f"at most {battles_per_minute} battles a minute: wait a moment")

    def prompt_of(data: dict) -> str:
        text = data.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise _Refused(400, "write a prompt (or draw one)")
        if len(text) > max_prompt_chars:
            raise _Refused(413, f"the prompt is longer than {max_prompt_chars} characters")
        return text

    def guarded(handler):
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except _Refused as e:
                return reply({"error": e.message}, e.status)
            except ArenaError as e:
                return reply({"error": str(e)}, e.status)
        return run

    async def page(request: Request) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        kinds = {"arena.js": "text/javascript; charset=utf-8", "arena.css": "text/css; charset=utf-8"}
        if name not in kinds:  # a fixed list: no path from the request reaches the file system
            return PlainTextResponse("not found", 404, headers=HEADERS)
        return Response((STATIC / name).read_bytes(), media_type=kinds[name], headers=HEADERS)

    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        with lock:
            q = logins[client]
            while q and q[0] < time.time() - 60:
                q.popleft()
            if len(q) >= 10:
                raise _Refused(429, "too many sign-in attempts: wait a minute")
            q.append(time.time())
        data = await body(request)
        rater = store.rater(str(data.get("token", "")))
        if rater is None:
            raise _Refused(401, "unknown rater token")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        sessions[sid] = {"rater": rater, "csrf": csrf, "expires": time.time() + session_seconds}
        r = reply({"name": rater.name, "csrf": csrf, "prompt_set": bool(prompts)})
        r.set_cookie(SESSION_COOKIE, sid, max_age=int(session_seconds), httponly=True, samesite="strict",
                     secure=request.url.scheme == "https", path="/")
        return r

    async def me(request: Request) -> Response:
        s = sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if s is None or s["expires"] < time.time():
            raise _Refused(401, "sign in with your rater token")
        return reply({"name": s["rater"].name, "csrf": s["csrf"], "prompt_set": bool(prompts)})

    async def draw(request: Request) -> Response:
        rater_of(request)
        await body(request)
        if not prompts:
            raise _Refused(404, "this arena has no prompt set")
        return reply(rng.choice(prompts))

    async def battle(request: Request) -> Response:
        rater = rater_of(request)
        data = await body(request)
        text = prompt_of(data)
        limit(rater)
        a, b = rng.sample(contestants, 2)
        category = str(data.get("category") or "free")[:100]
        bid = store.new_battle(rater, (a.name, a.version), (b.name, b.version), category)
        store.add_turn(rater, bid, text)
        return reply({"battle": bid, "turn": 1})

    async def turn(request: Request) -> Response:
        rater = rater_of(request)
        data = await body(request)
        text = prompt_of(data)
        b = store.battle(rater, request.path_params["bid"])
        if len(b["turns"]) >= max_turns:
            raise _Refused(409, f"at most {max_turns} turns a battle: vote, then start a new one")
        limit(rater)
        return reply({"battle": b["id"], "turn": store.add_turn(rater, b["id"], text)})

    async def stream(request: Request) -> Response:
        rater = rater_of(request)
        await body(request)
        b = store.battle(rater, request.path_params["bid"])
        if not b["turns"] or b["turns"][-1]["answer_b"] is not None:
            raise _Refused(409, "nothing to answer: send a prompt first")
        n = len(b["turns"])
        sides = {"a": by_name.get(b["model_a"]), "b": by_name.get(b["model_b"])}
        if None in sides.values():
            raise _Refused(409, "a contestant of this battle is no longer in the arena: start a new battle")

        def history(side: str) -> list[dict]:
            h = []
            for t in b["turns"]:
                h.append({"role": "user", "content": t["prompt"]})
                if t["answer_b"] is not None:
                    h.append({"role": "assistant", "content": t[f"answer_{side}"]})
            return h

        events: queue.Queue = queue.Queue()

        def run(side: str) -> None:
            parts = []
            try:
                for piece in sides[side].stream(history(side)):
                    parts.append(piece)
                    events.put({"side": side, "delta": piece})
                events.put({"side": side, "done": "".join(parts)})
            except Exception as e:  # noqa: BLE001 - any endpoint failure ends that side, anonymously
                events.put({"side": side, "error": f"model {side.upper()} did not answer ({type(e).__name__})"})

        def lines():
            threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in ("a", "b")]
            for t in threads:
                t.start()
            answers: dict[str, str] = {}
            while len(answers) < 2:
                e = events.get()
                if "done" in e:
                    answers[e["side"]] = e["done"]
                    yield json.dumps({"side": e["side"], "done": True}) + "\n"
                    continue
                yield json.dumps(e, ensure_ascii=False) + "\n"
                if "error" in e:
                    break
            if len(answers) == 2:
                store.set_answers(b["id"], n, answers["a"], answers["b"])
                yield json.dumps({"complete": True, "turn": n}) + "\n"
            else:
                yield json.dumps({"complete": False, "error": "an answer failed: start a new battle"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=HEADERS)

    async def vote(request: Request) -> Response:
        rater = rater_of(request)
        data = await body(request)
        reveal = store.vote(rater, request.path_params["bid"], str(data.get("winner", "")))
        return reply({"model_a": reveal["model_a"], "model_b": reveal["model_b"]})

    async def new_rater(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not secrets.compare_digest(auth, f"Bearer {admin_token}"):
            raise _Refused(401, "admin token required")
        data = await body(request)
        name = str(data.get("name", "")).strip()
        if not name:
            raise _Refused(400, "give the rater a name")
        return reply({"name": name, "token": store.create_rater(name)})

    routes = [Route("/", page), Route("/static/{name}", asset),
              Route("/api/login", guarded(login), methods=["POST"]), Route("/api/me", guarded(me)),
              Route("/api/draw", guarded(draw), methods=["POST"]),
              Route("/api/battle", guarded(battle), methods=["POST"]),
              Route("/api/battle/{bid}/turn", guarded(turn), methods=["POST"]),
              Route("/api/battle/{bid}/stream", guarded(stream), methods=["POST"]),
              Route("/api/battle/{bid}/vote", guarded(vote), methods=["POST"]),
              Route("/admin/raters", guarded(new_rater), methods=["POST"])]
    return Starlette(routes=routes)
