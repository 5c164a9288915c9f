"""Production observability: health checks, Prometheus metrics, structured logs.

* ``GET /healthz``: the process is alive (never touches the database).
* ``GET /readyz``: the database answers ``SELECT 1``, Redis answers ``PING`` (when ``REDIS_URL`` is set)
  and the key ring has a current RS256 and ES256 key; 200 with per-check results, else 503.
* ``GET /metrics``: Prometheus text format, only for ``Authorization: Bearer <IDP_METRICS_TOKEN>``
  (404 otherwise, and always when the setting is unset). Under gunicorn with several workers set
  ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before start: every worker writes its counters
  there and any worker answers a scrape with the sum (only counters and histograms are used, so no
  gunicorn ``child_exit`` hook is needed).
* ``IDP_LOG_FORMAT=json``: one JSON object per log line, with the request id (``X-Request-ID``).
  Whatever the format, the handlers configured here mask email addresses, JWTs and long random
  tokens in every message.

Other modules call the helpers (``count_token``, ``signed_in`` …): one line at each decision point.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import time
from datetime import datetime, timezone

from flask import Blueprint, Response, current_app, g, has_request_context, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

log = logging.getLogger(__name__)

# -- metrics -----------------------------------------------------------------------------------------------------------
# Module-level objects: one set per process (prometheus_client's multiprocess mode picks its value class at import,
# from PROMETHEUS_MULTIPROC_DIR). Labels are bounded sets, never customer data.

REQUEST_SECONDS = Histogram(
    "idp_http_request_duration_seconds",
    "Request latency by Flask endpoint, method and status class (its _count is the request count).",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOKENS = Counter("idp_tokens_issued", "Access tokens issued, by grant type.", ["grant_type"])
SIGNINS = Counter("idp_signins", "Sign-ins by method (password, passkey, federation) and result.", ["method", "result"])
CONSENTS = Counter("idp_consent_events", "Consent ledger events by action (granted, withdrawn) and channel.",
                   ["action", "channel"])
DELIVERIES = Counter("idp_outbox_deliveries", "Back-channel deliveries by kind and outcome (delivered, retry, failed).",
                     ["kind", "outcome"])
RATE_LIMITED = Counter("idp_rate_limited", "Requests refused with 429 Too Many Requests, by endpoint.", ["endpoint"])

for _method in ("password", "passkey", "federation"):
    for _result in ("success", "failure"):
        SIGNINS.labels(_method, _result)

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_STATUS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_AMR_METHOD = {"pwd": "password", "hwk": "passkey", "swk": "passkey", "fed": "federation"}


def count_token(grant_type: str) -> None:
    TOKENS.labels(grant_type).inc()


def signed_in(amr: list[str] | None) -> None:
    """A sign-in succeeded (called where the SSO session starts): the method is the first ``amr`` value."""
    SIGNINS.labels(_AMR_METHOD.get(amr[0] if amr else "", "other"), "success").inc()


def signin_failed(method: str) -> None:
    SIGNINS.labels(method, "failure").inc()


def passkey_error(code: str) -> None:
    """A passkey endpoint answered an error: a failed sign-in if it was the sign-in ceremony (not a cancel)."""
    if request.endpoint == "passkeys.login_verify" and code != "cancelled":
        SIGNINS.labels("passkey", "failure").inc()


def count_consent(action: str, channel: str, n: int = 1) -> None:
    CONSENTS.labels(action, channel).inc(n)


def count_delivery(kind: str, outcome: str) -> None:
    DELIVERIES.labels(kind, outcome).inc()


def _before() -> None:
    g._obs_t0 = time.perf_counter()


_request_children: dict = {}  # (endpoint, method, status class) -> histogram child: skips labels() on the hot path


def _after(response):
    t0 = g.pop("_obs_t0", None)
    req = request._get_current_object()
    endpoint = req.endpoint or "unmatched"
    status = response.status_code
    if t0 is not None:
        key = (endpoint, req.method if req.method in _METHODS else "other", _STATUS.get(status // 100, "other"))
        child = _request_children.get(key)
        if child is None:
            child = _request_children[key] = REQUEST_SECONDS.labels(*key)
        child.observe(time.perf_counter() - t0)
    if status == 429:
        RATE_LIMITED.labels(endpoint).inc()
    response.headers["X-Request-ID"] = request_id()
    return response


def _registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


# -- endpoints ---------------------------------------------------------------------------------------------------------

bp = Blueprint("observability", __name__)


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _not_found() -> Response:
    return _no_store(Response("Not Found\n", 404, mimetype="text/plain"))


@bp.get("/healthz")
def healthz():
    return _no_store(jsonify(status="ok"))


@bp.get("/readyz")
def readyz():
    checks = {"database": _check(_database)}
    if current_app.config.get("REDIS_URL"):
        checks["redis"] = _check(_redis)
    checks["keys"] = _check(_keys)
    ready = all(v == "ok" for v in checks.values())
    resp = jsonify(status="ok" if ready else "unavailable", checks=checks)
    resp.status_code = 200 if ready else 503
    return _no_store(resp)


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        # The type only: messages can carry connection strings.
        log.warning("readiness check %s failed: %s", fn.__name__.lstrip("_"), type(exc).__name__)
        return "failed"


def _database() -> None:
    import sqlalchemy as sa

    from .extensions import db

    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _redis() -> None:
    client = current_app.extensions.get("idp_obs_redis")
    if client is None:
        import redis

        client = current_app.extensions["idp_obs_redis"] = redis.Redis.from_url(
            current_app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=2)
    client.ping()


def _keys() -> None:
    from .keys import keyring

    ring = keyring()
    ring.signing_key("RS256")
    ring.signing_key("ES256")


@bp.get("/metrics")
def metrics():
    token = current_app.config.get("IDP_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if not token or scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return _not_found()
    return _no_store(Response(generate_latest(_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST}))


# -- logs --------------------------------------------------------------------------------------------------------------

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Any address: non-ASCII local parts and domains, and hosts without a dot (bob@localhost) too.
# Anchored at the start of a run (the lookbehind), so a long run without "@" (a User-Agent) costs linear time.
_EMAIL = re.compile(r"(?<![\w.%+-])([\w.%+-])[\w.%+-]*@([\w-]+(?:\.[\w-]+)*)")
# A PHC-format argon2 hash: its salt and digest are standard base64 (with + and /), which _LONG_TOKEN would split.
_PASSWORD_HASH = re.compile(r"\$argon2(?:id|i|d)\$[A-Za-z0-9+/=,$.-]*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
# 40+ URL-safe characters with a digit or a capital: refresh tokens, codes, secrets (random_token(32) is 43 characters).
# Shorter public identifiers (sub UUIDs, sid, client_id, jti) stay readable.
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[0-9A-Z])[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])")


def mask(text: str) -> str:
    """Mask JWTs, password hashes, long random tokens and email addresses (``a***@example.com``)."""
    if not text:
        return text
    text = _JWT.sub("[jwt]", text)
    text = _PASSWORD_HASH.sub("[password-hash]", text)
    text = _LONG_TOKEN.sub("[token]", text)
    return _EMAIL.sub(r"\1***@\2", text)


class MaskingFilter(logging.Filter):
    """Rewrites the record's message (with its args merged in) and exception text through ``mask``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_idp_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string still gets logged, masked
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        record._idp_masked = True
        return True


