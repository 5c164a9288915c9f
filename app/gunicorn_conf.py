"""Production gunicorn configuration for the identity provider.

    gunicorn -c python:app.gunicorn_conf wsgi:app

Every value can be tuned from the environment (``GUNICORN_*`` below); command-line flags given after
``-c`` still win (gunicorn applies them last). See docs/production.md for the deployment around it.

What is set and why:

* **workers** = one per CPU core the process may use (its affinity, or a container's cgroup CPU limit if
  lower), at least 2 (so that a worker being recycled or
  replaced never leaves the node without one), capped by ``GUNICORN_MAX_WORKERS`` (default 8).
  ``GUNICORN_WORKERS`` sets the number outright. Not gunicorn's rule of thumb (2 × cores + 1, meant for
  single-threaded workers): with two threads per worker, processes beyond the cores only add context
  switches. Measured on 2 cores (``bench/interleave.py --only=4``, medians of three interleaved rounds),
  2 workers × 2 threads against 4 × 2: client-credentials token 0.98 against 1.10 ms of CPU (1 891 against
  1 706 req/s), code exchange 2.40 against 3.04 ms (643 against 555 req/s). Each worker is also a full copy
  of the app (≈ 130–150 MiB RSS) with its own database pool.
* **worker_class** ``app.gunicorn_worker.ThreadWorker`` (``GUNICORN_WORKER_CLASS``), gunicorn's ``gthread``
  that accepts a new connection only while one of its threads is free and keeps kept-alive connections spread
  over the workers, with **threads** (``GUNICORN_THREADS``,
  default 2): requests spend much of their time waiting on PostgreSQL, Redis and argon2 (which releases the
  GIL); two threads per worker keep a core busy while one of them waits, and keep-alive connections do not
  pin a whole process. Plain ``gthread`` lets one worker take every connection that arrives at once (a load
  balancer's keep-alive pool after a deploy): that worker then serves them all on one core while the others
  idle (app/gunicorn_worker.py has the figures).
* **timeout** (``GUNICORN_TIMEOUT``, 30 s): a worker silent for that long is killed and replaced. The
  slowest legitimate request is a password sign-in (argon2id, tens of ms) or a back-channel call bounded by
  ``IDP_BACKCHANNEL_TIMEOUT``; 30 s only catches real hangs.
* **graceful_timeout** (``GUNICORN_GRACEFUL_TIMEOUT``, 30 s): on SIGTERM (a rolling deploy) workers finish
  in-flight requests for up to this long. Keep the load balancer's deregistration delay at least as long.
* **keepalive** (``GUNICORN_KEEPALIVE``, 5 s): longer than gunicorn's default of 2 s and shorter than the
  idle timeout of common load balancers (AWS ALB 60 s, nginx upstream keepalive_timeout 60 s), so the
  proxy, not gunicorn, is the side that opens connections — no "connection reset" races.
* **max_requests** / **max_requests_jitter** (``GUNICORN_MAX_REQUESTS`` 10000, jitter 1000): each worker
  is recycled after about that many requests, staggered so that not all workers restart at once. Guards
  against slow memory growth; 0 disables it.
* **forwarded_allow_ips**: only from ``GUNICORN_FORWARDED_ALLOW_IPS`` (the proxies' addresses or CIDRs,
  comma-separated). Unset means "nobody": gunicorn then ignores ``X-Forwarded-Proto`` and friends from
  every peer (its own default would trust 127.0.0.1, or whatever the generic ``FORWARDED_ALLOW_IPS`` says).
  It governs only those scheme headers: ``X-Forwarded-For`` reaches the app, which believes
  ``IDP_TRUSTED_PROXIES`` hops of it only on connections from ``IDP_TRUSTED_PROXY_ADDRESSES``;
  neither changes the issuer, which is always ``IDP_ISSUER`` and never follows ``Host``.
* **accesslog** to stdout (``GUNICORN_ACCESSLOG``; ``-`` = stdout, empty = off) in a format that logs the
  request *path only*: no query string (``%(q)s``, or ``%(r)s``/``%(U)s%(q)s`` which contain it) — query
  strings carry authorization codes, ``state``, device user codes, ``id_token_hint`` and, from misbehaving
  clients, access tokens — and no ``Referer`` (``%(f)s``), which can carry a relying party's callback URL
  with its code. No request headers either (``Authorization``, cookies). Fields: client address, time,
  method, path, protocol, status, bytes, duration in ms, user agent and the response's ``X-Request-ID``
  (the request id of the app's log lines for that request). With ``IDP_LOG_FORMAT=json`` each access line is
  a JSON object instead, with the app's key names (``time``, ``level``, ``request_id``, ``method``, ``path`` …):
  ``logger_class`` (``JsonLogs``) puts ``app.observability.AccessJsonFormatter`` on gunicorn's access
  handlers, which builds the object from the request's values (gunicorn fills ``access_log_format`` without
  JSON escaping), and the app's masked ``JsonFormatter`` on its error handlers (start, workers, errors), so
  every line is JSON; gunicorn's handlers stay, so ``GUNICORN_ACCESSLOG``, ``GUNICORN_ERRORLOG`` and
  ``--access-logfile`` still decide where the lines go.
* **preload_app** ``False``: each worker imports the app itself after the fork. With preloading, the master
  would open the key ring (reading ``IDP_KEYS_DIR``, or the database with ``IDP_KEYS_STORE=database``), the
  SQLAlchemy engine (``_tune_sqlite``/the embedded store touch it) and the Redis pools before forking, and
  the workers would inherit those sockets and the key ring's cached state — shared connections across
  processes corrupt each other. (The outbox poller, ``IDP_OUTBOX_WORKER=thread``, would be fine either way:
  app/outbox.py starts it lazily at the first request of each process and restarts it when the pid
  changes, so it never runs in the master and exists exactly once per worker.) The cost is memory and a
  slower start: ~1–2 s per worker. ``GUNICORN_PRELOAD=true`` turns preloading on (faster start, copy-on-write
  memory); the ``post_fork`` hook below then drops the inherited database pool in each worker.
* **control socket** off unless ``GUNICORN_CONTROL_SOCKET`` names a path: gunicorn ≥ 24 opens one at a
  fixed path in ``$HOME``, which two servers on one host (and containers with a read-only home) trip over.
"""

