"""HTTP helpers shared by every blueprint: client address, security headers."""

from __future__ import annotations

import ipaddress
import secrets
from urllib.parse import urlsplit

from flask import current_app, g, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.http import parse_list_header


def client_ip() -> str:
    """The client's address. X-Forwarded-For is honoured only via ``TrustedProxies`` (IDP_TRUSTED_PROXIES)."""
    return request.remote_addr or "unknown"


class TrustedProxies:
    """werkzeug's ProxyFix (``hops`` proxies' X-Forwarded-For and X-Forwarded-Proto), applied only to a connection
    from one of ``networks`` (``"unix"``: a proxy on a unix socket, whose peer has no address).

    ProxyFix alone believes the headers from whoever connects: a client that reaches a node directly (a port
    left open, a misrouted request) would choose its own address, and so its rate limits and audit records.
    gunicorn's ``forwarded_allow_ips`` does not prevent that: it only governs the scheme headers. With more than
    one hop, the addresses the inner proxies appended must be trusted too; otherwise a client that reaches an
    inner proxy directly could write the outer one's entry. On any other connection the headers are ignored
    and the peer's address is the client's.
    """

    def __init__(self, app, hops: int, networks: list):
        from werkzeug.middleware.proxy_fix import ProxyFix

        self.app = app
        self.hops = hops
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops)
        self.unix = "unix" in networks
        self.networks = tuple(n for n in networks if n != "unix")

    def trusted(self, addr: str | None) -> bool:
        if not addr:
            return self.unix
        try:
            peer = ipaddress.ip_address(addr)
        except ValueError:
            return False  # malformed: never a configured proxy
        if peer.version == 6 and peer.ipv4_mapped:  # ::ffff:10.0.0.1 from a dual-stack socket
            peer = peer.ipv4_mapped
        return any(peer in net for net in self.networks)

    def __call__(self, environ, start_response):
        if self.trusted(environ.get("REMOTE_ADDR")):
            # The entries right of the client's, parsed as ProxyFix parses them.
            inner = parse_list_header(environ.get("HTTP_X_FORWARDED_FOR", ""))[::-1][:self.hops - 1]
            if all(self.trusted(a) for a in inner):
                return self.fixed(environ, start_response)
        return self.app(environ, start_response)


def csp_nonce() -> str:
    """A per-response nonce for inline scripts and styles."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def allow_form_action(url: str) -> None:
    """Let this page's forms end (after redirects) at the origin of ``url`` (a client's redirect URI)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        g.setdefault("form_action", set()).add(f"{parts.scheme}://{parts.netloc}")


def allow_frame(url: str) -> None:
    """Let this page embed ``url``'s origin in an iframe (front-channel logout); CSP frame-src is 'none' otherwise."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        g.setdefault("frame_src", set()).add(f"{parts.scheme}://{parts.netloc}")


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, with its serializer built once per secret instead of on every request.

    Flask builds a new serializer for each request (a fifth of a client-credentials token's CPU time here);
    serializers are stateless, so one per (secret key, fallbacks) serves every thread.
    """

    def __init__(self):
        self._serializers: dict = {}

    def get_signing_serializer(self, app):
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        found = self._serializers.get(key)
        if found is None:
            found = super().get_signing_serializer(app)
            if found is not None:
                self._serializers = {key: found}  # a new secret replaces the old entry
        return found


def _csp(script: str, form_action: str, frame_src: str) -> str:
    return ("default-src 'none'; "
            f"script-src {script}; style-src 'self'; img-src 'self' https: data:; "
            f"connect-src 'self'; font-src 'self'; {frame_src}"
            f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'")


_DEFAULT_CSP = _csp("'none'", "'self'", "")  # a response without nonce, extra form targets or frames


def security_headers(response):
    """Strict CSP with nonces, no framing, no sniffing; HSTS on https; no-store on everything sensitive."""
    h = response.headers
    nonce = g.get("csp_nonce")
    if nonce is None and not g.get("form_action") and not g.get("frame_src"):
        csp = _DEFAULT_CSP
    else:
        script = f"'nonce-{nonce}'" if nonce else "'none'"
        form_action = " ".join(["'self'", *sorted(g.get("form_action", ()))])
        frame_src = f"frame-src {' '.join(sorted(g.frame_src))}; " if g.get("frame_src") else ""
        csp = _csp(script, form_action, frame_src)
    h.setdefault("Content-Security-Policy", csp)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    # same-origin: our own POSTs carry a Referer (Flask-WTF checks it on https), other sites learn nothing.
    h.setdefault("Referrer-Policy", "same-origin")
    if current_app.config["IDP_COOKIE_SECURE"]:
        h.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if "Cache-Control" not in h and response.mimetype == "text/html":
        h["Cache-Control"] = "no-store"
        h["Pragma"] = "no-cache"
    return response