def request_id() -> str:
    """This request's id: the caller's ``X-Request-ID`` when it is a short safe token, else a new random one."""
    rid = g.get("request_id")
    if rid is None:
        incoming = request.headers.get("X-Request-ID", "")
        rid = g.request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else secrets.token_hex(16)
    return rid


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and, inside a request, its id, method, path, address."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            entry.update(request_id=request_id(), method=request.method, path=mask(request.path),
                         remote_addr=request.remote_addr)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access lines as JSON objects (``IDP_LOG_FORMAT=json``; app/gunicorn_conf.py sets it on the
    workers' access handlers), with the key names of the app's lines: time, level, logger, message, request_id
    (the response's ``X-Request-ID``), method, path, remote_addr; then status, bytes, duration_ms, protocol
    and user_agent.

    Built from the record's atoms, never from ``access_log_format`` (gunicorn substitutes those without JSON
    escaping). The path only: never the query string, the request line or the Referer.
    """

    def format(self, record: logging.LogRecord) -> str:
        atoms = record.args
        if not isinstance(atoms, dict):
            return super().format(record)

        def atom(key: str):
            value = dict.get(atoms, key)  # the raw value: SafeAtoms' lookup answers "-" for a missing one
            # gunicorn's SafeAtoms put a backslash before every double quote of a string; take it off again.
            return value.replace('\\"', '"') if isinstance(value, str) else value

        method, path, status = atom("m"), mask(atom("U") or ""), atom("s")
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": f"{method} {path} {status}",
            "request_id": atom("{x-request-id}o"),
            "method": method,
            "path": path,
            "remote_addr": atom("h"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": atom("B"),
            "duration_ms": atom("M"),
            "protocol": atom("H"),
            "user_agent": mask(atom("a") or ""),
        }
        return json.dumps(entry, ensure_ascii=False, default=str)


_OURS = "_idp_observability"


def configure_logging(app) -> None:
    """Put JSON formatting (``IDP_LOG_FORMAT=json``) and masking on the root logger's console handlers.

    The console handlers are the plain ``StreamHandler``s (``logging.basicConfig``'s under gunicorn); with
    none, JSON mode adds one on stderr. Text mode undoes an earlier JSON configuration of this process.
    """
    fmt = app.config["IDP_LOG_FORMAT"]
    if fmt not in ("text", "json"):
        from .config import ConfigError

        raise ConfigError("IDP_LOG_FORMAT must be text or json")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _OURS, False)]
    console = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if fmt == "json":
        if not console and not ours:
            handler = logging.StreamHandler()  # stderr
            setattr(handler, _OURS, True)
            root.addHandler(handler)
            ours = [handler]
        for h in console + ours:
            if not isinstance(h.formatter, JsonFormatter):
                h.setFormatter(JsonFormatter())
    else:
        for h in ours:
            root.removeHandler(h)
        for h in console:
            if isinstance(h.formatter, JsonFormatter):
                h.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    for h in root.handlers:
        if (type(h) is logging.StreamHandler or getattr(h, _OURS, False)) \
                and not any(isinstance(f, MaskingFilter) for f in h.filters):
            h.addFilter(MaskingFilter())


# -- wiring ------------------------------------------------------------------------------------------------------------

def init_app(app) -> None:
    """Routes, request hooks (timing first and last, so the histogram sees every other hook) and logging."""
    from .extensions import csrf, limiter

    app.register_blueprint(bp)
    csrf.exempt(bp)
    limiter.exempt(bp)
    app.before_request_funcs.setdefault(None, []).insert(0, _before)
    app.after_request_funcs.setdefault(None, []).insert(0, _after)  # after_request runs in reverse: ours last
    configure_logging(app)
