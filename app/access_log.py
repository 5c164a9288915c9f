"""The app's own access log, for servers whose access log cannot carry the request id (granian).

``IDP_ACCESS_LOG=true`` (``python -m app.serve`` sets it, and turns granian's own access log off) wraps the WSGI
app: after each response has been sent, one line on stdout, in the same format as gunicorn's access lines with
app/gunicorn_conf.py, so that both servers' logs read alike and a log pipeline needs one parser:

* text: ``FORMAT``, which app/gunicorn_conf.py gives gunicorn (address, time, request line with the *path
  only*, status, bytes sent, duration in ms, User-Agent, then the response's ``X-Request-ID``);
* ``IDP_LOG_FORMAT=json``: the JSON object of ``observability.AccessJsonFormatter`` (the app's key names).

Never the query string (authorization codes, ``state``, device user codes, ``id_token_hint``), the Referer or
any other request header but the User-Agent; the path and the User-Agent are masked like the app's lines, and
control characters in them escaped. Under gunicorn this stays off: gunicorn writes the same line itself.
"""

from __future__ import annotations

import logging
import sys
import time


#: The logger of the access lines (its own handler on stdout; it does not propagate to the root logger).
LOGGER = "app.access"
#: The access line in gunicorn's atoms; app/gunicorn_conf.py's ``access_log_format`` is this, so both servers write
#: the same line. %(U)s is the path WITHOUT the query string. Never add %(q)s, %(r)s (the request line includes the
#: query), %(f)s (Referer) or %({…}i)s request headers: codes and tokens travel there. The last field is the
#: response's X-Request-ID (the app sets it on every response; "-" on a server's own error pages).
FORMAT = '%(h)s - - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s" %({x-request-id}o)s'


def configure(json_lines: bool) -> logging.Logger:
    """The access logger with one stdout handler, JSON or text; idempotent."""
    from .observability import AccessJsonFormatter

    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = next((h for h in logger.handlers if getattr(h, "_idp_access", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._idp_access = True
        logger.addHandler(handler)
    # JSON: the formatter builds the object from the atoms. Text: the atoms fill FORMAT, as in gunicorn.
    handler.setFormatter(AccessJsonFormatter() if json_lines else logging.Formatter("%(message)s"))
    return logger


class _Logged:
    """The response body, passed through; counts the bytes and writes the line once, when the server closes it."""

    def __init__(self, body, done):
        self._body, self._done, self.sent = body, done, 0

    def __iter__(self):
        for chunk in self._body:
            self.sent += len(chunk)
            yield chunk

    def close(self):
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self.sent)


class AccessLog:
    """WSGI middleware: one access line per request, written when the response is closed (fully sent)."""

    def __init__(self, wsgi_app, logger: logging.Logger):
        from .observability import mask  # not at import: app/gunicorn_conf.py reads FORMAT in gunicorn's master

        self.wsgi_app, self.logger, self._mask = wsgi_app, logger, mask

    def _clean(self, value: str) -> str:
        """Masked, one line: a CR or LF (percent-decoded into the path) must not start a line of its own."""
        return self._mask(value).replace("\r", "\\r").replace("\n", "\\n")

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen: dict = {}

        def start(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return start_response(status, headers, exc_info)

        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            self._write(environ, {"status": "500", "headers": []}, started, 0)
            raise
        return _Logged(body, lambda sent: self._write(environ, seen, started, sent))

    def _write(self, environ, seen: dict, started: float, sent: int) -> None:
        headers = {k.lower(): v for k, v in seen.get("headers", ())}
        atoms = {
            "h": environ.get("REMOTE_ADDR") or "-",
            "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            "m": environ.get("REQUEST_METHOD", "-"),
            "U": self._clean(environ.get("PATH_INFO", "")),
            "H": environ.get("SERVER_PROTOCOL", "-"),
            "s": str(seen.get("status", "-")).split(" ", 1)[0],
            "B": sent,  # the body's bytes, as gunicorn counts them
            "M": int((time.perf_counter() - started) * 1000),
            "a": self._clean(environ.get("HTTP_USER_AGENT", "-")),
            "{x-request-id}o": headers.get("x-request-id", "-"),
        }
        # As gunicorn's SafeAtoms: a double quote in a value is escaped, so the quoted fields stay parseable
        # (the JSON formatter takes the escape off again).
        self.logger.info(FORMAT, {k: v.replace('"', '\\"') if isinstance(v, str) else v for k, v in atoms.items()})
