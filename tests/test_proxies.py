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


def test_with_two_hops_the_inner_proxy_entry_must_be_trusted_too(make_app):
    seen = _seen(make_app(IDP_TRUSTED_PROXIES=2, IDP_TRUSTED_PROXY_ADDRESSES="10.0.0.0/24"))
    # Load balancer 10.0.0.7 appended the client; the inner proxy (the peer) appended the load balancer.
    assert seen(PROXY, **{"X-Forwarded-For": "203.0.113.7, 10.0.0.7"})["addr"] == "203.0.113.7"
    # A client that reached the inner proxy directly wrote the "load balancer's" entry itself: not believed.
    assert seen(PROXY, **{"X-Forwarded-For": "203.0.113.7, 198.51.100.9"})["addr"] == PROXY
    assert seen(PROXY, **{"X-Forwarded-For": "203.0.113.7"})["addr"] == PROXY  # fewer entries than hops


def test_a_proxy_on_a_unix_socket_is_trusted_only_when_listed(make_app):
    listed = _seen(make_app(IDP_TRUSTED_PROXIES=1, IDP_TRUSTED_PROXY_ADDRESSES="unix"))
    assert listed("", **{"X-Forwarded-For": "203.0.113.7"})["addr"] == "203.0.113.7"  # gunicorn on unix:…: no peer
    assert listed(OUTSIDER, **{"X-Forwarded-For": "203.0.113.7"})["addr"] == OUTSIDER
    unlisted = _seen(_proxied_app(make_app))
    assert unlisted("", **{"X-Forwarded-For": "203.0.113.7"})["addr"] in ("", None)


@pytest.mark.parametrize("addresses", ["", "   ", "10.0.0.0/33", "proxy.internal", "10.0.0.5/8", "0.0.0.0/0", "::/0",
                                       "fe80::1%eth0"])
def test_trusted_proxies_need_valid_addresses(make_app, addresses):
    with pytest.raises(ConfigError, match="IDP_TRUSTED_PROXY_ADDRESSES"):
        make_app(IDP_TRUSTED_PROXIES=1, IDP_TRUSTED_PROXY_ADDRESSES=addresses)


@pytest.mark.parametrize("setting", [{"IDP_DB_POOL_SIZE": 0}, {"IDP_DB_MAX_OVERFLOW": -1}, {"IDP_REDIS_TIMEOUT": 0},
                                     {"IDP_REDIS_TIMEOUT": -1}, {"IDP_DB_STATEMENT_TIMEOUT": -1},
                                     {"IDP_DB_LOCK_TIMEOUT": -0.5}, {"IDP_DB_STATEMENT_TIMEOUT": float("inf")},
                                     {"IDP_DB_STATEMENT_TIMEOUT": float("nan")}, {"IDP_DB_LOCK_TIMEOUT": 2147484},
                                     {"IDP_DB_LOCK_TIMEOUT": 0.0004}])
def test_pool_and_timeout_settings_that_mean_no_limit_are_refused(make_app, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        make_app(**setting)


def test_a_negative_hop_count_is_refused(make_app):
    with pytest.raises(ConfigError, match="IDP_TRUSTED_PROXIES"):
        make_app(IDP_TRUSTED_PROXIES=-1, IDP_TRUSTED_PROXY_ADDRESSES="10.0.0.1")