from __future__ import annotations

import os

from gunicorn.glogging import Logger

from app.access_log import FORMAT as ACCESS_LOG_FORMAT
from app.config import available_cores


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in {"1", "true", "yes", "on"}


def default_workers(cores: int | None = None, cap: int | None = None) -> int:
    """One per core this process may use, at least 2; at most ``cap`` (GUNICORN_MAX_WORKERS, default 8)."""
    cores = cores if cores is not None else available_cores()
    cap = cap if cap is not None else _int("GUNICORN_MAX_WORKERS", 8)
    return max(1, min(max(2, cores), cap))


# -- where and how many ---------------------------------------------------------------------------------------------

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000").split(",")
workers = _int("GUNICORN_WORKERS", 0) or default_workers()
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "").strip() or "app.gunicorn_worker.ThreadWorker"
threads = _int("GUNICORN_THREADS", 2)

# -- timeouts and recycling -----------------------------------------------------------------------------------------

timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
max_requests = _int("GUNICORN_MAX_REQUESTS", 10000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 1000)

# Request size limits (gunicorn's defaults, spelled out): the app itself refuses bodies over 64 KiB.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# -- proxies --------------------------------------------------------------------------------------------------------

# Only the addresses the operator names; never gunicorn's implicit default (127.0.0.1) or a stray
# FORWARDED_ALLOW_IPS. An empty string trusts nobody.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "").strip()

# -- logging --------------------------------------------------------------------------------------------------------

accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = os.environ.get("GUNICORN_ERRORLOG", "-")
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# The path only, never the query string, the Referer or a request header (app/access_log.py explains the fields);
# under granian the app writes the same line itself (app/access_log.py).
access_log_format = ACCESS_LOG_FORMAT
# The app reads the same variable (app/config.py): with json gunicorn's lines are JSON too (JsonLogs, below).
json_logs = os.environ.get("IDP_LOG_FORMAT", "").strip() == "json"

# -- process model --------------------------------------------------------------------------------------------------

preload_app = _bool("GUNICORN_PRELOAD", False)
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)

_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True  # unknown to older gunicorn versions, which ignore it


class JsonLogs(Logger):
    """gunicorn's logger with ``IDP_LOG_FORMAT=json``: its own lines (start, workers booting and exiting, errors
    handling a request) and its access lines as the app's JSON objects, masked like the app's lines, so the log
    shipper reads one stream of JSON from the first line on.

    ``setup`` runs in the master before its first line and again on a reload (SIGHUP), and the workers inherit
    the handlers; only the formatters change, so the destinations (``accesslog``, ``errorlog``, syslog) and
    reopening on SIGUSR1 stay gunicorn's. Access lines are built from the request's values, never from
    ``access_log_format`` (which gunicorn fills without JSON escaping).
    """

    def setup(self, cfg):
        super().setup(cfg)
        from app.observability import AccessJsonFormatter, JsonFormatter, MaskingFilter

        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(MaskingFilter())
        for handler in self.access_log.handlers:
            handler.setFormatter(AccessJsonFormatter())


if json_logs:
    logger_class = JsonLogs


def post_fork(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    """With preload_app, forget the database connections the master opened (a socket is never shared).

    Redis clients need nothing: redis-py notices the new pid and opens fresh connections; the key ring
    re-reads its source on its own; the outbox poller starts per process (app/outbox.py).
    """
    if not preload_app:
        return
    flask_app = getattr(getattr(worker, "app", None), "callable", None)  # the app the master preloaded
    if flask_app is None or not hasattr(flask_app, "app_context"):
        return
    from app.extensions import db

    with flask_app.app_context():
        db.engine.dispose(close=False)  # drop the inherited pool without closing the master's sockets
