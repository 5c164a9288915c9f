"""Connections per worker under paced load: `.venv/bin/python bench/spread.py [--server=gunicorn|granian]`.

A load balancer keeps a pool of keep-alive connections and spreads its requests over all of them alike, so a
worker's share of the node's load is its share of the connections. This script shows that share: per round, it
measures the IdP's peak (wrk, 16 connections, 8 s), then paces 80 % of that peak on a fixed schedule
(bench/request.lua, 16 connections, 10 s) while it counts every half second the established connections each
worker holds (/proc/net/tcp), and prints the counts seen, the cores each worker used, the rate reached and the
p50 and p99. The IdP runs in production mode (PostgreSQL, Redis) with the benchmark's settings: gunicorn with
app/gunicorn_conf.py's worker class (`--worker-class` for another one), or granian (`python -m app.serve`),
2 workers × 2 threads either way. `--endpoint=refresh` paces refresh-token rotations instead of
client-credentials tokens (refresh tokens minted before each run). It creates and drops its own database.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402 - bench/run.py's helpers (spawn, wrk, CpuMeter, gunicorn_cmd); puts ROOT on sys.path
from tests.support.procnet import established as held  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", choices=("gunicorn", "granian"), default="gunicorn")
    ap.add_argument("--worker-class", default=R.WORKER_CLASS, help="gunicorn's worker class")
    ap.add_argument("--endpoint", choices=("client_credentials", "refresh"), default="client_credentials")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--port", type=int, default=18700)
    args = ap.parse_args()
    with R.scratch(args.port, "spread") as (work, env, created):
        if args.server == "granian":
            idp = R.spawn_granian(args.port, env, 2, 2, work / "idp.log")
            setting = "granian, 2 workers x 2 blocking threads"
        else:
            idp = R.spawn(R.gunicorn_cmd("wsgi:app", args.port, argparse.Namespace(
                workers=2, threads=2, worker_class=args.worker_class)), env=env, logfile=work / "idp.log")
            setting = f"gunicorn, 2 {args.worker_class} x 2"
        R.wait_ready(f"http://127.0.0.1:{args.port}/.well-known/openid-configuration", idp, args.server)
        time.sleep(2)  # every worker up
        workers = [p for p in R.descendants(idp.pid) if p != idp.pid]
        spec = dict(method="POST", path="/token", body="grant_type=client_credentials",
                    headers={"Authorization": R.basic(created["client_id"], created["client_secret"])})
        target = None
        if args.endpoint == "refresh":
            email = "spread@example.com"
            password = R.add_customer(env, email)
            target = R.IdP(args.port, idp, created["client_id"], created["client_secret"], email, password)
            target.mint_tokens(20)
            spec["body"] = "grant_type=refresh_token&refresh_token={1}"

        def values(n: int):
            return [x["refresh_token"] for x in target.mint_tokens(n)] if target else None

        meter = R.CpuMeter([idp.pid])
        print(f"{args.endpoint} on {setting}; 16 connections", flush=True)
        R.wrk(args.port, seconds=2, connections=16, meter=meter, workdir=work, values=values(1500), **spec)
        for r in range(args.rounds):
            peak = R.wrk(args.port, seconds=8, connections=16, meter=meter, workdir=work, values=values(9000), **spec)
            paced_values = values(int(peak["rps"] * 0.8 * 10 * 1.2) + 100)
            seen, stop = [], threading.Event()

            def sample():
                time.sleep(1.0)  # the connections are open
                while not stop.is_set():
                    seen.append(tuple(held(p, args.port) for p in workers))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample)
            sampler.start()
            before = {p: R.cpu_ticks(p) for p in workers}
            paced = R.wrk(args.port, seconds=10, connections=16, rate=0.8 * peak["rps"], meter=meter, workdir=work,
                          values=paced_values, **spec)
            stop.set()
            sampler.join()
            cores = " ".join(f"{(R.cpu_ticks(p) - before[p]) / R.CLK / paced['seconds']:.2f}" for p in workers)
            print(f"round {r + 1}: peak {peak['rps']:.0f} req/s; paced {paced['rps']:.0f} req/s "
                  f"({paced['rps'] / peak['rps']:.0%} of peak), p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms, "
                  f"errors {sum(paced['errors'].values())}; connections per worker seen {sorted(set(seen))}; "
                  f"cores per worker {cores}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
