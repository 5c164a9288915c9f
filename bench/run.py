"""`make bench`: throughput, latency, CPU and memory of the IdP in production mode, next to
panva's oidc-provider (npm, v9) and a one-JWS Flask ceiling, all measured in one run on this machine.

What it does (bench/README.md explains the choices):
  1. checks wrk (installs Debian's package when root), node/npm (installs bench/oidc-provider with npm ci)
     and py-spy (pip, for the profile);
  2. creates a fresh PostgreSQL database, flushes one Redis database, applies the migrations, creates the
     signing keys in a temporary folder, one confidential client and one customer;
  3. starts gunicorn (wsgi:app), oidc-provider (node) and the ceiling (bench/ceiling.py, same gunicorn
     settings), all on 127.0.0.1; later the same app under granian (python -m app.serve), the other
     production server;
  4. per endpoint: pre-mints single-use values (codes, refresh tokens, sign-in cookie+CSRF pairs), runs wrk
     for a bounded time and reads the CPU time of every server process from /proc before and after;
  5. a paced pass at 80 % of each peak (a fixed schedule in wrk's delay() hook), a two-node pass (each node held to a CPU
     budget of its own by a cgroup, standing in for a machine), and a py-spy profile of one worker under
     client-credentials load;
  6. writes docs/performance.md (and bench/results.json), drops the database, stops every process it started.

Load goes to loopback only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
ADMIN_DB = os.environ.get("BENCH_ADMIN_DB", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "15"))
REDIRECT = "http://localhost:9/cb"  # never contacted: the code is read from the Location header
sys.path.insert(0, str(ROOT))
from app.gunicorn_conf import default_workers, worker_class as WORKER_CLASS  # noqa: E402 - the production settings
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


def log(*a):
    print("[bench]", *a, flush=True)


# ---------------------------------------------------------------- processes we start (and only those)

STARTED: list[subprocess.Popen] = []


def spawn(cmd, *, env=None, cwd=ROOT, logfile=None) -> subprocess.Popen:
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    """SIGTERM the process group of one process we started (gunicorn master + its workers), then SIGKILL."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def stop_all() -> None:
    for p in reversed(STARTED):
        stop(p)


# ---------------------------------------------------------------- /proc readings

def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            pass
    return out


