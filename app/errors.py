"""One place that renders errors: JSON (RFC 6749 §5.2 shape) for protocol endpoints, a page for people."""

from __future__ import annotations

import logging
import re

from flask import jsonify, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)
JSON_PREFIXES = ("/token", "/introspect", "/revoke", "/userinfo", "/.well-known", "/jwks", "/account/api", "/admin/api",
                 "/device_authorization")
_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def clean_description(text: str) -> str:
    """error_description may hold only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 §4.1.2.1)."""
    return _UNSAFE.sub("", text)[:200]


def json_error(error: str, description: str | None, status: int, headers: dict | None = None):
    body = {"error": error}
    if description:
        body["error_description"] = clean_description(description)
    resp = jsonify(body)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_page(title: str, message: str, status: int = 400):
    return render_template("errors/error.html", title=title, message=message), status


def _wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES)


# PostgreSQL SQLSTATEs of a server that is unreachable, overloaded or in the way for now (a retry may succeed):
# connection exceptions, too many connections, serialization failure, deadlock, lock timeout, statement timeout,
# shutdown and start-up. Anything else (a full disk, a value too large, a schema error) is a defect or needs an
# operator: a 500 with its traceback in the log.
_PG_TRANSIENT = ("08", "53300", "40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03")


def is_outage(e: BaseException) -> bool:
    """A backing service is unreachable, stalled or busy for now (not a defect, not the request's fault)."""
    import redis.exceptions as rx
    import sqlalchemy.exc as sx

    if isinstance(e, (rx.AuthenticationError, rx.AuthorizationError)):
        return False  # Redis refuses our credentials: configuration, not an outage
    if isinstance(e, (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.TryAgainError, sx.TimeoutError)):
        return True  # Redis down, stalled, loading, a replica after failover; the pool exhausted
    if not isinstance(e, sx.DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    sqlite_error = getattr(e.orig, "sqlite_errorname", None)
    if sqlite_error is not None:
        return sqlite_error.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    sqlstate = getattr(e.orig, "sqlstate", None)
    if sqlstate is None:  # psycopg failed before any server answer: refused, unreachable, timed out
        return isinstance(e, sx.OperationalError)
    return sqlstate.startswith(_PG_TRANSIENT)


def register_error_handlers(app) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(e):
        return error_page(_("This form has expired"),
                          _("Go back, reload the page and try again."), 400)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if _wants_json():
            code = {400: "invalid_request", 401: "invalid_client", 404: "not_found", 405: "invalid_request",
                    413: "invalid_request", 415: "invalid_request", 429: "slow_down"}.get(e.code, "invalid_request")
            if e.code == 429:
                code = "rate_limited"
            return json_error(code, e.description or e.name, e.code or 400)
        titles = {404: _("Page not found"), 405: _("This page cannot be used that way"),
                  413: _("That was too much data"), 429: _("Too many attempts")}
        messages = {429: _("Please wait a minute and try again.")}
        return error_page(titles.get(e.code, _("Something is wrong with this request")),
                          messages.get(e.code, _("Check the address and try again.")), e.code or 400)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        from .extensions import db

        db.session.rollback()
        if is_outage(e):
            # Redis or the database is down, stalled or refused the work for now: a retry may succeed.
            log.warning("%s on %s %s: %s", type(e).__name__, request.method, request.path, str(e).split("\n")[0])
            if _wants_json():
                return json_error("temporarily_unavailable", "The service is temporarily unavailable; retry shortly.",
                                  503, {"Retry-After": "5"})
            page, status = error_page(_("We'll be right back"), _("Please try again in a moment."), 503)
            return page, status, {"Retry-After": "5"}
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _wants_json():
            return json_error("server_error", "The server could not complete the request.", 500)
        return error_page(_("Something went wrong"), _("Please try again in a moment."), 500)
