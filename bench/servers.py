"""WSGI servers compared on the one-JWS ceiling: `.venv/bin/python bench/servers.py [--rounds=2] [--seconds=8] [--idp]`.

What each server costs per request apart from the app: bench/ceiling.py (one form parse, one RS256 signature,
one JSON response) behind each server with two workers, driven by wrk (16 keep-alive connections), CPU per
request read from /proc as bench/run.py does, the servers alternated round by round. Then one probe per server
of what matters behind a load balancer that keeps connections open: with one worker, is a request on a second
connection served while a first kept-alive connection sits idle?

``--idp`` serves the IdP itself (``wsgi:app``, PostgreSQL and Redis as `make bench` sets them up) instead of the
ceiling, and measures its client-credentials token: what each server would make of the per-core target.

Servers: gunicorn with app/gunicorn_conf.py's worker (the default), gunicorn's sync worker, granian (the other
supported server; its command line here, with the workers and blocking threads of python -m app.serve), uWSGI speaking HTTP itself (``--http11-socket``) and behind its own
HTTP router (``--http``), and bjoern. uWSGI and bjoern are not dependencies of the project: install them into
the venv to include them (``pip install uwsgi bjoern``; bjoern builds against Debian's libev-dev); missing ones
are skipped.
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402 - bench/run.py's helpers (wrk, CpuMeter, wait_ready)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BODY = "grant_type=client_credentials"
# What is served and asked: the ceiling app, or (--idp) the IdP's token endpoint; ``main`` may replace it.
TARGET = {"app": "ceiling:app", "cwd": R.BENCH, "env": None, "path": "/", "headers": FORM}

# bjoern serves one process; this forks the workers after binding, as its documentation shows.
BJOERN = """
import importlib, os, sys
sys.path.insert(0, os.getcwd())
import bjoern
module, name = sys.argv[1].split(":")
app = getattr(importlib.import_module(module), name)
bjoern.listen(app, "127.0.0.1", {port}, reuse_port=True)
for _ in range({workers} - 1):
    if os.fork() == 0:
        break
