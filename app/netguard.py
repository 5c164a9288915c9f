"""Outbound HTTP to addresses apps registered, without server-side request forgery (OWASP SSRF prevention).

An app chooses the URL (``backchannel_logout_uri``), so a hostile app could aim
the provider at its own network. Every outbound request therefore:

* uses https (development mode only: also ``http://localhost`` / ``http://127.0.0.1``);
* resolves the host once, refuses it if *any* address is not public
  (private, loopback, link-local, multicast, reserved, unspecified, CGNAT,
  IPv4-mapped / NAT64 / 6to4 / Teredo forms of those, …);
* connects to exactly the address it checked (the TLS certificate is still
  verified against the host name), so a second DNS answer cannot rebind it;
* never follows redirects.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlencode, urlsplit

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
MAX_BODY = 64 * 1024
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(ValueError):
    """The URL may not be contacted (scheme, host or address). Permanent: retrying will not help."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    """True only for globally routable unicast addresses (and their embedded IPv4 forms)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and not is_public(str(inner)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


def _dev_local(parts, dev_mode: bool) -> bool:
    return dev_mode and (parts.hostname or "").lower() in LOOPBACK_HOSTS


def check_url(url: str, *, dev_mode: bool):
    """Static checks (no DNS): absolute http(s) URL, no fragment or credentials, https unless dev-local.

    Returns the split URL; raises :class:`Refused`.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise Refused("not a URL")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError as exc:
        raise Refused("invalid port") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or "#" in url:
        raise Refused("must be an absolute https URL without a fragment")
    if parts.username or parts.password:
        raise Refused("must not contain credentials")
    local = _dev_local(parts, dev_mode)
    if parts.scheme != "https" and not local:
        raise Refused("must use https (http is only allowed for localhost in development mode)")
    if not local:
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            literal = None
        if literal is not None and not is_public(str(literal)):
            raise Refused("must not point to a private, loopback or reserved address")
    return parts


def resolve(parts, *, dev_mode: bool) -> list[str]:
    """Every address of the host, all checked; raises :class:`Refused` or ``OSError`` (DNS failure: transient)."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise OSError("no address")
    local = _dev_local(parts, dev_mode)
    for address in addresses:
        ok = ipaddress.ip_address(address.split("%", 1)[0]).is_loopback if local else is_public(address)
        if not ok:
            raise Refused(f"{parts.hostname} resolves to a non-public address")
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # SNI and certificate checks use the host name; the socket goes to the checked address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def post_form(url: str, fields: dict, *, timeout: float, dev_mode: bool) -> int:
    """POST ``fields`` as application/x-www-form-urlencoded; returns the HTTP status. Redirects are not followed.

    Raises :class:`Refused` (permanent) or ``OSError`` / ``http.client.HTTPException`` (transient).
    """
    parts = check_url(url, dev_mode=dev_mode)
    addresses = resolve(parts, dev_mode=dev_mode)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    body = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*",
               "User-Agent": "idp-backchannel/1", "Cache-Control": "no-store"}
    last: Exception | None = None
    for address in addresses:
        if parts.scheme == "https":
            conn = _PinnedHTTPS(parts.hostname, port, address, timeout, _tls_context())
        else:
            conn = _PinnedHTTP(parts.hostname, port, address, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:  # try the next checked address (e.g. ::1 then 127.0.0.1)
                last = exc
                continue
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(MAX_BODY)
            return resp.status
        finally:
            conn.close()
    raise last or OSError("could not connect")
