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
* ``GRANIAN_ACCESS_LOG`` (``true``): one line per request on stdout with the *path only* — never the
  query string, which carries authorization codes, ``state``, device user codes and ``id_token_hint`` —
  and no request headers.

granian ignores ``X-Forwarded-*`` headers altogether; the app believes ``IDP_TRUSTED_PROXIES`` hops of
``X-Forwarded-For`` only on connections from ``IDP_TRUSTED_PROXY_ADDRESSES``, and the issuer is always
``IDP_ISSUER``, never ``Host``.
"""

from __future__ import annotations

import os

from .config import available_cores

#: The access-log line: client address, time, method, path (no query string), protocol, status, duration.
ACCESS_LOG_FORMAT = '%(addr)s [%(time)s] "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).1fms'


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
        "log_access": _env("GRANIAN_ACCESS_LOG", "true").lower() in ("1", "true", "yes", "on"),
        "log_access_format": ACCESS_LOG_FORMAT,
    }


def main() -> None:
    from granian import Granian

    Granian("wsgi:app", **options()).serve()


if __name__ == "__main__":
    main()
