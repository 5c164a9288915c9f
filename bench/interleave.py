"""Interleaved comparisons under gunicorn: `.venv/bin/python bench/interleave.py [--rounds=3] [--seconds=6]`.

On a noisy host one pair of runs minutes apart does not decide a comparison (docs/performance.md): this script
alternates the cases round by round and prints medians. Two comparisons, each case behind its own gunicorn on
127.0.0.1, driven by wrk (16 keep-alive connections), CPU per request read from /proc like bench/run.py:

1. the IdP's client-credentials token (PostgreSQL + Redis, production settings as in `make bench`) against the
   one-JWS ceiling (bench/ceiling.py), both with the benchmark's gunicorn settings;
2. the ceiling alone under several gunicorn settings (gthread workers × threads, sync workers), to see what the
   server's settings cost apart from the app;
3. the IdP's code exchange and refresh against its client-credentials token (the "≤ 1.5×" target), codes and
   refresh tokens minted before each measured run (`--only=3` runs this one alone);
4. the IdP itself under several gunicorn settings (workers × threads, and plain gthread): client credentials and
   code exchange on each, to choose app/gunicorn_conf.py's defaults;
5. the IdP under gunicorn (app/gunicorn_conf.py's worker) against the IdP under granian (python -m app.serve), the
   same workers × threads, database, Redis and keys: client credentials, code exchange, refresh, introspection
   and userinfo, to choose between the two servers;
6. the IdP with its rate limits on (as in production: counters in Redis, a limit too high to be reached) against
   the IdP with them off (as `make bench` runs it): client credentials and introspection, what the limiter
   costs per request.

It creates and drops its own database and writes nothing else.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402 - bench/run.py's helpers (spawn, wrk, CpuMeter, gunicorn_cmd)

SETTINGS = {  # name -> (worker class, workers, threads)
    "4 x 2": (R.WORKER_CLASS, 4, 2),
    "gthread 4 x 2": ("gthread", 4, 2),
    "4 x 1": (R.WORKER_CLASS, 4, 1),
    "2 x 2": (R.WORKER_CLASS, 2, 2),
    "sync 4": ("sync", 4, 1),
}

IDP_SETTINGS = {  # comparison 4: name -> (worker class, workers, threads)
    "4 x 2": (R.WORKER_CLASS, 4, 2),
    "2 x 4": (R.WORKER_CLASS, 2, 4),
    "2 x 2": (R.WORKER_CLASS, 2, 2),
    "gthread 4 x 2": ("gthread", 4, 2),
}


def rounds(cases: dict, n: int, seconds: int, work: Path) -> dict:
    """cases: name -> (port, meter, wrk spec). Runs them in turn, n times; returns name -> [(cpu ms/req, req/s)]."""
    out = {name: [] for name in cases}
    def spec_of(spec: dict, run_seconds: int) -> dict:
        # A "mint" callable gives the run's single-use values (codes, refresh tokens), made before it is measured.
        spec = dict(spec)
        mint = spec.pop("mint", None)
        if mint is not None:
            spec["values"] = mint(run_seconds)
        return spec

    for name, (port, meter, spec) in cases.items():  # warm-up, not counted
        R.wrk(port, seconds=2, connections=16, meter=meter, workdir=work, **spec_of(spec, 2))
    for r in range(n):
        for name, (port, meter, spec) in cases.items():
            spec = spec_of(spec, seconds)
            # The cores each worker used: with plain gthread, connections opened together often all land on one.
            workers = [p for root in meter.roots for p in R.descendants(root) if p not in meter.roots]
            before = {p: R.cpu_ticks(p) for p in workers}
            res = R.wrk(port, seconds=seconds, connections=16, meter=meter, workdir=work, **spec)
            cores = " ".join(f"{(R.cpu_ticks(p) - before[p]) / R.CLK / res['seconds']:.2f}" for p in workers)
            errors = sum(res["errors"].values())
            if not errors:  # a run with errors (an expired token, a used code) measured something else: left out
                out[name].append((res["cpu_ms_per_req"], res["rps"]))
            print(f"  round {r + 1} {name:30s} {res['cpu_ms_per_req']:.3f} ms/req {res['rps']:7.0f} req/s "
                  f"errors {errors}{' (left out)' if errors else ''}  cores per worker: {cores}", flush=True)
    return out


def medians(out: dict) -> dict:
    found = {}
    for name, v in out.items():
        if not v:
            print(f"{name:32s} no run without errors")
            continue
        found[name] = statistics.median(a for a, _ in v)
        print(f"{name:32s} median {found[name]:.3f} ms/req {statistics.median(b for _, b in v):7.0f} req/s")
    return found


def endpoint_specs(target, auth: dict, post: dict, names: tuple[str, ...]) -> dict:
    """wrk specs of the IdP's endpoints by name; single-use values (codes, refresh tokens) and access tokens (the
    comparison outlasts their lifetime) are minted for each measured run."""
    token = dict(post, path="/token", headers=auth)
    access = {"mint": lambda seconds: [x["access_token"] for x in target.mint_tokens(8)]}
    specs = {
        "client credentials": dict(token),
        "code exchange": dict(token, mint=lambda seconds: target.mint_codes(int(900 * seconds * 1.5) + 100),
                              body="grant_type=authorization_code&code={1}&redirect_uri="
                                   f"{R.quote(R.REDIRECT, safe='')}&code_verifier={target.verifier}"),
        "refresh": dict(token, mint=lambda seconds: [x["refresh_token"] for x in
                                                     target.mint_tokens(int(900 * seconds * 1.5) + 100)],
                        body="grant_type=refresh_token&refresh_token={1}"),
        "introspection": dict(post, path="/introspect", headers=auth, **access,
                              body="token={1}&token_type_hint=access_token"),
        "userinfo": dict(path="/userinfo", headers={"Authorization": "Bearer {1}"}, **access),
    }
    return {name: specs[name] for name in names}


def against_second(args, work: Path, target, second, port: int, labels: tuple[str, str], specs: dict) -> None:
    """The IdP (``target``, labels[0]) and a second one on the same database, Redis and keys (``second`` on
    ``port``, labels[1]), alternated endpoint by endpoint; prints the medians and second / first."""
    R.wait_ready(f"http://127.0.0.1:{port}/.well-known/openid-configuration", second, labels[1])
    # One issuer (the environment's), database, Redis and keys: what is minted through the first is redeemed on
    # the second alike. Warm the second's workers first.
    R.IdP(port, second, target.client_id, target.secret, target.email, target.password).mint_tokens(20)
    meters = {labels[0]: (args.port, R.CpuMeter([target.proc.pid])), labels[1]: (port, R.CpuMeter([second.pid]))}
    cases = {f"{endpoint}: {label}": (meters[label][0], meters[label][1], spec)
             for endpoint, spec in specs.items() for label in labels}
    found = medians(rounds(cases, args.rounds, args.seconds, work))
    for endpoint in specs:
        a, b = found.get(f"{endpoint}: {labels[0]}"), found.get(f"{endpoint}: {labels[1]}")
        if a and b:
            print(f"{endpoint:20s} {labels[1]} / {labels[0]}, CPU per request (medians): {b / a:.2f}x "
                  f"({b - a:+.3f} ms)")
    R.stop(second)


def compare_servers(args, env: dict, work: Path, target, auth: dict, post: dict) -> None:
    """Comparison 5: gunicorn and granian serving the same app, alternated endpoint by endpoint."""
    print(f"5. the IdP under gunicorn ({args.workers} {args.worker_class} x {args.threads}) and under granian "
          f"({args.workers} workers x {args.threads} blocking threads)")
    port = args.port + 50
    granian = R.spawn_granian(port, env, args.workers, args.threads, work / "idp-granian.log")
    against_second(args, work, target, granian, port, ("gunicorn", "granian"), endpoint_specs(
        target, auth, post, ("client credentials", "code exchange", "refresh", "introspection", "userinfo")))


def compare_rate_limits(args, env: dict, work: Path, target, auth: dict, post: dict) -> None:
    """Comparison 6: the same gunicorn with the rate limiter on (production) and off (the benchmark)."""
    print(f"6. the IdP with rate limits off (as make bench) and on (counters in Redis; gunicorn, {args.workers} "
          f"{args.worker_class} x {args.threads})")
    port = args.port + 60
    # A limit no run reaches: every request is counted in Redis, none is refused (a refusal would be an error).
    limited = R.spawn(R.gunicorn_cmd("wsgi:app", port, args), logfile=work / "idp-limits.log", env=dict(
        env, IDP_RATELIMIT_ENABLED="true", IDP_RATELIMIT_TOKEN="1000000000 per minute"))
    against_second(args, work, target, limited, port, ("limits off", "limits on"),
                   endpoint_specs(target, auth, post, ("client credentials", "introspection")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--port", type=int, default=18600)
    ap.add_argument("--only", type=int, choices=(1, 2, 3, 4, 5, 6), help="run only this comparison")
    ap.add_argument("--workers", type=int, default=R.default_workers(),
                    help=f"the IdP's workers (default {R.default_workers()}: one per core, as make bench)")
    ap.add_argument("--threads", type=int, default=2, help="threads per worker (default 2, as make bench)")
    ap.add_argument("--worker-class", default=R.WORKER_CLASS, help=f"gunicorn worker class (default {R.WORKER_CLASS})")
    args = ap.parse_args()
    wanted = {args.only} if args.only else {1, 2, 3, 4, 5, 6}
    post = dict(method="POST", body="grant_type=client_credentials")
    with R.scratch(args.port, "interleave") as (work, env, created):
        bench = argparse.Namespace(workers=args.workers, threads=args.threads, worker_class=args.worker_class)
        auth = {"Authorization": R.basic(created["client_id"], created["client_secret"])}
        if wanted & {1, 3, 4, 5, 6}:
            idp = R.spawn(R.gunicorn_cmd("wsgi:app", args.port, bench), env=env, logfile=work / "idp.log")
            R.wait_ready(f"http://127.0.0.1:{args.port}/.well-known/openid-configuration", idp, "idp")
        if 1 in wanted:
            ceiling = R.spawn(R.gunicorn_cmd("ceiling:app", args.port + 1, bench), cwd=R.BENCH, env=env,
                              logfile=work / "ceiling.log")
            R.wait_ready(f"http://127.0.0.1:{args.port + 1}/", ceiling, "ceiling")
            print("1. client-credentials token: the IdP against the one-JWS ceiling "
                  f"(gunicorn, {args.workers} {args.worker_class} x {args.threads})")
            medians(rounds({"IdP": (args.port, R.CpuMeter([idp.pid]), dict(post, path="/token", headers=auth)),
                            "ceiling": (args.port + 1, R.CpuMeter([ceiling.pid]), dict(post, path="/"))},
                           args.rounds, args.seconds, work))
            R.stop(ceiling)
        if wanted & {3, 4, 5, 6}:
            email = "interleave@example.com"
            password = R.add_customer(env, email)
            target = R.IdP(args.port, idp, created["client_id"], created["client_secret"], email, password)
            target.mint_tokens(20)  # signs in and consents once; warms every worker
        if 3 in wanted:
            meter = R.CpuMeter([idp.pid])
            print("3. the IdP's code exchange and refresh against its client-credentials token "
                  f"(gunicorn, {args.workers} {args.worker_class} x {args.threads})")
            specs = endpoint_specs(target, auth, post, ("client credentials", "code exchange", "refresh"))
            found = medians(rounds({name: (args.port, meter, spec) for name, spec in specs.items()},
                                   args.rounds, args.seconds, work))
            for name in ("code exchange", "refresh"):
                if name in found and "client credentials" in found:
                    print(f"{name} / client credentials (medians): {found[name] / found['client credentials']:.2f}x")
        if 4 in wanted:
            print("4. the IdP under several gunicorn settings: client credentials and code exchange")
            cases, nodes = {}, []
            for i, (name, (klass, workers, threads)) in enumerate(IDP_SETTINGS.items()):
                port = args.port + 30 + i
                node = R.spawn(R.gunicorn_cmd("wsgi:app", port, argparse.Namespace(
                    workers=workers, threads=threads, worker_class=klass)), env=env, logfile=work / f"idp-{i}.log")
                R.wait_ready(f"http://127.0.0.1:{port}/.well-known/openid-configuration", node, name)
                nodes.append(node)
                meter = R.CpuMeter([node.pid])
                for endpoint, spec in endpoint_specs(target, auth, post, ("client credentials", "code exchange")).items():
                    cases[f"{name}: {endpoint}"] = (port, meter, spec)
            medians(rounds(cases, args.rounds, args.seconds, work))
            for node in nodes:
                R.stop(node)
        if 5 in wanted:
            compare_servers(args, env, work, target, auth, post)
        if 6 in wanted:
            compare_rate_limits(args, env, work, target, auth, post)
        if wanted & {1, 3, 4, 5, 6}:
            R.stop(idp)

        if 2 in wanted:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
