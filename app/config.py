"""Every setting of the provider, in one place, with its default.

Values come from the environment (the names in ``SETTINGS``), then from the
mapping passed to ``create_app`` (tests). ``validate`` refuses to start with
unsafe values outside development mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRET = "dev-only-insecure-secret-key-change-me"


def _int(v: str) -> int:
    return int(v)


def _bool(v: str) -> bool:
    return v.strip().lower() in {"1", "true", "yes", "on"}


def _str(v: str) -> str:
    return v


@dataclass(frozen=True)
class Setting:
    key: str          # Flask config key
    env: str          # environment variable
    default: Any      # default (None: derived or unset)
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("IDP_ISSUER", "IDP_ISSUER", "http://localhost:5000", _str,
            "Exact issuer string (scheme, host, optional port and path, no trailing slash). "
            "Never derived from the Host header. An http://localhost issuer means development mode."),
    Setting("SECRET_KEY", "SECRET_KEY", PLACEHOLDER_SECRET, _str,
            "Signs cookies and keys the hashes of client secrets and refresh tokens. "
            "Required outside development mode (the app refuses to start with the placeholder)."),
    Setting("SQLALCHEMY_DATABASE_URI", "DATABASE_URL", None, _str,
            "Database URL. Default: SQLite in the instance folder. Production: postgresql+psycopg://…"),
    Setting("REDIS_URL", "REDIS_URL", None, _str,
            "Redis URL for short-lived state and rate-limit counters. Unset: the embedded store in the database."),
    Setting("IDP_REDIS_TIMEOUT", "IDP_REDIS_TIMEOUT", 5.0, float,
            "Seconds a Redis connect or reply may take before the request fails (instead of hanging its thread)."),
    Setting("IDP_DB_POOL_SIZE", "IDP_DB_POOL_SIZE", 10, _int,
            "PostgreSQL connections each app process keeps open (idle ones stay in its pool)."),
    Setting("IDP_DB_MAX_OVERFLOW", "IDP_DB_MAX_OVERFLOW", 10, _int,
            "Extra PostgreSQL connections a process may open beyond IDP_DB_POOL_SIZE under a burst (closed after)."),
    Setting("IDP_DB_STATEMENT_TIMEOUT", "IDP_DB_STATEMENT_TIMEOUT", 15.0, float,
            "PostgreSQL: seconds one statement may run before the server cancels it and the request gets a 503 "
            "(statement_timeout). Without it a stuck query holds its thread and connection for as long as it runs "
            "(gunicorn's threaded worker keeps reporting itself alive). 0: not set (the server's or the database "
            "role's setting applies). Migrations run without it."),
    Setting("IDP_DB_LOCK_TIMEOUT", "IDP_DB_LOCK_TIMEOUT", 5.0, float,
            "PostgreSQL: seconds a statement may wait for a lock before it gives up and the request gets a 503 "
            "(lock_timeout), so requests do not pile up behind a transaction that holds a row or a table. 0: not "
            "set (a statement waits as long as it may run). Migrations run without it."),
    Setting("IDP_DB_PREPARED_STATEMENTS", "IDP_DB_PREPARED_STATEMENTS", True, _bool,
            "PostgreSQL: let psycopg prepare statements it runs often (faster). Set false behind a pooler in "
            "transaction mode that does not track them, such as PgBouncer with max_prepared_statements = 0 (the "
            "default before 1.24) (docs/production.md)."),
    Setting("IDP_KEYS_DIR", "IDP_KEYS_DIR", str(ROOT / "keys"), _str,
            "Folder of the signing key ring (keyring.json and one private key file per key, mode 0600, "
            "encrypted under IDP_KEY_ENCRYPTION_KEY)."),
    Setting("IDP_KEYS_STORE", "IDP_KEYS_STORE", "files", _str,
            "Where the signing key ring lives: 'files' (IDP_KEYS_DIR, local or a volume every node mounts) or "
            "'database' (the signing_keys table, shared by every node). Private keys are encrypted under "
            "IDP_KEY_ENCRYPTION_KEY in both."),
    Setting("IDP_KEY_ENCRYPTION_KEY", "IDP_KEY_ENCRYPTION_KEY", None, _str,
            "base64url of 32 random bytes: the AES-256-GCM key of the private signing keys at rest (key files "
            "or database). Required outside development mode; set on an existing key folder, it encrypts the "
            "plaintext files at the next start. To change it: docs/production.md, 'Changing the key encryption key'."),
    Setting("IDP_KEY_ENCRYPTION_KEY_FALLBACKS", "IDP_KEY_ENCRYPTION_KEY_FALLBACKS", None, _str,
            "Comma-separated older values of IDP_KEY_ENCRYPTION_KEY that still decrypt private keys but never "
            "encrypt one, while the key is being changed (`flask keys rekey` re-encrypts under the new key)."),
    Setting("IDP_KEYS_REFRESH_SECONDS", "IDP_KEYS_REFRESH_SECONDS", 5, float,
            "With IDP_KEYS_STORE=database: how often a process checks for key changes made by other nodes, "
            "seconds; a rotation is used everywhere within this time."),
    Setting("IDP_ACCESS_TOKEN_TTL", "IDP_ACCESS_TOKEN_TTL", 600, _int, "Access token lifetime, seconds."),
    Setting("IDP_ID_TOKEN_TTL", "IDP_ID_TOKEN_TTL", 3600, _int, "ID token lifetime, seconds."),
    Setting("IDP_REFRESH_TOKEN_TTL", "IDP_REFRESH_TOKEN_TTL", 30 * 86400, _int,
            "Refresh token lifetime, seconds (each rotation starts a new period)."),
    Setting("IDP_CODE_TTL", "IDP_CODE_TTL", 60, _int, "Authorization code lifetime, seconds."),
    Setting("IDP_SESSION_TTL", "IDP_SESSION_TTL", 14 * 86400, _int, "Single sign-on session lifetime, seconds."),
    Setting("IDP_INTERACTION_TTL", "IDP_INTERACTION_TTL", 1800, _int,
            "How long a pending sign-in or consent step stays valid, seconds."),
    Setting("IDP_CLIENT_CACHE_TTL", "IDP_CLIENT_CACHE_TTL", 30, _int,
            "How long each process keeps an app's registration for the token endpoint and the sign-in pages, "
            "seconds: a change or deletion made with `flask clients` reaches every node within it (0: read each "
            "time). The authorization and consent steps always read it fresh."),
    Setting("IDP_ACCESS_TOKEN_ALG", "IDP_ACCESS_TOKEN_ALG", "RS256", _str,
            "Signing algorithm of JWT access tokens (RS256 or ES256)."),
    Setting("IDP_RATELIMIT_SIGNIN", "IDP_RATELIMIT_SIGNIN", "10 per minute", _str,
            "Rate limit of sign-in attempts per client IP address."),
    Setting("IDP_RATELIMIT_REGISTER", "IDP_RATELIMIT_REGISTER", "5 per minute", _str,
            "Rate limit of registrations per client IP address."),
    Setting("IDP_RATELIMIT_TOKEN", "IDP_RATELIMIT_TOKEN", "600 per minute", _str,
            "Rate limit of token, introspection and revocation requests per client IP address."),
    Setting("RATELIMIT_ENABLED", "IDP_RATELIMIT_ENABLED", True, _bool, "Turn rate limiting on or off."),
    Setting("RATELIMIT_STORAGE_URI", "IDP_RATELIMIT_STORAGE_URI", None, _str,
            "Where rate-limit counters live. Default: REDIS_URL (shared by every process and node); without Redis, "
            "only in development mode, each process's memory."),
    Setting("IDP_TRUSTED_PROXIES", "IDP_TRUSTED_PROXIES", 0, _int,
            "Number of reverse proxies in front whose X-Forwarded-For/-Proto headers are believed."),
    Setting("IDP_TRUSTED_PROXY_ADDRESSES", "IDP_TRUSTED_PROXY_ADDRESSES", "", _str,
            "Comma-separated addresses or CIDRs of those proxies: forwarded headers are believed only on a "
            "connection from one of them. Required when IDP_TRUSTED_PROXIES is above 0."),
    Setting("IDP_PURPOSES_FILE", "IDP_PURPOSES_FILE", str(ROOT / "app" / "purposes.json"), _str,
            "JSON file of brand purposes (id → title and description in en/tr, required, sale_or_sharing, "
            "lawful_basis)."),
    Setting("IDP_CONTROLLER_NAME", "IDP_CONTROLLER_NAME", "Example Brand", _str,
            "The data controller named in consent receipts."),
    Setting("IDP_CONTROLLER_CONTACT", "IDP_CONTROLLER_CONTACT", "privacy@example.com", _str,
            "How customers reach the data controller (in consent receipts)."),
    Setting("IDP_SMTP_URL", "IDP_SMTP_URL", None, _str,
            "Outgoing mail: smtp://user:pass@host:587 (STARTTLS), smtps://…:465, or smtp://host:25 (plain, local "
            "relays only). Unset in development mode: mail is written to IDP_MAIL_DIR instead."),
    Setting("IDP_MAIL_FROM", "IDP_MAIL_FROM", "Account <no-reply@localhost>", _str, "Sender of customer email."),
    Setting("IDP_MAIL_DIR", "IDP_MAIL_DIR", None, _str,
            "Development outbox folder for email (.eml files). Default: instance/outbox."),
    Setting("IDP_EMAIL_LINK_TTL", "IDP_EMAIL_LINK_TTL", 86400, _int,
            "Lifetime of email verification and change links, seconds (password reset links: 1 hour)."),
    Setting("IDP_OUTBOX_WORKER", "IDP_OUTBOX_WORKER", "thread", _str,
            "Who delivers back-channel logout tokens: 'thread' (a poller in each app process) or 'off' "
            "(run `flask outbox work` as a separate process)."),
    Setting("IDP_BACKCHANNEL_TIMEOUT", "IDP_BACKCHANNEL_TIMEOUT", 5, _int,
            "Timeout of one back-channel logout delivery, seconds."),
    Setting("IDP_GEOIP_DB", "IDP_GEOIP_DB", None, _str,
            "Optional MaxMind GeoLite2-City .mmdb file to show the approximate place of a session."),
    Setting("IDP_UPSTREAMS_FILE", "IDP_UPSTREAMS_FILE", None, _str,
            "Optional JSON file of upstream identity providers (Continue with Google, Apple, …), read at start."),
    Setting("IDP_DEVICE_CODE_TTL", "IDP_DEVICE_CODE_TTL", 600, _int, "Lifetime of a device code, seconds."),
    Setting("IDP_RATELIMIT_DEVICE", "IDP_RATELIMIT_DEVICE", "10 per minute", _str,
            "Device code entries per client IP address."),
    Setting("IDP_DEVICE_ENTRY_ATTEMPTS", "IDP_DEVICE_ENTRY_ATTEMPTS", 10, _int,
            "Device code entries per browser in 15 minutes."),
    Setting("IDP_PASSKEY_CHALLENGE_TTL", "IDP_PASSKEY_CHALLENGE_TTL", 300, _int,
            "Lifetime of a passkey ceremony's challenge, seconds."),
    Setting("IDP_RATELIMIT_PASSKEY", "IDP_RATELIMIT_PASSKEY", "30 per minute", _str,
            "Passkey ceremony requests per client IP address."),
    Setting("IDP_LOG_LEVEL", "IDP_LOG_LEVEL", "INFO", _str, "Log level."),
    Setting("IDP_LOG_FORMAT", "IDP_LOG_FORMAT", "text", _str,
            "Log line format: 'text' or 'json' (one JSON object per line, with the request id)."),
    Setting("IDP_ACCESS_LOG", "IDP_ACCESS_LOG", False, _bool,
            "The app writes one access line per request on stdout (gunicorn's format: path only, status, "
            "duration, request id; JSON with IDP_LOG_FORMAT=json). `python -m app.serve` turns it on, since "
            "granian's own access log cannot carry the request id; leave it off under gunicorn, which writes "
            "the same line itself."),
    Setting("IDP_METRICS_TOKEN", "IDP_METRICS_TOKEN", None, _str,
            "Bearer token that unlocks GET /metrics (Prometheus). Unset: /metrics answers 404."),
)


def load(overrides: dict | None, instance_path: str) -> dict:
    """Build the config mapping: defaults, then environment, then overrides."""
    cfg: dict[str, Any] = {}
    for s in SETTINGS:
        cfg[s.key] = s.default
        raw = os.environ.get(s.env)
        if raw not in (None, ""):
            cfg[s.key] = s.parse(raw)
    cfg.update(overrides or {})
    if not cfg.get("SQLALCHEMY_DATABASE_URI"):
        cfg["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(instance_path, "idp.sqlite3")
    cfg["IDP_ISSUER"] = cfg["IDP_ISSUER"].rstrip("/")
    issuer = urlsplit(cfg["IDP_ISSUER"])
    cfg["IDP_DEV_MODE"] = issuer.scheme == "http" and issuer.hostname in {"localhost", "127.0.0.1"}
    secure = issuer.scheme == "https"
    limits_storage = cfg.get("RATELIMIT_STORAGE_URI") or cfg.get("REDIS_URL") or "memory://"
    cfg.update(
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(cfg),
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        SESSION_COOKIE_NAME="idp_flask",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        IDP_COOKIE_SECURE=secure,
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
        WTF_CSRF_TIME_LIMIT=None,            # bound to the session, not a clock
        WTF_CSRF_SSL_STRICT=secure,
        BABEL_DEFAULT_LOCALE="en",
        BABEL_TRANSLATION_DIRECTORIES=str(ROOT / "app" / "translations"),
        IDP_LOCALES=("en", "tr"),
        IDP_RATELIMIT_STORAGE_EXPLICIT=bool(cfg.get("RATELIMIT_STORAGE_URI")),
        RATELIMIT_STORAGE_URI=limits_storage,
        RATELIMIT_STORAGE_OPTIONS=redis_options(cfg) if limits_storage.startswith(("redis://", "rediss://")) else {},
        # Off: Flask-Limiter would read the window (GET and TTL, two more Redis round trips) on every limited request
        # to fill X-RateLimit-* headers; a 429 still says when to retry (extensions.rate_limit_headers).
        RATELIMIT_HEADERS_ENABLED=False,
        PREFERRED_URL_SCHEME=issuer.scheme,
    )
    return cfg


def _engine_options(cfg: dict) -> dict:
    # hide_parameters: a failed statement's error (and so a logged exception) shows the SQL without its bound
    # values, which may be a password hash, an email address or a token hash.
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        return {"connect_args": {"timeout": 15}, "hide_parameters": True}
    # No pre-ping (a SELECT 1 before every request); connections are recycled instead, and a connection
    # that died meanwhile fails one request and is replaced.
    # A server that cannot be reached fails the connect within 10 s, and one that stops acknowledging a statement
    # within 30 s (tcp_user_timeout), instead of holding the request's thread for the kernel's default of minutes;
    # keepalives find a dead idle connection in the pool.
    # Without prepared statements (prepare_threshold None) every statement is sent with its text: what a pooler in
    # transaction mode needs when it cannot follow a statement prepared on one server connection to the next.
    connect_args = {"connect_timeout": 10, "tcp_user_timeout": 30000, "keepalives": 1,
                    "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    if not cfg["IDP_DB_PREPARED_STATEMENTS"]:
        connect_args["prepare_threshold"] = None
    return {"pool_recycle": 1800, "pool_size": int(cfg["IDP_DB_POOL_SIZE"]),
            "max_overflow": int(cfg["IDP_DB_MAX_OVERFLOW"]), "hide_parameters": True, "connect_args": connect_args}


def redis_options(cfg) -> dict:
    """Keyword arguments of every Redis client of the app: a dead or stalled Redis fails a request in bounded time."""
    timeout = float(cfg["IDP_REDIS_TIMEOUT"])
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": 30}


UNIX_PEER = "unix"  # in IDP_TRUSTED_PROXY_ADDRESSES: a proxy connected over a unix socket (no peer address)


def trusted_proxy_networks(cfg) -> list:
    """IDP_TRUSTED_PROXY_ADDRESSES as ip_network objects, and ``UNIX_PEER`` if listed (ValueError on a malformed,
    host-bits-set, zone-scoped or catch-all entry: each would trust more peers than it names)."""
    import ipaddress

    found = []
    for part in (p.strip() for p in str(cfg.get("IDP_TRUSTED_PROXY_ADDRESSES") or "").split(",")):
        if not part:
            continue
        if part == UNIX_PEER:
            found.append(UNIX_PEER)
            continue
        if "%" in part:
            raise ValueError(f"{part!r}: no zone ids (an address is matched on every interface)")
        net = ipaddress.ip_network(part)  # strict: 10.0.0.5/8 is refused rather than read as all of 10/8
        if net.prefixlen == 0:
            raise ValueError(f"{part!r} trusts every address")
        found.append(net)
    return found


class ConfigError(RuntimeError):
    """The configuration is unsafe or inconsistent; the app does not start."""


def validate(cfg: dict) -> None:
    """Fail fast on unsafe settings."""
    issuer = urlsplit(cfg["IDP_ISSUER"])
    if issuer.scheme not in {"http", "https"} or not issuer.hostname or issuer.query or issuer.fragment:
        raise ConfigError("IDP_ISSUER must be an absolute http(s) URL without query or fragment")
    if not cfg["IDP_DEV_MODE"]:
        if issuer.scheme != "https":
            raise ConfigError("IDP_ISSUER must use https outside development mode")
        if cfg["SECRET_KEY"] in (None, "", PLACEHOLDER_SECRET) or len(cfg["SECRET_KEY"]) < 32:
            raise ConfigError("SECRET_KEY must be set to a random value of at least 32 characters")
    if cfg["IDP_ACCESS_TOKEN_ALG"] not in ("RS256", "ES256"):
        raise ConfigError("IDP_ACCESS_TOKEN_ALG must be RS256 or ES256")
    if not cfg["IDP_DEV_MODE"] and cfg.get("RATELIMIT_ENABLED") and cfg["RATELIMIT_STORAGE_URI"] == "memory://" \
            and not cfg.get("IDP_RATELIMIT_STORAGE_EXPLICIT"):
        raise ConfigError("rate limiting needs REDIS_URL outside development mode: counters in each process's "
                          "memory would let a client make the limit's worth of attempts on every worker and node "
                          "(IDP_RATELIMIT_STORAGE_URI=memory:// accepts that explicitly)")
    if int(cfg["IDP_DB_POOL_SIZE"]) < 1 or int(cfg["IDP_DB_MAX_OVERFLOW"]) < 0:
        raise ConfigError("IDP_DB_POOL_SIZE must be 1 or more and IDP_DB_MAX_OVERFLOW 0 or more "
                          "(SQLAlchemy reads 0 and -1 as 'no limit')")
    for name in ("IDP_DB_STATEMENT_TIMEOUT", "IDP_DB_LOCK_TIMEOUT"):
        seconds = float(cfg[name])
        if not (seconds == 0 or 0.001 <= seconds <= 2147483):  # PostgreSQL takes whole milliseconds up to 2^31 - 1
            raise ConfigError(f"{name} must be 0 (not set) or a number of seconds from 0.001 to 2147483")
    if not float(cfg["IDP_REDIS_TIMEOUT"]) > 0:
        raise ConfigError("IDP_REDIS_TIMEOUT must be a number of seconds above 0")
    hops = int(cfg.get("IDP_TRUSTED_PROXIES") or 0)
    try:
        networks = trusted_proxy_networks(cfg)
    except ValueError as error:
        raise ConfigError(f"IDP_TRUSTED_PROXY_ADDRESSES: {error}") from None
    if hops < 0:
        raise ConfigError("IDP_TRUSTED_PROXIES must be 0 or more")
    if hops and not networks:
        raise ConfigError("IDP_TRUSTED_PROXIES is set: IDP_TRUSTED_PROXY_ADDRESSES must name the proxies' addresses "
                          "or CIDRs (forwarded headers from any other peer would let clients forge their address)")


def available_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its CPU affinity, lowered by a cgroup v2 CPU limit (a container's
    ``--cpus`` or Kubernetes' ``limits.cpu``, rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores
