"""CPU per request inside one app process, without an HTTP server: `python bench/inprocess.py [N]`.

Raw WSGI calls (pre-built environ, no test client, no sockets) against PostgreSQL and Redis with the
production settings of run.py, next to the one-JWS ceiling app. It isolates the application's own cost
from gunicorn's and wrk's, so a change to app/ shows up here even on a noisy machine. Prints ms of
process CPU time per request (the minimum of three rounds, split into user and system time) for: discovery, client-credentials token,
authorization-code exchange (codes minted ahead in the store), refresh (rotation), introspection,
userinfo, password sign-in (POST /login with a session cookie and its CSRF token, as run.py sends) and
the ceiling.

`--only=NAME[,NAME…]` measures only those cases; `--rounds=K` sets the number of rounds (default 3);
`--codes=M` mints M codes ahead (code exchange and refresh use N per round each).
`--argon2=off` replaces the password check by a constant, to see a sign-in's cost apart from argon2id.
`--profile=NAME` (e.g. `--profile=code_exchange`) instead runs that one case N times under cProfile and
prints the functions that cost the most CPU, by own time and by cumulative time; `--profile-out=FILE`
also saves the profile for `pstats` (to see who calls what).

On a machine with noisy neighbours, count instructions instead of seconds: run the same case under
`valgrind --tool=callgrind` with two values of N, one round and the same `--codes`, `PYTHONHASHSEED=0` and a key ring made
beforehand in `BENCH_KEYS_DIR` (generating an RSA key takes a random number of instructions); the difference of the two totals divided
by the difference of N is the instructions per request, repeatable to a fraction of a percent.
"""
import base64, hashlib, io, os, secrets, sys, tempfile, time
from pathlib import Path
from urllib.parse import urlencode

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
OPTS = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
N = int(ARGS[0]) if ARGS else 1000
PROFILE = OPTS.get("profile")
ONLY = OPTS["only"].split(",") if "only" in OPTS else None
ROUNDS = int(OPTS.get("rounds", 3))
CODES = int(OPTS.get("codes", (2 * ROUNDS + 1) * N + 50))  # fixed by --codes=M when comparing two values of N
REDIRECT = "http://localhost:9/cb"
# Called around each measured round and after each case; bench/breakdown.py sets them (runpy init_globals).
HOOKS = globals().get("HOOKS") or {"start": lambda: None, "stop": lambda: None, "done": lambda name: None}
db_name = f"idp_inproc_{os.getpid()}"
admin = psycopg.connect(os.environ.get("BENCH_ADMIN_DB", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        autocommit=True)
admin.execute(f'CREATE DATABASE "{db_name}"')
tmp = tempfile.mkdtemp()
os.environ.update(IDP_ISSUER="http://localhost:18080", SECRET_KEY=secrets.token_urlsafe(48),
                  DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
                  REDIS_URL="redis://127.0.0.1:6379/14", IDP_KEYS_DIR=os.environ.get("BENCH_KEYS_DIR", tmp + "/keys"), IDP_RATELIMIT_ENABLED="false",
                  IDP_LOG_LEVEL="WARNING", IDP_OUTBOX_WORKER="off", IDP_CODE_TTL="600")
try:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from flask_migrate import upgrade
    from werkzeug.test import EnvironBuilder

    from app import create_app

    app = create_app()
    if OPTS.get("argon2") == "off":
        from app.accounts import passwords
        passwords.verify = lambda password_hash, password: password_hash is not None
    with app.app_context():
        upgrade()
        from app.accounts.service import create_user
        from app.cli import create_client
        from app.consent import service
        from app.oauth2 import codes

        client, secret = create_client("Bench", [REDIRECT], scope="openid profile email offline_access",
                                       grant_types=["authorization_code", "refresh_token", "client_credentials"])
        password = secrets.token_urlsafe(16)
        user = create_user("bench@example.com", password, "Bench", email_verified=True)
        service.grant(user, client, ["profile", "email", "offline_access"])
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        code_values = [codes.issue(client_id=client.client_id, user_id=user.id, redirect_uri=REDIRECT,
                                   scope="openid profile email offline_access", nonce="n", code_challenge=challenge,
                                   auth_time=int(time.time()), acr="1", amr=["pwd"], sid="bench", claims=None)
                       for _ in range(CODES)]
        cid = client.client_id
    import gc
    gc.collect()
    gc.freeze()  # as wsgi.py does after start-up
    auth = {"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}

    def caller(wsgi, method, path, body=b"", headers=None, ok="200"):
        env0 = EnvironBuilder(method=method, path=path, headers=headers or {},
                              content_type="application/x-www-form-urlencoded" if method == "POST" else None).get_environ()
        env0["REMOTE_ADDR"] = "127.0.0.1"

        def call(data=body):
            env = dict(env0)
            if isinstance(data, tuple):  # (Cookie header, body): a request of its own browser session
                env["HTTP_COOKIE"], data = data
            env["CONTENT_LENGTH"] = str(len(data))
            env["wsgi.input"] = io.BytesIO(data)
            status = []
            out = wsgi(env, lambda s, h, exc=None: status.append(s))
            payload = b"".join(out)
            getattr(out, "close", lambda: None)()
            assert status[0].startswith(ok), (path, status[0], payload[:200])
            return payload
        return call

    def sign_in_bodies(n):
        """n POST /login bodies, each with the cookie and CSRF token of a browser that opened the page (as run.py)."""
        from run import CSRF
        from html import unescape
        out = []
        for _ in range(n):
            resp = app.test_client().get("/login")
            m = CSRF.search(resp.get_data(as_text=True))
            cookie = "; ".join(c.split(";", 1)[0] for c in resp.headers.getlist("Set-Cookie"))
            out.append((cookie, urlencode({"email": "bench@example.com", "password": password,
                                           "csrf_token": unescape(m.group(1) or m.group(2))}).encode()))
        return out

    import json

    token = caller(app, "POST", "/token", headers=auth)

    def exchange_body():
        return urlencode({"grant_type": "authorization_code", "code": code_values.pop(), "redirect_uri": REDIRECT,
                          "code_verifier": verifier}).encode()

    def refresh_tokens(n):
        return [json.loads(token(exchange_body()))["refresh_token"] for _ in range(n)]

    access = json.loads(token(exchange_body()))["access_token"]
    cases = {
        "discovery": (caller(app, "GET", "/.well-known/openid-configuration"), None),
        "client_credentials": (token, lambda n: [b"grant_type=client_credentials"] * n),
        "code_exchange": (token, lambda n: [exchange_body() for _ in range(n)]),
        "refresh": (token, lambda n: [urlencode({"grant_type": "refresh_token", "refresh_token": r}).encode()
                                      for r in refresh_tokens(n)]),
        "introspection": (caller(app, "POST", "/introspect", headers=auth),
                          lambda n: [urlencode({"token": access}).encode()] * n),
        "userinfo": (caller(app, "GET", "/userinfo", headers={"Authorization": "Bearer " + access}), None),
        "password_sign_in": (caller(app, "POST", "/login", ok="303"), sign_in_bodies),
    }
    if not ONLY or "ceiling" in ONLY:  # imported only when measured: it generates a key (random instruction count)
        import ceiling
        cases["ceiling"] = (caller(ceiling.app, "POST", "/", b"grant_type=client_credentials"), None)
    if PROFILE:
        import cProfile, pstats
        call, bodies = cases[PROFILE]
        values = bodies(N) if bodies else None
        for i in range(min(N, 50)):  # warm caches outside the profile
            call(bodies(1)[0]) if bodies else call()
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        for i in range(N):
            call(values[i]) if values else call()
        prof.disable()
        if OPTS.get("profile-out"):
            prof.dump_stats(OPTS["profile-out"])
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)
        cases = {}
    for name, (call, bodies) in cases.items():
        if ONLY and name not in ONLY:
            continue
        best = None
        for _ in range(ROUNDS):
            values = bodies(N) if bodies else None
            HOOKS["start"]()
            t = os.times()
            for i in range(N):
                call(values[i]) if values else call()
            e = os.times()
            HOOKS["stop"]()
            user, system = (e.user - t.user) / N * 1000, (e.system - t.system) / N * 1000
            if best is None or user + system < sum(best):
                best = (user, system)
        print(f"{name:20s} {sum(best):6.3f} ms CPU/request  (user {best[0]:.3f}, system {best[1]:.3f})", flush=True)
        HOOKS["done"](name)
finally:
    admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
