"""Interleaved comparisons under gunicorn: `.venv/bin/python bench/interleave.py [--rounds=3] [--seconds=6]`.

On a noisy host one pair of runs minutes apart does not decide a comparison (docs/performance.md): this script
alternates the cases round by round and prints medians. Two comparisons, each case behind its own gunicorn on
127.0.0.1, driven by wrk (16 keep-alive connections), CPU per request read from /proc like bench/run.py:

1. the IdP's client-credentials token (PostgreSQL + Redis, production settings as in `make bench`) against the
   one-JWS ceiling (bench/ceiling.py), both with the benchmark's gunicorn settings;
2. the ceiling alone under several gunicorn settings (gthread workers × threads, sync workers), to see what the
   server's settings cost apart from the app.

It creates and drops its own database and writes nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402 - bench/run.py's helpers (spawn, wrk, CpuMeter, gunicorn_cmd)

SETTINGS = {  # name -> (worker class, workers, threads)
    "gthread 4 x 2 (make bench)": ("gthread", 4, 2),
    "gthread 4 x 1": ("gthread", 4, 1),
    "gthread 2 x 2": ("gthread", 2, 2),
    "sync 4": ("sync", 4, 1),
}


def rounds(cases: dict, n: int, seconds: int, work: Path) -> dict:
    """cases: name -> (port, meter, wrk spec). Runs them in turn, n times; returns name -> [(cpu ms/req, req/s)]."""
    out = {name: [] for name in cases}
    for name, (port, meter, spec) in cases.items():  # warm-up, not counted
        R.wrk(port, seconds=2, connections=16, meter=meter, workdir=work, **spec)
    for r in range(n):
        for name, (port, meter, spec) in cases.items():
            res = R.wrk(port, seconds=seconds, connections=16, meter=meter, workdir=work, **spec)
            out[name].append((res["cpu_ms_per_req"], res["rps"]))
            print(f"  round {r + 1} {name:30s} {res['cpu_ms_per_req']:.3f} ms/req {res['rps']:7.0f} req/s "
                  f"errors {sum(res['errors'].values())}", flush=True)
    return out


def medians(out: dict) -> None:
    for name, v in out.items():
        print(f"{name:32s} median {statistics.median(a for a, _ in v):.3f} ms/req "
              f"{statistics.median(b for _, b in v):7.0f} req/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--port", type=int, default=18600)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idp-interleave-"))
    dbname = f"idp_interleave_{os.getpid()}"
    import psycopg
    import redis

    admin = psycopg.connect(R.ADMIN_DB, autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    redis.Redis.from_url(f"redis://127.0.0.1:6379/{R.REDIS_DB}").flushdb()
    env = dict(os.environ, IDP_ISSUER=f"http://localhost:{args.port}", SECRET_KEY=secrets.token_urlsafe(48),
               DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
               REDIS_URL=f"redis://127.0.0.1:6379/{R.REDIS_DB}", IDP_KEYS_DIR=str(work / "keys"),
               IDP_RATELIMIT_ENABLED="false", IDP_LOG_LEVEL="WARNING", FLASK_APP="wsgi")
    post = dict(method="POST", body="grant_type=client_credentials")
    try:
        flask = [str(R.BIN / "flask"), "--app", "wsgi"]
        subprocess.run(flask + ["db", "upgrade"], env=env, cwd=R.ROOT, check=True, capture_output=True)
        created = json.loads(subprocess.run(
            flask + ["clients", "create", "--name", "Interleave", "--grant-type", "client_credentials", "--scope", "",
                     "--json"], env=env, cwd=R.ROOT, check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1])
        bench = argparse.Namespace(workers=4, threads=2, worker_class="gthread")
        idp = R.spawn(R.gunicorn_cmd("wsgi:app", args.port, bench), env=env, logfile=work / "idp.log")
        ceiling = R.spawn(R.gunicorn_cmd("ceiling:app", args.port + 1, bench), cwd=R.BENCH, env=env,
                          logfile=work / "ceiling.log")
        R.wait_ready(f"http://127.0.0.1:{args.port}/.well-known/openid-configuration", idp, "idp")
        R.wait_ready(f"http://127.0.0.1:{args.port + 1}/", ceiling, "ceiling")
        auth = {"Authorization": R.basic(created["client_id"], created["client_secret"])}
        print("1. client-credentials token: the IdP against the one-JWS ceiling (gunicorn, 4 gthread x 2)")
        medians(rounds({"IdP": (args.port, R.CpuMeter([idp.pid]), dict(post, path="/token", headers=auth)),
                        "ceiling": (args.port + 1, R.CpuMeter([ceiling.pid]), dict(post, path="/"))},
                       args.rounds, args.seconds, work))
        R.stop(idp)
        R.stop(ceiling)

        print("2. the ceiling under several gunicorn settings")
        cases = {}
        for i, (name, (klass, workers, threads)) in enumerate(SETTINGS.items()):
            port = args.port + 10 + i
            p = R.spawn(R.gunicorn_cmd("ceiling:app", port, argparse.Namespace(
                workers=workers, threads=threads, worker_class=klass)), cwd=R.BENCH, env=env,
                logfile=work / f"ceiling-{i}.log")
            R.wait_ready(f"http://127.0.0.1:{port}/", p, name)
            cases[name] = (port, R.CpuMeter([p.pid]), dict(post, path="/"))
        medians(rounds(cases, args.rounds, args.seconds, work))
    finally:
        R.stop_all()
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