bjoern.run()
"""


def servers(workers: int) -> dict:
    """name -> (command template with {port}, Python module it needs, or None)."""
    v, w, app = str(R.BIN), str(workers), TARGET["app"]
    uwsgi = [v + "/uwsgi", "--module", app, "--processes", w, "--master", "--disable-logging",
             "--need-app", "--lazy-apps"]
    return {
        "gunicorn (ThreadWorker 2 threads)": ([v + "/gunicorn", "-k", R.WORKER_CLASS, "-w", w, "--threads", "2",
                                               "-b", "127.0.0.1:{port}", "--keep-alive", "30", app], None),
        "gunicorn (sync)": ([v + "/gunicorn", "-k", "sync", "-w", w, "-b", "127.0.0.1:{port}", app], None),
        "granian (2 blocking threads)": ([v + "/granian", "--interface", "wsgi", "--workers", w,
                                          "--blocking-threads", "2", "--host", "127.0.0.1", "--port", "{port}",
                                          "--no-ws", app], "granian"),
        "uWSGI --http11-socket": (uwsgi + ["--http11-socket", "127.0.0.1:{port}"], "uwsgidecorators"),
        "uWSGI --http router": (uwsgi + ["--http", "127.0.0.1:{port}", "--http-keepalive"], "uwsgidecorators"),
        "bjoern": ([sys.executable, "-c", BJOERN.replace("{workers}", w), app], "bjoern"),
    }


def installed(module: str | None) -> bool:
    if module == "uwsgidecorators":  # the uwsgi binary sits in the venv; its Python module only exists inside it
        return (R.BIN / "uwsgi").exists()
    return module is None or importlib.util.find_spec(module) is not None


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    """The server (bench/run.py's spawn), once it answers the measured request with a 200."""
    p = R.spawn([c.replace("{port}", str(port)) for c in cmd], cwd=TARGET["cwd"], env=TARGET["env"], logfile=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", TARGET["path"], body=BODY, headers=TARGET["headers"])
            if conn.getresponse().status == 200:
                conn.close()
                return p
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[0]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def idle_connection_blocks(port: int) -> float:
    """Seconds a request on a second connection waits while a first, kept alive, sits idle (one worker)."""
    first, second = (http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(2))
    try:
        first.request("POST", TARGET["path"], body=BODY, headers=TARGET["headers"])
        first.getresponse().read()
        started = time.monotonic()
        second.request("POST", TARGET["path"], body=BODY, headers=TARGET["headers"])
        second.getresponse().read()
        return time.monotonic() - started
    finally:
        first.close()
        second.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--workers", type=int, default=R.default_workers())
    ap.add_argument("--port", type=int, default=18800)
    ap.add_argument("--idp", action="store_true", help="serve the IdP's client-credentials token, not the ceiling")
    args = ap.parse_args()
    if not args.idp:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-servers-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        return measure(args, work)
    with R.scratch(args.port, "servers") as (work, env, created):
        TARGET.update(app="wsgi:app", cwd=R.ROOT, env=env, path="/token",
                      headers=dict(FORM, Authorization=R.basic(created["client_id"], created["client_secret"])))
        return measure(args, work)


def measure(args, work: Path) -> int:
    print(f"serving {TARGET['app']}: POST {TARGET['path']}")
    chosen = {}
    for name, (cmd, module) in servers(args.workers).items():
        if installed(module):
            chosen[name] = cmd
        else:
            print(f"skipped {name}: not installed (pip install {'uwsgi' if 'uWSGI' in name else name})")
    found = {name: [] for name in chosen}
    port = args.port
    for _ in range(args.rounds):
        for name, cmd in chosen.items():
            port += 1
            p = start(cmd, port, work / "server.log")
            try:
                meter = R.CpuMeter([p.pid])
                spec = dict(method="POST", path=TARGET["path"], body=BODY, headers=TARGET["headers"], meter=meter,
                            workdir=work)
                R.wrk(port, seconds=2, **spec)  # warm up
                r = R.wrk(port, seconds=args.seconds, **spec)
                errors = sum(r["errors"].values())
                print(f"  {name:34s} {r['cpu_ms_per_req']:.3f} ms CPU/req  {r['rps']:7.0f} req/s  "
                      f"p99 {r['p99_ms']:6.1f} ms" + (f"  {errors} errors: left out" if errors else ""), flush=True)
                if not errors:  # a refused or failed request is cheap: it would flatter the server
                    found[name].append((r["cpu_ms_per_req"], r["rps"], r["p99_ms"]))
            finally:
                R.stop(p)
    print(f"\nMedians of {args.rounds} rounds, {args.workers} workers, 16 keep-alive connections "
          f"(CPU per request: lower is better):")
    found = {name: rows for name, rows in found.items() if rows}
    if not found:
        print("  no run without errors")
        return 1
    base = statistics.median(x[0] for x in next(iter(found.values())))
    for name, rows in found.items():
        cpu = statistics.median(x[0] for x in rows)
        print(f"  {name:34s} {cpu:.3f} ms  ({cpu / base:.2f}x the first)  {statistics.median(x[1] for x in rows):7.0f}"
              f" req/s  p99 {statistics.median(x[2] for x in rows):6.1f} ms")
    print("\nOne worker, a kept-alive connection left idle: how long a request on a second connection waits")
    for name, (cmd, _) in servers(1).items():
        if name not in chosen:
            continue
        port += 1
        p = start(cmd, port, work / "server.log")
        try:
            waited = idle_connection_blocks(port)
        finally:
            R.stop(p)
        print(f"  {name:34s} {waited * 1000:8.1f} ms{'  (blocked by the idle connection)' if waited > 0.5 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