@contextlib.contextmanager
def scratch(port: int, name: str):
    """An IdP's surroundings for a measurement script, as `make bench` sets them up: a fresh PostgreSQL database
    (dropped at the end), a flushed Redis database, the migrations, signing keys in a temporary folder and one
    confidential client (code, refresh and client-credentials grants). Yields (work folder, environment, client as
    `flask clients create --json` prints it); every process spawned meanwhile is stopped at the end."""
    work = Path(tempfile.mkdtemp(prefix=f"idp-{name}-"))
    dbname = f"idp_{name}_{os.getpid()}"
    admin = psycopg.connect(ADMIN_DB, autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}").flushdb()
    env = dict(os.environ, IDP_ISSUER=f"http://localhost:{port}", SECRET_KEY=secrets.token_urlsafe(48),
               DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
               REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}", IDP_KEYS_DIR=str(work / "keys"),
               IDP_RATELIMIT_ENABLED="false", IDP_LOG_LEVEL="WARNING", FLASK_APP="wsgi", IDP_CODE_TTL="600",
               PYTHONPATH=str(ROOT))  # app.gunicorn_worker for the ceiling (run from bench/) too
    try:
        flask = [str(BIN / "flask"), "--app", "wsgi"]
        subprocess.run(flask + ["db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        created = json.loads(subprocess.run(
            flask + ["clients", "create", "--name", name.title(), "--redirect-uri", REDIRECT,
                     "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                     "--grant-type", "client_credentials", "--scope", "openid profile email offline_access",
                     "--require-pkce", "--json"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1])
        yield work, env, created
    finally:
        stop_all()
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def spawn_granian(port: int, env: dict, workers: int, threads: int, logfile: Path) -> subprocess.Popen:
    """The IdP under granian (`python -m app.serve`) with the given workers × blocking threads, access log off (as
    gunicorn runs here without one), on 127.0.0.1:port."""
    return spawn([sys.executable, "-m", "app.serve"], logfile=logfile, cwd=ROOT, env=dict(
        env, GRANIAN_HOST="127.0.0.1", GRANIAN_PORT=str(port), GRANIAN_WORKERS=str(workers),
        GRANIAN_BLOCKING_THREADS=str(threads), GRANIAN_BACKLOG="512", GRANIAN_ACCESS_LOG="false",
        GRANIAN_LOG_LEVEL="warning"))


def add_customer(env: dict, email: str) -> str:
    """A verified customer with a random password (returned), through the CLI."""
    password = secrets.token_urlsafe(16)
    subprocess.run([str(BIN / "flask"), "--app", "wsgi", "users", "create", "--email", email, "--password", password,
                    "--name", "Bench Customer", "--email-verified"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return password


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def backend_pids() -> list[int]:
    """PostgreSQL and Redis server processes: their CPU is reported apart from the app's."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(int(p)) in ("postgres", "redis-server")]


class CpuMeter:
    def __init__(self, roots: list[int]):
        self.roots = roots

    def snapshot(self) -> dict:
        app = {p: cpu_ticks(p) for r in self.roots for p in descendants(r)}
        back = {p: cpu_ticks(p) for p in backend_pids()}
        return {"app": app, "back": back}

    @staticmethod
    def delta(a: dict, b: dict) -> tuple[float, float]:
        def d(x, y):
            return sum(y[p] - x.get(p, 0) for p in y) / CLK
        return d(a["app"], b["app"]), d(a["back"], b["back"])

    def worker_hwm_mib(self) -> float:
        pids = [p for r in self.roots for p in descendants(r)]
        workers = [p for p in pids if p not in self.roots] or pids  # gunicorn: the workers; node: itself
        return max(vm_hwm_kib(p) for p in workers) / 1024


# ---------------------------------------------------------------- wrk

def wrk(port: int, *, method="GET", path="/", body=None, headers=None, values=None, seconds=8,
        connections=16, threads=1, rate=0.0, meter: CpuMeter, workdir: Path) -> dict:
    out = workdir / f"wrk-{secrets.token_hex(4)}.json"
    env = dict(os.environ, BENCH_METHOD=method, BENCH_PATH=path, BENCH_OUT=str(out), BENCH_THREADS=str(threads),
               BENCH_RATE=str(rate / threads))
    if body is not None:
        env["BENCH_BODY"] = body
    if headers:
        env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    if values is not None:
        vfile = workdir / f"values-{secrets.token_hex(4)}.txt"
        vfile.write_text("\n".join("\t".join(v) if isinstance(v, tuple) else v for v in values) + "\n")
        env["BENCH_VALUES"] = str(vfile)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s",
           "-s", str(BENCH / "request.lua"), f"http://127.0.0.1:{port}"]
    before, busy0, kids0 = meter.snapshot(), machine_busy(), children_cpu()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    after, busy1, kids1 = meter.snapshot(), machine_busy(), children_cpu()
    if p.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed: {p.stdout}\n{p.stderr}")
    r = json.loads(out.read_text())
    app_cpu, back_cpu = CpuMeter.delta(before, after)
    secs = r["duration_us"] / 1e6
    errors = sum(r["errors"].values())
    ok = max(r["requests"] - errors, 0)
    return {
        "requests": r["requests"], "errors": r["errors"], "ok": ok, "seconds": round(secs, 2),
        "rps": r["requests"] / secs, "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
        "mean_ms": r["latency_us"]["mean"] / 1000,
        "cpu_ms_per_req": 1000 * app_cpu / max(r["requests"], 1),
        "backend_cpu_ms_per_req": 1000 * back_cpu / max(r["requests"], 1),
        "app_cpu_s": app_cpu, "worker_hwm_mib": meter.worker_hwm_mib(),
        # CPU-seconds per second the rest of the machine (other people's jobs) used meanwhile: a noisy
        # neighbour lowers req/s and raises latency; CPU per request is much less sensitive to it.
        "other_cores_busy": max(0.0, ((busy1 - busy0) - app_cpu - back_cpu - (kids1 - kids0)) / secs),
        "loadavg": open("/proc/loadavg").read().split()[0],
    }


def machine_busy() -> float:
    """CPU-seconds the whole machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK  # all but idle and iowait


def children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout=60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} (see its log)")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout}s")


# ---------------------------------------------------------------- nodes with a CPU budget each

class CpuBudget:
    """A cgroup whose processes may use at most `cores` CPUs in total (CFS quota: cgroup v1's cpu controller,
    or v2's cpu.max). It stands in for a machine of that size, so that one small box can hold two such
    "machines" next to the load generator, PostgreSQL and Redis. OSError where cgroups cannot be written
    (not root, or no cpu controller)."""

    def __init__(self, name: str, cores: float):
        quota = str(int(cores * 100_000))
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path, self.v2 = v1 / name, False
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text("100000")
            (self.path / "cpu.cfs_quota_us").write_text(quota)
        elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            self.path, self.v2 = v2 / name, True
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} 100000")
        else:
            raise OSError("no cgroup cpu controller here")
        self.cores = cores

    def command(self, cmd: list[str]) -> list[str]:
        """`cmd`, started inside the budget (its children, e.g. gunicorn's workers, inherit it)."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh", *cmd]

    def throttled_s(self) -> float:
        """Seconds the group's processes were held back because the budget was used up."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("throttled_usec", 0)) / 1e6 if self.v2 else int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def scale_out(idp: "IdP", args, env: dict, specs: dict, work: Path) -> dict:
    """Two nodes against one: each node is a gunicorn with `--node-cores` CPUs of its own (a CpuBudget), the
    same database, Redis and key ring. Client credentials (no shared state but the client) and code exchange
    (a Redis consume and PostgreSQL writes on each request): one node alone, both at once with the same total
    number of connections (throughputs added), one node alone again."""
    S, C = args.seconds, args.connections
    budgets, nodes, out = [], [], {"node_cores": args.node_cores, "node_workers": args.node_workers,
                                   "threads": args.threads, "endpoints": {}}
    try:
        for i in (1, 2):
            b = CpuBudget(f"idp-bench-node{i}-{os.getpid()}", args.node_cores)
            budgets.append(b)
            port = args.port + 40 + i
            cmd = gunicorn_cmd("wsgi:app", port, args, workers=args.node_workers)
            nodes.append((port, spawn(b.command(cmd), env=env, logfile=work / f"node{i}.log"), b))
        for port, proc, _ in nodes:
            wait_ready(f"http://127.0.0.1:{port}/.well-known/openid-configuration", proc, f"node on {port}", 120)
        meters = {port: CpuMeter([proc.pid]) for port, proc, _ in nodes}
        for port, _, _ in nodes:  # warm every worker (imports, pools) before measuring
            wrk(port, seconds=3, connections=2 * args.node_workers, meter=meters[port], workdir=work,
                **specs["client_credentials"])

        def values(ep: str, n: int) -> list[str] | None:
            return idp.mint_codes(n) if ep == "code_exchange" else None

        def one_node(ep: str, spec: dict, n: int) -> dict:
            port, _, budget = nodes[0]
            held = budget.throttled_s()
            r = wrk(port, seconds=S, connections=C, values=values(ep, n), meter=meters[port], workdir=work, **spec)
            r["throttled_s"] = budget.throttled_s() - held
            return r

        for ep in ("client_credentials", "code_exchange"):
            spec = {k: v for k, v in specs[ep].items() if k != "values"}
            # Codes for one node at full speed (an exchange costs more than a client-credentials token).
            cc = out["endpoints"].get("client_credentials", {}).get("one_node_rps", 0)
            before = one_node(ep, spec, int(cc * 1.2 * S) + 50)
            two_vals = values(ep, int(before["rps"] * 2.4 * S) + 100)
            res, held = {}, [b.throttled_s() for b in budgets]

            def go(i, port):
                vals = two_vals[i::2] if two_vals else None
                res[port] = wrk(port, seconds=S, connections=C // 2, values=vals, meter=meters[port], workdir=work,
                                **spec)
            ths = [threading.Thread(target=go, args=(i, port)) for i, (port, _, _) in enumerate(nodes)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            for (port, _, b), h in zip(nodes, held):
                res[port]["throttled_s"] = b.throttled_s() - h
            # One node again: the ratio is taken against the mean of before and after, so that a drift in the
            # machine's speed during the pass does not pass for scale-out (or its absence).
            after = one_node(ep, spec, int(before["rps"] * 1.2 * S) + 50)
            one_rps = (before["rps"] + after["rps"]) / 2
            total = sum(r["rps"] for r in res.values())
            out["endpoints"][ep] = {
                "one_node_rps": one_rps, "two_nodes_rps": total, "ratio": total / one_rps,
                "one_node": before, "one_node_after": after, "per_node": {str(k): v for k, v in res.items()},
                "errors": sum(r["requests"] - r["ok"] for r in [before, after, *res.values()]),
            }
            log(f"scale-out {ep}: one node {before['rps']:.0f} then {after['rps']:.0f} req/s, two nodes "
                f"{total:.0f} req/s = {total / one_rps:.2f}x ({args.node_cores} cores each)")
    finally:
        for _, proc, _ in nodes:
            stop(proc)
        for b in budgets:
            b.remove()
    return out


# ---------------------------------------------------------------- the servers under test

class Target:
    """One server: how to reach its endpoints and how to mint single-use values for it."""

    name: str
    port: int
    proc: subprocess.Popen
    client_id: str
    secret: str
    verifier: str
    challenge: str

    def __init__(self):
        self.verifier, self.challenge = pkce()
        self.seed = None  # cookies of a signed-in browser whose consent is recorded

    def url(self, path):
        return f"http://localhost:{self.port}{path}"

    def absolute(self, loc):
        return loc if loc.startswith("http") else self.url(loc)

    def auth_params(self) -> dict:
        raise NotImplementedError

    def _session(self) -> requests.Session:
        s = requests.Session()
        if self.seed is not None:
            s.cookies.update(self.seed)
        return s

    def mint_codes(self, n: int, parallel=4) -> list[str]:
        if self.seed is None:
            s = requests.Session()
            self.first_code(s)
            self.seed = s.cookies
        local = threading.local()

        def one(_):
            if not hasattr(local, "s"):
                local.s = self._session()
            return self.code(local.s)

        with ThreadPoolExecutor(parallel) as ex:
            return list(ex.map(one, range(n)))

    def code(self, s: requests.Session) -> str:
        r = s.get(self.url(self.authorize_path), params=self.auth_params(), allow_redirects=False)
        for _ in range(10):
            loc = r.headers.get("Location", "")
            if r.status_code in (302, 303) and loc.startswith(REDIRECT):
                return parse_qs(urlsplit(loc).query)["code"][0]
            if r.status_code in (302, 303):
                r = s.get(self.absolute(loc), allow_redirects=False)
                continue
            r = self.interact(s, r)
        raise RuntimeError(f"{self.name}: no code after 10 hops (last {r.status_code} {r.url})")

    def first_code(self, s):
        return self.code(s)

    def interact(self, s, r):
        raise RuntimeError(f"{self.name}: unexpected {r.status_code} at {r.url}: {r.text[:300]}")

    def exchange(self, code: str) -> dict:
        r = requests.post(self.url(self.token_path), data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": self.verifier}, headers={"Authorization": basic(self.client_id, self.secret)})
        r.raise_for_status()
        return r.json()

    def mint_tokens(self, n: int, parallel=4) -> list[dict]:
        codes = self.mint_codes(n, parallel)
        with ThreadPoolExecutor(parallel) as ex:
            return list(ex.map(self.exchange, codes))


class IdP(Target):
    authorize_path = "/authorize"
    token_path = "/token"
    introspect_path = "/introspect"
    userinfo_path = "/userinfo"
    jwks_path = "/jwks.json"

    def __init__(self, port, proc, client_id, secret, email, password):
        super().__init__()
        self.name, self.port, self.proc = "idp", port, proc
        self.client_id, self.secret, self.email, self.password = client_id, secret, email, password

    def auth_params(self):
        return {"client_id": self.client_id, "response_type": "code", "redirect_uri": REDIRECT,
                "scope": "openid profile email offline_access", "state": secrets.token_urlsafe(8),
                "code_challenge": self.challenge, "code_challenge_method": "S256"}

    def interact(self, s, r):
        html = r.text
        form = re.search(r'<form method="post" action="([^"]+)"', html)
        csrf = CSRF.search(html)
        if r.status_code != 200 or not form or not csrf:
            return super().interact(s, r)
        action = self.absolute(unescape(form.group(1)))
        token = unescape(csrf.group(1) or csrf.group(2))
        iid = re.search(r'name="interaction" type="hidden" value="([^"]*)"', html)
        data = {"csrf_token": token, "interaction": unescape(iid.group(1)) if iid else ""}
        if 'name="password"' in html:
            data.update(email=self.email, password=self.password)
        elif 'name="decision"' in html:
            data.update(decision="allow", purpose=re.findall(r'name="purpose" value="([^"]+)" checked(?! disabled)>', html))
        else:
            return super().interact(s, r)
        return s.post(action, data=data, allow_redirects=False)

    def login_pairs(self, n: int) -> list[tuple[str, str]]:
        """n browsers that opened the sign-in page: (Cookie header, CSRF token of that session)."""
        pairs = []
        for _ in range(n):
            s = requests.Session()
            r = s.get(self.url("/login"))
            m = CSRF.search(r.text)
            cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
            pairs.append((cookie, quote(unescape(m.group(1) or m.group(2)), safe="")))
        return pairs


class OidcProvider(Target):
    authorize_path = "/auth"
    token_path = "/token"
    introspect_path = "/token/introspection"
    userinfo_path = "/me"
    jwks_path = "/jwks"

    def __init__(self, port, proc, secret, client_id="bench"):
        super().__init__()
        self.name, self.port, self.proc, self.client_id, self.secret = "oidc-provider", port, proc, client_id, secret

    def auth_params(self):
        scope = "openid profile email offline_access" + (" api" if self.client_id == "bench" else "")
        return {"client_id": self.client_id, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope,
                "state": secrets.token_urlsafe(8), "code_challenge": self.challenge, "code_challenge_method": "S256"}


# ---------------------------------------------------------------- the run

def machine() -> dict:
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.+)", cpu)
    mhz = re.search(r"cpu MHz\s*:\s*(.+)", cpu)
    free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": model.group(1).strip() if model else "unknown", "mhz": mhz.group(1).strip() if mhz else "?",
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout),
        "free": free, "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines() or ["?"])[0],
        "postgres": psycopg.connect(ADMIN_DB, autocommit=True).execute("show server_version").fetchone()[0],
        "redis": redis.Redis.from_url("redis://127.0.0.1:6379/0").info()["redis_version"],
        "oidc_provider": json.loads((BENCH / "oidc-provider/node_modules/oidc-provider/package.json").read_text())[
            "version"],
    }


