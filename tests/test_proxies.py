"""Forwarded headers (X-Forwarded-For / -Proto) are believed only on a connection from a configured proxy."""

from __future__ import annotations

import pytest
from flask import request

from app.config import ConfigError

PROXY, OUTSIDER = "10.0.0.5", "198.51.100.1"


def _proxied_app(make_app, **extra):
    return make_app(IDP_TRUSTED_PROXIES=1, IDP_TRUSTED_PROXY_ADDRESSES="10.0.0.0/24, 2001:db8::1", **extra)


def _seen(app):
    """What the app takes for the client's address and scheme (a route added for the test, before any request)."""
    app.add_url_rule("/_seen", "seen", lambda: {"addr": request.remote_addr, "scheme": request.scheme})
    client = app.test_client()

    def seen(peer: str, **headers) -> dict:
        return client.get("/_seen", environ_base={"REMOTE_ADDR": peer}, headers=headers).get_json()
    return seen


def test_forwarded_headers_are_believed_only_from_a_listed_proxy(make_app):
    seen = _seen(_proxied_app(make_app))
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    assert seen(PROXY, **forged) == {"addr": "203.0.113.7", "scheme": "https"}
    assert seen("::ffff:10.0.0.9", **forged) == {"addr": "203.0.113.7", "scheme": "https"}  # dual-stack socket
    assert seen("2001:db8::1", **forged) == {"addr": "203.0.113.7", "scheme": "https"}
    # Anyone else who reaches the node directly keeps their own address and scheme, whatever they send.
    assert seen(OUTSIDER, **forged) == {"addr": OUTSIDER, "scheme": "http"}
    assert seen("10.0.1.5", **forged) == {"addr": "10.0.1.5", "scheme": "http"}
    assert seen("2001:db8::2", **forged) == {"addr": "2001:db8::2", "scheme": "http"}
    # One hop: the address the proxy saw is the last one it appended, not what the client wrote before it.
    assert seen(PROXY, **{"X-Forwarded-For": "1.2.3.4, 203.0.113.8"})["addr"] == "203.0.113.8"


def test_without_trusted_proxies_no_forwarded_header_is_believed(make_app):
    seen = _seen(make_app())
    assert seen(PROXY, **{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}) == \
        {"addr": PROXY, "scheme": "http"}


def test_a_client_cannot_escape_its_rate_limit_with_a_forged_forwarded_for(make_app):
    app = _proxied_app(make_app, RATELIMIT_ENABLED=True, IDP_RATELIMIT_TOKEN="3 per minute")
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Machine", [], grant_types=["client_credentials"], scope="")
        cid = c.client_id
    client = app.test_client()

    def token(peer: str, forwarded_for: str) -> int:
        return client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret),
                           environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded_for}).status_code

    # Direct connection: a new X-Forwarded-For each time changes nothing, the limit is on the peer.
    assert [token(OUTSIDER, f"203.0.113.{i}") for i in range(4)] == [200, 200, 200, 429]
    # Through the proxy: each client address has its own budget, and a repeated one runs out.
    assert [token(PROXY, f"192.0.2.{i}") for i in range(4)] == [200, 200, 200, 200]
    assert [token(PROXY, "192.0.2.50") for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.parametrize("addresses", ["", "   ", "10.0.0.0/33", "proxy.internal"])
def test_trusted_proxies_need_valid_addresses(make_app, addresses):
    with pytest.raises(ConfigError, match="IDP_TRUSTED_PROXY_ADDRESSES"):
        make_app(IDP_TRUSTED_PROXIES=1, IDP_TRUSTED_PROXY_ADDRESSES=addresses)


def test_a_negative_hop_count_is_refused(make_app):
    with pytest.raises(ConfigError, match="IDP_TRUSTED_PROXIES"):
        make_app(IDP_TRUSTED_PROXIES=-1, IDP_TRUSTED_PROXY_ADDRESSES="10.0.0.1")
