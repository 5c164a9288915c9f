"""CPU time per request, part by part: `python bench/breakdown.py [N] [--only=NAME,…]`.

Runs bench/inprocess.py (raw WSGI calls, PostgreSQL + Redis, no HTTP server) with the app's main steps
wrapped in timers of process CPU time (user + system, so a round trip's system calls count), active only
while requests are measured. Each part's time excludes the wrapped parts it calls (the signatures are
"sign", not part of "access token"). Also counts SQL statements per request by their first word, and
BEGIN/COMMIT as SQLAlchemy sees them (in autocommit mode it still reports a BEGIN; the driver sends none).

Unlike cProfile, which adds a cost to every Python call and so inflates the interpreter's share against
the RSA code's, the timers sit only at these boundaries. Default N = 400, cases client_credentials,
code_exchange and refresh.
"""
from __future__ import annotations

import functools
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = int(next((a for a in sys.argv[1:] if not a.startswith("--")), "400"))
ONLY = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")),
            "client_credentials,code_exchange,refresh")
ROUNDS = 2
state = {"on": False, "requests": 0}
spent: dict[str, float] = {}
counts: dict[str, int] = {}
_stack: list[float] = []


def timed(owner, name: str, label: str) -> None:
    wrapped = getattr(owner, name)

    @functools.wraps(wrapped)
    def timer(*a, **k):
        if not state["on"]:
            return wrapped(*a, **k)
        start = time.process_time()
        _stack.append(0.0)
        try:
            return wrapped(*a, **k)
        finally:
            total = time.process_time() - start
            nested = _stack.pop()
            spent[label] = spent.get(label, 0.0) + total - nested
            if _stack:
                _stack[-1] += total
    setattr(owner, name, timer)


def instrument(app) -> None:
    import flask
    import sqlalchemy as sa
    from sqlalchemy.orm import scoping

    from app.consent import policy
    from app.extensions import db
    from app.oauth2 import codes, server, tokens

    timed(flask.Flask, "wsgi_app", "Flask, Werkzeug, Authlib: the rest")
    timed(flask.Flask, "preprocess_request", "before-request hooks")
    timed(flask.Flask, "finalize_request", "response: after-request hooks, headers")
    timed(flask.Flask, "do_teardown_request", "teardown")
    timed(server.Server, "authenticate_client", "client authentication")
    timed(codes, "consume", "code: use up (short-lived store)")
    timed(policy, "customer_with_grants", "customer + consent: read")
    timed(tokens, "sign", "sign (RS256)")
    timed(tokens, "mint", "access token: claims")
    timed(tokens, "draft", "access token: claims")
    timed(tokens, "save", "token row: INSERT")
    timed(tokens, "save_with_customer", "code: token row + customer + consent (one statement)")
    timed(tokens, "rotate", "refresh: claim + new row")
    timed(tokens, "id_token", "ID token: claims")
    timed(server.RefreshTokenGrant, "authenticate_refresh_token", "refresh token + customer + consent: read")
    timed(scoping.scoped_session, "commit", "commit")
    with app.app_context():
        engine = db.engine

    def count(what: str) -> None:
        if state["on"]:
            counts[what] = counts.get(what, 0) + 1
    sa.event.listen(engine, "begin", lambda conn: count("BEGIN"))
    sa.event.listen(engine, "commit", lambda conn: count("COMMIT"))
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cur, stmt, *a: count(stmt.split()[0].upper()))


def start() -> None:
    state["on"] = True


def stop() -> None:
    state["on"] = False
    state["requests"] += N


def done(name: str) -> None:
    n = state["requests"]
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {label:42s} {seconds / n * 1000:7.3f} ms")
    print("    statements per request: " + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(counts.items())), flush=True)
    spent.clear()
    counts.clear()
    state["requests"] = 0


sys.path.insert(0, str(ROOT))
import app as app_package  # noqa: E402

_create_app = app_package.create_app


def create_app(*a, **k):
    app = _create_app(*a, **k)
    instrument(app)
    return app


app_package.create_app = create_app
sys.argv = [str(ROOT / "bench" / "inprocess.py"), str(N), f"--only={ONLY}", f"--rounds={ROUNDS}"]
runpy.run_path(sys.argv[0], run_name="__main__", init_globals={"HOOKS": {"start": start, "stop": stop, "done": done}})