def ensure_tools(profile: bool) -> None:
    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("installing Debian's wrk")
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "wrk"], check=False,
                           stdout=subprocess.DEVNULL)
        if shutil.which("wrk") is None:
            sys.exit("make bench needs wrk: apt-get install wrk (Debian's package)")
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("make bench needs Node.js 20+ and npm (apt-get install nodejs npm) for the oidc-provider baseline")
    if not (BENCH / "oidc-provider/node_modules/oidc-provider").exists():
        log("npm ci in bench/oidc-provider")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH / "oidc-provider",
                       check=True)
    if profile and not (BIN / "py-spy").exists():
        log("installing py-spy (pip) for the profile")
        subprocess.run([str(BIN / "pip"), "install", "--quiet", "py-spy"], check=False)


def gunicorn_cmd(app: str, port: int, args, workers: int | None = None) -> list[str]:
    return [str(BIN / "gunicorn"), "-k", args.worker_class, "-w", str(workers or args.workers),
            "--threads", str(args.threads), "-b", f"127.0.0.1:{port}", "--keep-alive", "30", "--backlog", "512", app]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "8")),
                    help="duration of each wrk run (default 8)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=default_workers(),
                    help="gunicorn workers (default: app/gunicorn_conf.py's, one per core, at least 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker-class", default=WORKER_CLASS)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-granian", action="store_true", help="skip the IdP served by granian")
    ap.add_argument("--node-cores", type=float, default=0.5,
                    help="CPU budget of each node in the two-node pass (default 0.5)")
    ap.add_argument("--node-workers", type=int, default=2, help="gunicorn workers of each node there (default 2)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    ensure_tools(not args.no_profile)

    work = Path(tempfile.mkdtemp(prefix="idp-bench-"))
    dbname = f"idp_bench_{os.getpid()}"
    admin = psycopg.connect(ADMIN_DB, autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    r = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
    r.flushdb()
    port, op_port, ceil_port, port_g = args.port, args.port + 10, args.port + 20, args.port + 30
    env = dict(
        os.environ,
        IDP_ISSUER=f"http://localhost:{port}",
        SECRET_KEY=secrets.token_urlsafe(48),
        DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
        REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
        IDP_KEYS_DIR=str(work / "keys"),
        IDP_RATELIMIT_ENABLED="false",
        IDP_CODE_TTL="600",  # pre-minted codes must outlive the minting of the others; cost is unchanged
        IDP_LOG_LEVEL="WARNING",
        FLASK_APP="wsgi",
        PYTHONPATH=str(ROOT),  # the worker class (app.gunicorn_worker) for the ceiling too, which runs in bench/
    )
    results: dict = {"machine": machine(), "settings": {
        "seconds": args.seconds, "connections": args.connections, "workers": args.workers, "threads": args.threads,
        "worker_class": args.worker_class}, "runs": {}}
    try:
        flask = [str(BIN / "flask"), "--app", "wsgi"]
        subprocess.run(flask + ["db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
        created = json.loads(subprocess.run(
            flask + ["clients", "create", "--name", "Bench", "--redirect-uri", REDIRECT,
                     "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                     "--grant-type", "client_credentials", "--scope", "openid profile email offline_access",
                     "--require-pkce", "--json"], env=env, cwd=ROOT, check=True, capture_output=True,
            text=True).stdout.strip().splitlines()[-1])
        email, password = "bench@example.com", secrets.token_urlsafe(16)
        subprocess.run(flask + ["users", "create", "--email", email, "--password", password, "--name", "Bench Customer",
                                "--email-verified"], env=env, cwd=ROOT, check=True, capture_output=True)
        op_secret = secrets.token_urlsafe(32)

        log(f"starting gunicorn ({args.workers} {args.worker_class} workers x {args.threads} threads), "
            "oidc-provider and the ceiling")
        idp_proc = spawn(gunicorn_cmd("wsgi:app", port, args), env=env, logfile=work / "idp.log")
        op_proc = spawn(["node", "server.mjs", str(op_port), op_secret], cwd=BENCH / "oidc-provider",
                        env=dict(os.environ, NODE_ENV="production"), logfile=work / "oidc-provider.log")
        ceil_proc = spawn(gunicorn_cmd("ceiling:app", ceil_port, args), cwd=BENCH, env=env,
                          logfile=work / "ceiling.log")
        wait_ready(f"http://127.0.0.1:{port}/.well-known/openid-configuration", idp_proc, "gunicorn (idp)")
        wait_ready(f"http://127.0.0.1:{op_port}/.well-known/openid-configuration", op_proc, "oidc-provider")
        wait_ready(f"http://127.0.0.1:{ceil_port}/", ceil_proc, "ceiling")

        idp = IdP(port, idp_proc, created["client_id"], created["client_secret"], email, password)
        op = OidcProvider(op_port, op_proc, op_secret)
        op_opaque = OidcProvider(op_port, op_proc, op_secret, client_id="bench-opaque")
        meters = {"idp": CpuMeter([idp_proc.pid]), "oidc-provider": CpuMeter([op_proc.pid]),
                  "ceiling": CpuMeter([ceil_proc.pid])}
        S, C = args.seconds, args.connections

        def run(server: str, endpoint: str, port_, **kw):
            log(f"{server:14s} {endpoint:22s} …")
            res = wrk(port_, seconds=S, connections=C, meter=meters[server], workdir=work, **kw)
            results["runs"].setdefault(server, {})[endpoint] = res
            log(f"{server:14s} {endpoint:22s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.1f} ms  "
                f"p99 {res['p99_ms']:6.1f} ms  cpu {res['cpu_ms_per_req']:.2f} ms/req  errors {res['errors']}")
            return res

        # Warm up every server (imports, connection pools, JIT) so the first measured run is not penalised.
        for t in (idp, op):
            t.mint_tokens(20)
        for p_, path in ((port, "/.well-known/openid-configuration"), (op_port, "/.well-known/openid-configuration")):
            wrk(p_, path=path, seconds=2, connections=4, meter=meters["idp"], workdir=work)

        specs = {}  # endpoint -> (method, path, body, headers) per target, for the paced pass

        def endpoints(t: Target, server: str):
            auth = {"Authorization": basic(t.client_id, t.secret)}
            post = dict(method="POST")
            cc_body = "grant_type=client_credentials" + ("&scope=api" if server == "oidc-provider" else "")
            specs[(server, "discovery")] = dict(path="/.well-known/openid-configuration")
            specs[(server, "jwks")] = dict(path=t.jwks_path)
            specs[(server, "client_credentials")] = dict(**post, path=t.token_path, body=cc_body, headers=auth)
            for ep in ("discovery", "jwks", "client_credentials"):
                run(server, ep, t.port, **specs[(server, ep)])
            cc = results["runs"][server]["client_credentials"]["rps"]
            n = int(cc * S * 1.1) + 100
            log(f"{server}: minting {n} codes")
            codes = t.mint_codes(n)
            specs[(server, "code_exchange")] = dict(
                **post, path=t.token_path, headers=auth,
                body=f"grant_type=authorization_code&code={{1}}&redirect_uri={quote(REDIRECT, safe='')}"
                     f"&code_verifier={t.verifier}")
            run(server, "code_exchange", t.port, values=codes, **specs[(server, "code_exchange")])
            n = int(max(results["runs"][server]["code_exchange"]["rps"], cc) * S * 1.5) + 100  # refresh may outrun both
            log(f"{server}: minting {n} refresh tokens")
            rts = [x["refresh_token"] for x in t.mint_tokens(n)]
            specs[(server, "refresh")] = dict(**post, path=t.token_path, headers=auth,
                                              body="grant_type=refresh_token&refresh_token={1}")
            run(server, "refresh", t.port, values=rts, **specs[(server, "refresh")])
            # Reusable access tokens for userinfo and introspection (oidc-provider: opaque ones, see server.mjs).
            holder = op_opaque if server == "oidc-provider" else t
            ats = [x["access_token"] for x in holder.mint_tokens(8)]
            hauth = {"Authorization": basic(holder.client_id, holder.secret)}
            specs[(server, "introspection")] = dict(**post, path=t.introspect_path, headers=hauth,
                                                    body="token={1}&token_type_hint=access_token", values=ats)
            specs[(server, "userinfo")] = dict(path=t.userinfo_path, headers={"Authorization": "Bearer {1}"}, values=ats)
            run(server, "introspection", t.port, **specs[(server, "introspection")])
            run(server, "userinfo", t.port, **specs[(server, "userinfo")])

        endpoints(idp, "idp")
        # Password sign-in: each POST carries the cookie and CSRF token of its own browser session
        # (64 pre-opened sign-in pages, rotated; Flask-WTF tokens stay valid for the whole session).
        pairs = idp.login_pairs(64)
        body = f"email={quote(email, safe='')}&password={quote(password, safe='')}&csrf_token={{2}}"
        specs[("idp", "password_sign_in")] = dict(method="POST", path="/login", body=body,
                                                  headers={"Cookie": "{1}"}, values=pairs)
        run("idp", "password_sign_in", port, **specs[("idp", "password_sign_in")])
        if not args.no_granian:
            # The same app, database, Redis and keys served by granian (python -m app.serve, the other production
            # server) with the same number of workers and threads, while gunicorn idles.
            log("starting granian (python -m app.serve) on the same database, Redis and keys")
            g_proc = spawn_granian(port_g, env, args.workers, args.threads, work / "idp-granian.log")
            wait_ready(f"http://127.0.0.1:{port_g}/.well-known/openid-configuration", g_proc, "granian (idp)")
            meters["idp-granian"] = CpuMeter([g_proc.pid])
            idp_g = IdP(port_g, g_proc, created["client_id"], created["client_secret"], email, password)
            idp_g.mint_tokens(20)
            endpoints(idp_g, "idp-granian")
            stop(g_proc)
        endpoints(op, "oidc-provider")
        specs[("ceiling", "client_credentials")] = dict(method="POST", path="/", body="grant_type=client_credentials")
        run("ceiling", "client_credentials", ceil_port, **specs[("ceiling", "client_credentials")])

        # Paced pass: 80 % of each measured peak of the IdP, on a fixed schedule (request.lua's BENCH_RATE; wrk 4 has
        # no -R), so the achieved rate is reported next to the target and falls short only if the server does.
        results["paced"] = {}
        for ep, peak in list(results["runs"]["idp"].items()):
            target = 0.8 * peak["rps"]
            # As many connections as the peak run: a connection waits for its own response, so too few of them
            # cap the rate below the target (run 11 with fewer: 76 % instead of 80 %); idle ones cost nothing.
            conns = C
            spec = dict(specs[("idp", ep)])
            if ep == "code_exchange":
                spec["values"] = idp.mint_codes(int(target * S * 1.1) + 50)
            elif ep == "refresh":
                spec["values"] = [x["refresh_token"] for x in idp.mint_tokens(int(target * S * 1.1) + 50)]
            log(f"idp paced {ep}: target {target:.0f} req/s ({conns} connections)")
            res = wrk(port, seconds=S, connections=conns, rate=target, meter=meters["idp"], workdir=work, **spec)
            res.update(target_rps=target, peak_rps=peak["rps"], connections=conns)
            results["paced"][ep] = res
            log(f"idp paced {ep}: {res['rps']:.0f} req/s ({100 * res['rps'] / peak['rps']:.0f} % of peak), "
                f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")

        # Two nodes against one, each with a CPU budget of its own (a cgroup standing in for a machine).
        try:
            results["scale_out"] = scale_out(idp, args, env, {ep: specs[("idp", ep)] for ep in
                                                              ("client_credentials", "code_exchange")}, work)
        except OSError as exc:
            log(f"scale-out pass skipped: {exc}")
            results["scale_out"] = {"skipped": str(exc)}

        if not args.no_profile:
            results["profile"] = profile(idp_proc.pid, port, specs[("idp", "client_credentials")], S, C, work,
                                         meters["idp"])
    finally:
        stop_all()
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        except psycopg.Error as exc:
            log(f"could not drop {dbname}: {exc}")
        r.flushdb()
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in work.glob("*.log")}
        shutil.rmtree(work, ignore_errors=True)
    (BENCH / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    Path(args.out).write_text(report(results))
    log(f"wrote {args.out} and bench/results.json")
    bad = [f"{s}/{e}" for s, eps in results["runs"].items() for e, v in eps.items() if v["ok"] == 0]
    if bad:
        log("endpoints with no successful request: " + ", ".join(bad))
        for k, v in logs.items():
            log(f"--- {k}\n{v}")
        return 1
    return 0


def profile(master: int, port: int, spec: dict, seconds: int, conns: int, work: Path, meter) -> dict:
    """py-spy samples every gunicorn worker while wrk drives the client-credentials token endpoint.

    All of them: wrk's keep-alive connections stay with the workers that accepted them, so one worker picked in
    advance may serve none of the requests (run 8's first attempt sampled an idle worker)."""
    spy = BIN / "py-spy"
    if not spy.exists():
        return {"error": "py-spy is not installed"}
    workers = [p for p in descendants(master) if p != master]
    raw = work / "profile.txt"
    p = subprocess.Popen([str(spy), "record", "--pid", str(master), "--subprocesses", "--duration", str(seconds),
                          "--rate", "250", "--format", "raw", "--output", str(raw)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    STARTED.append(p)
    time.sleep(0.5)
    wrk(port, seconds=seconds, connections=conns, meter=meter, workdir=work, **spec)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stop(p)
    if not raw.exists():
        return {"error": "py-spy wrote nothing: " + (p.stderr.read().decode()[-500:] if p.stderr else "")}
    inclusive, self_ = collections.Counter(), collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]  # py-spy's process label
        frames = [re.sub(r":\d+\)$", ")", re.sub(r"\(.*?(?:site-packages/|lib/python3\.\d+/|%s/)" % re.escape(str(ROOT)), "(", f))
                  for f in frames]
        # Only samples of request handling (the poller threads and idle waits are not the endpoint's cost).
        if not any("handle_request" in f or "wsgi_app" in f for f in frames):
            continue
        total += n
        self_[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    (BENCH / "profile-client-credentials.txt").write_text(raw.read_text())
    if not total:
        return {"samples": 0, "workers": len(workers)}
    return {"samples": total, "workers": len(workers),
            "self": [(f, n / total) for f, n in self_.most_common(25)],
            "inclusive": [(f, n / total) for f, n in inclusive.most_common(60)]}


# ---------------------------------------------------------------- the report

LABELS = {
    "discovery": "Discovery (GET)", "jwks": "JWKS (GET)", "client_credentials": "Token: client credentials",
    "code_exchange": "Token: authorization code (+PKCE)", "refresh": "Token: refresh (rotation)",
    "introspection": "Introspection", "userinfo": "Userinfo (GET)", "password_sign_in": "Password sign-in (POST /login)",
}


def report(res: dict) -> str:
    m, st, runs = res["machine"], res["settings"], res["runs"]
    idp, op, ceil = runs["idp"], runs.get("oidc-provider", {}), runs.get("ceiling", {})
    gran = runs.get("idp-granian", {})
    L = []
    w = L.append
    w("# Performance\n")
    w("Figures of the latest `make bench` run (bench/run.py; how and why in bench/README.md). "
      "All servers ran on this one machine, one after the other, in the same run; the load generator "
      "(wrk) ran on the same cores, so absolute throughput is lower than on a dedicated server — "
      "the ratios are what to read.\n")
    w("## Machine\n")
    w(f"- CPU: {m['cpu']} ({m['mhz']} MHz), `nproc` = {m['nproc']}")
    w(f"- Kernel {m['kernel']}; Python {m['python']}; Node.js {m['node']}; PostgreSQL {m['postgres']}; "
      f"Redis {m['redis']}; {m['wrk']}; oidc-provider {m['oidc_provider']}")
    w("- `free -m`:\n\n```\n" + m["free"] + "\n```\n")
    w("## Setup\n")
    w(f"- IdP: gunicorn `wsgi:app`, {st['workers']} `{st['worker_class']}` workers × {st['threads']} threads, "
      "PostgreSQL (a fresh database, dropped afterwards), Redis (`REDIS_URL`, database 15, flushed), a random "
      "`SECRET_KEY`, rate limits off (`IDP_RATELIMIT_ENABLED=false`), log level WARNING, "
      "`IDP_CODE_TTL=600` (pre-minted codes must stay valid while the others are minted; the cost of an "
      "exchange does not depend on it).")
    w("- `IDP_ISSUER=http://localhost:PORT`: the app refuses an http issuer outside development mode and "
      "wrk talks plain HTTP on loopback (no TLS terminator in front). Development mode only changes the "
      "demo, the mail outbox, the SSRF allowance for localhost and the SECRET_KEY check; none of them is on "
      "the measured paths, and a real random SECRET_KEY is set anyway.")
    w("- oidc-provider: bench/oidc-provider/server.mjs, one Node.js process, in-memory adapter "
      "(its quick-start storage: no database round trip, which favours it), the same client settings, "
      "lifetimes, PKCE, refresh rotation and RS256 JWT access tokens (resource indicator); userinfo and "
      "introspection use opaque access tokens there, because oidc-provider accepts only those at these "
      "endpoints.")
    w("- Ceiling: bench/ceiling.py, a Flask app whose `POST /` signs one RS256 JWT with joserfc, same gunicorn "
      "settings.")
    if gran:
        w(f"- IdP on granian: the same app, database, Redis and keys served by `python -m app.serve` (granian, "
          f"{st['workers']} workers × {st['threads']} blocking threads, access log off) while gunicorn idles. "
          "The paced pass and the two-node pass use gunicorn; the first target is shown for both servers.")
    w(f"- Load: wrk, 1 thread, {st['connections']} keep-alive connections, {st['seconds']} s per endpoint, "
      "127.0.0.1 only. Single-use values (codes, refresh tokens) are minted beforehand over HTTP and each is "
      "sent once; sign-in rotates 64 pre-opened sign-in pages (cookie + their own CSRF token).")
    w("- CPU per request = utime+stime of all server processes (gunicorn master + workers, or the node "
      "process) from /proc/PID/stat before and after, divided by requests. PostgreSQL + Redis CPU is shown "
      "apart. Peak memory = the largest VmHWM of one worker since start (so it only grows down the table).\n")
    w("## Results\n")
    w("| Endpoint | Server | req/s | p50 ms | p99 ms | CPU ms/req | DB+Redis CPU ms/req | peak RSS/worker MiB | errors | other jobs' cores busy |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ep, label in LABELS.items():
        for server, rows in (("IdP", idp), ("IdP on granian", gran), ("oidc-provider", op),
                             ("ceiling (1 JWS)", ceil)):
            if ep in rows:
                r = rows[ep]
                errs = sum(r["errors"].values())
                w(f"| {label} | {server} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['cpu_ms_per_req']:.2f} | {r['backend_cpu_ms_per_req']:.2f} | {r['worker_hwm_mib']:.0f} | "
                  f"{errs} | {r.get('other_cores_busy', 0):.2f} |")
    w("")
    w("### IdP / oidc-provider\n")
    w("Throughput ratio (req/s, both using every core they can: gunicorn both cores, Node.js one) and "
      "efficiency ratio (requests per CPU-second, i.e. per core; >1 means the IdP is cheaper).\n")
    w("| Endpoint | req/s ratio | per-core ratio | per-core ratio, IdP on granian |")
    w("|---|---:|---:|---:|")
    for ep, label in LABELS.items():
        if ep in idp and ep in op:
            a, b = idp[ep], op[ep]
            g = f"{b['cpu_ms_per_req'] / gran[ep]['cpu_ms_per_req']:.2f}×" if ep in gran else "–"
            w(f"| {label} | {a['rps'] / b['rps']:.2f}× | {b['cpu_ms_per_req'] / a['cpu_ms_per_req']:.2f}× | {g} |")
    w("")
    if gran:
        w("### gunicorn and granian\n")
        w("The same app, database, Redis and keys, the same workers × threads; CPU per request of each server "
          "(lower is better) and granian's saving.\n")
        w("| Endpoint | gunicorn CPU ms/req | granian CPU ms/req | saving |")
        w("|---|---:|---:|---:|")
        for ep, label in LABELS.items():
            if ep in idp and ep in gran:
                a, g = idp[ep]["cpu_ms_per_req"], gran[ep]["cpu_ms_per_req"]
                w(f"| {label} | {a:.2f} | {g:.2f} | {100 * (a - g) / a:.0f} % |")
        w("")
    w("## Targets\n")
    cc = idp["client_credentials"]
    rows = []
    if "client_credentials" in op:
        v = op["client_credentials"]["cpu_ms_per_req"] / cc["cpu_ms_per_req"]
        rows.append(("Client-credentials token per CPU core ≥ 1.0× oidc-provider", f"{v:.2f}×", v >= 1.0))
    if "client_credentials" in op and "client_credentials" in gran:
        v = op["client_credentials"]["cpu_ms_per_req"] / gran["client_credentials"]["cpu_ms_per_req"]
        rows.append(("… the same, IdP on granian", f"{v:.2f}×", v >= 1.0))
    if "client_credentials" in ceil:
        v = ceil["client_credentials"]["cpu_ms_per_req"] / cc["cpu_ms_per_req"]
        v2 = cc["rps"] / ceil["client_credentials"]["rps"]
        rows.append(("Client-credentials token ≥ 70 % of the one-JWS Flask ceiling (per core)",
                     f"{100 * v:.0f} % (throughput {100 * v2:.0f} %)", v >= 0.7))
    for ep in ("code_exchange", "refresh"):
        v = idp[ep]["cpu_ms_per_req"] / cc["cpu_ms_per_req"]
        # The reference's own ratio, for scale: it keeps every token and code in memory.
        ref = (f" (oidc-provider's own: {op[ep]['cpu_ms_per_req'] / op['client_credentials']['cpu_ms_per_req']:.2f}×)"
               if ep in op and "client_credentials" in op else "")
        rows.append((f"{LABELS[ep]} ≤ 1.5× the CPU of a client-credentials token", f"{v:.2f}×{ref}", v <= 1.5))
    for ep, r in res.get("paced", {}).items():
        rows.append((f"p99 < 50 ms at 80 % of peak — {LABELS[ep]}",
                     f"{r['p99_ms']:.1f} ms at {r['rps']:.0f} req/s ({100 * r['rps'] / r['peak_rps']:.0f} % of peak)",
                     r["p99_ms"] < 50))
    so = res.get("scale_out", {})
    for ep, t in so.get("endpoints", {}).items():
        rows.append((f"Two nodes ≥ 1.8× one node — {LABELS[ep]}",
                     f"{t['ratio']:.2f}× ({t['two_nodes_rps']:.0f} vs {t['one_node_rps']:.0f} req/s, "
                     f"{so['node_cores']:g} cores per node)", t["ratio"] >= 1.8))
    w("| Target | Measured | Met |")
    w("|---|---|---|")
    for name, val, ok in rows:
        w(f"| {name} | {val} | {'yes' if ok else '**no**'} |")
    w("")
    w("The paced pass sends 80 % of the peak measured just before on a fixed schedule (bench/request.lua: Debian's "
      "wrk 4 has no `-R` and wrk2 is not packaged, so wrk's `delay()` hook hands each connection the next free "
      "slot). A server that keeps up is held to the target; one that does not shows a rate short of it, as a "
      "missed slot is not made up later. Latency is timed from the moment a request is written, so like wrk "
      "(not wrk2) it does not correct for coordinated omission.\n")
    if so.get("endpoints"):
        w("### Two nodes\n")
        w(f"Each node is a gunicorn ({so['node_workers']} `{st['worker_class']}` workers × {so['threads']} threads) "
          f"held to {so['node_cores']:g} CPU cores by a cgroup of its own (a CFS quota), standing in for a machine "
          "of that size; both share the one PostgreSQL, Redis and key ring. The budgets leave the rest of the "
          f"{res['machine']['nproc']} cores to wrk, PostgreSQL and Redis, so the nodes, not the load generator or "
          "the shared services, are what runs out. One node takes all the connections first; then both at once, "
          "half the connections each, and their throughputs are added; then one node again. The ratio is "
          "against the mean of the two one-node runs. 'Cores used' is the CPU the node's processes "
          "used per second (its budget is the most it can use); 'throttled' is the time the quota held the node's "
          "threads back, summed over the cores it ran on (so it can exceed the run's length).\n")
        w("| Endpoint | Nodes | req/s | p50 ms | p99 ms | CPU ms/req | cores used per node | throttled s | errors |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for ep, t in so["endpoints"].items():
            runs = [("one", t["one_node"])] + [(f"two: node {i}", r) for i, r in enumerate(t["per_node"].values(), 1)]
            runs += [("one, again", t["one_node_after"])] if "one_node_after" in t else []
            for nodes, r in runs:
                w(f"| {LABELS[ep]} | {nodes} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['cpu_ms_per_req']:.2f} | {r['app_cpu_s'] / r['seconds']:.2f} | {r['throttled_s']:.1f} | "
                  f"{r['requests'] - r['ok']} |")
        w("")
    elif so.get("skipped"):
        w(f"Two nodes: not measured ({so['skipped']}). The pass gives each node a CPU budget of its own with a "
          "cgroup, which needs root and the cgroup cpu controller.\n")
    prof = res.get("profile")
    if prof and not prof.get("samples"):
        w("## Profile: client-credentials token\n")
        w(f"Not available: {prof.get('error') or 'py-spy caught no sample inside request handling'}.\n")
    elif prof:
        w("## Profile: client-credentials token\n")
        who = (f"every gunicorn worker ({prof['workers']})" if "workers" in prof
               else f"one gunicorn worker (pid {prof['worker']})")
        w(f"py-spy, 250 Hz, {who} under the same wrk load; "
          f"{prof['samples']} samples inside request handling. Raw stacks: bench/profile-client-credentials.txt.\n")
        w("Inclusive (the function and what it calls), top entries:\n")
        w("| share | function |")
        w("|---:|---|")
        for f, s in prof["inclusive"][:40]:
            w(f"| {100 * s:.1f} % | `{f}` |")
        w("\nSelf time, top entries:\n")
        w("| share | function |")
        w("|---:|---|")
        for f, s in prof["self"][:20]:
            w(f"| {100 * s:.1f} % | `{f}` |")
        w("")
    notes = BENCH / "analysis.md"
    if notes.exists():
        w(notes.read_text())
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
