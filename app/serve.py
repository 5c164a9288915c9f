"""Serve the identity provider with granian, the faster of the two supported production servers.

    python -m app.serve

granian (https://github.com/emmett-framework/granian) parses HTTP in Rust and calls the same WSGI app
(``wsgi:app``) as gunicorn does with ``app/gunicorn_conf.py``; docs/performance.md measures both. The
defaults below match the gunicorn configuration where the two mean the same thing, and the environment
tunes them:

* ``GRANIAN_HOST`` / ``GRANIAN_PORT`` (``0.0.0.0`` / ``8000``).
* ``GRANIAN_WORKERS``: worker processes, default = the CPU cores it may use (``app.config.available_cores``), capped by ``GRANIAN_MAX_WORKERS`` (8). Each
  is a full copy of the app with its own database pool; HTTP parsing runs on granian's Rust threads, so
  one process per core keeps the cores busy (as with gunicorn, app/gunicorn_conf.py).
* ``GRANIAN_BLOCKING_THREADS`` (2): Python threads per worker that run requests, so a request waiting on
  PostgreSQL, Redis or argon2 does not idle the core (gunicorn's ``threads``).
* ``GRANIAN_WORKERS_KILL_TIMEOUT`` (30 s): on SIGTERM (a rolling deploy) workers finish in-flight
  requests for up to this long (gunicorn's ``graceful_timeout``).
* ``GRANIAN_WORKERS_LIFETIME`` (6 h, ``0`` = never): workers are replaced after this long, against slow
  memory growth (gunicorn's ``max_requests``). A worker that dies unexpectedly is always replaced.
* ``GRANIAN_ACCESS_LOG`` (``true``): one line per request on stdout, the same line as gunicorn's with
  app/gunicorn_conf.py (JSON with ``IDP_LOG_FORMAT=json``): the *path only* — never the query string, which
  carries authorization codes, ``state``, device user codes and ``id_token_hint`` — no request headers but the
  User-Agent, and the response's ``X-Request-ID``. The app writes it (``IDP_ACCESS_LOG``, app/access_log.py),
  since granian's own access log cannot carry the request id; granian's is off.

granian ignores ``X-Forwarded-*`` headers altogether; the app believes ``IDP_TRUSTED_PROXIES`` hops of
``X-Forwarded-For`` only on connections from ``IDP_TRUSTED_PROXY_ADDRESSES``, and the issuer is always
``IDP_ISSUER``, never ``Host``.
"""

from __future__ import annotations

import os

from .config import available_cores


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def default_workers(cores: int | None = None, cap: int | None = None) -> int:
    cores = cores or available_cores()
    cap = cap if cap is not None else int(_env("GRANIAN_MAX_WORKERS", "8"))
    return max(1, min(cores, cap))


def options() -> dict:
    """Keyword arguments for ``granian.Granian`` from the environment and the defaults above."""
    lifetime = int(_env("GRANIAN_WORKERS_LIFETIME", str(6 * 3600)))
    return {
        "address": _env("GRANIAN_HOST", "0.0.0.0"),
        "port": int(_env("GRANIAN_PORT", "8000")),
        "interface": "wsgi",
        "workers": int(_env("GRANIAN_WORKERS", str(default_workers()))),
        "blocking_threads": int(_env("GRANIAN_BLOCKING_THREADS", "2")),
        "websockets": False,
        "backlog": int(_env("GRANIAN_BACKLOG", "1024")),
        "respawn_failed_workers": True,
        "workers_kill_timeout": int(_env("GRANIAN_WORKERS_KILL_TIMEOUT", "30")),
        "workers_lifetime": lifetime or None,
        "log_level": _env("GRANIAN_LOG_LEVEL", "info"),
        "log_access": False,  # the app writes the access lines (access_log_env)
    }


def access_log_env() -> dict:
    """The workers' environment for the access log: the app writes it (``IDP_ACCESS_LOG``) unless turned off."""
    wanted = _env("GRANIAN_ACCESS_LOG", "true").lower() in ("1", "true", "yes", "on")
    return {"IDP_ACCESS_LOG": "true" if wanted else "false"}


def main() -> None:
    from granian import Granian

    for name, value in access_log_env().items():  # read by each worker's app (app/config.py)
        os.environ.setdefault(name, value)  # an operator's own IDP_ACCESS_LOG wins
    Granian("wsgi:app", **options()).serve()


if __name__ == "__main__":
    main()
