"""The app's own access log, for servers whose access log cannot carry the request id (granian).

``IDP_ACCESS_LOG=true`` (``python -m app.serve`` sets it, and turns granian's own access log off) wraps the WSGI
app: after each response has been sent, one line on stdout, in the same format as gunicorn's access lines with
app/gunicorn_conf.py, so that both servers' logs read alike and a log pipeline needs one parser:

* text: ``gunicorn_conf.access_log_format`` (address, time, request line with the *path only*, status, bytes,
  duration in ms, User-Agent, then the response's ``X-Request-ID``);
* ``IDP_LOG_FORMAT=json``: the JSON object of ``observability.AccessJsonFormatter`` (the app's key names).

Never the query string (authorization codes, ``state``, device user codes, ``id_token_hint``), the Referer or
any other request header; the line goes through the masking filter like the app's own lines. Under gunicorn
this stays off: gunicorn writes the same line itself.
"""

from __future__ import annotations

import logging
import sys
import time

from werkzeug.wsgi import ClosingIterator

#: The logger of the access lines (its own handler on stdout; it does not propagate to the root logger).
LOGGER = "app.access"
#: The access line in gunicorn's atoms; app/gunicorn_conf.py's ``access_log_format`` is this, so both servers write
#: the same line. %(U)s is the path WITHOUT the query string. Never add %(q)s, %(r)s (the request line includes the
#: query), %(f)s (Referer) or %({…}i)s request headers: codes and tokens travel there. The last field is the
#: response's X-Request-ID (the app sets it on every response; "-" on a server's own error pages).
FORMAT = '%(h)s - - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s" %({x-request-id}o)s'


def configure(json_lines: bool) -> logging.Logger:
    """The access logger with one stdout handler, JSON or text, masked; idempotent."""
    from .observability import AccessJsonFormatter, MaskingFilter

    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = next((h for h in logger.handlers if getattr(h, "_idp_access", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._idp_access = True
        logger.addHandler(handler)
    # JSON: the formatter reads the atoms and masks the path and User-Agent itself. Text: the masking filter merges
    # the atoms into the line and masks it, as it does the app's lines.
    handler.setFormatter(AccessJsonFormatter() if json_lines else logging.Formatter("%(message)s"))
    handler.filters = [] if json_lines else [MaskingFilter()]
    return logger


class AccessLog:
    """WSGI middleware: one access line per request, written when the response is closed (fully sent)."""

    def __init__(self, wsgi_app, logger: logging.Logger):
        self.wsgi_app, self.logger = wsgi_app, logger

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen: dict = {}

        def start(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return start_response(status, headers, exc_info)

        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            self._write(environ, {"status": "500", "headers": []}, started)
            raise
        return ClosingIterator(body, lambda: self._write(environ, seen, started))

    def _write(self, environ, seen: dict, started: float) -> None:
        headers = {k.lower(): v for k, v in seen.get("headers", ())}
        atoms = {
            "h": environ.get("REMOTE_ADDR") or "-",
            "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            "m": environ.get("REQUEST_METHOD", "-"),
            "U": environ.get("PATH_INFO", ""),
            "H": environ.get("SERVER_PROTOCOL", "-"),
            "s": str(seen.get("status", "-")).split(" ", 1)[0],
            "B": int(length) if (length := headers.get("content-length", "")).isdigit() else "-",
            "M": int((time.perf_counter() - started) * 1000),
            "a": environ.get("HTTP_USER_AGENT", "-"),
            "{x-request-id}o": headers.get("x-request-id", "-"),
        }
        # As gunicorn's SafeAtoms: a double quote in a value is escaped, so the quoted fields stay parseable
        # (the JSON formatter takes the escape off again).
        self.logger.info(FORMAT, {k: v.replace('"', '\\"') if isinstance(v, str) else v for k, v in atoms.items()})
