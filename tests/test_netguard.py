"""SSRF defence for outbound requests to app-registered URLs (app/netguard.py), against a real local listener."""

from __future__ import annotations

import pytest

from app import netguard
from tests.support.listener import Listener


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fc00::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:0a00:0001::1", "2001:db8::1",
    "not-an-ip", "::ffff:8.8.8.8",  # IPv4-mapped forms are refused outright
])
def test_non_public_addresses_are_refused(address):
    assert netguard.is_public(address) is False


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert netguard.is_public(address) is True


@pytest.mark.parametrize("url", ["http://shop.example/x", "ftp://shop.example/x", "https:///x", "https://shop.example/x#f",
                                 "https://user:pw@shop.example/x", "https://10.0.0.1/x", "https://[::1]/x",
                                 "http://127.0.0.1:8080/x", "http://localhost:8080/x", "https://shop.example:99999/x",
                                 "//shop.example/x", "javascript:alert(1)"])
def test_static_check_refuses_outside_development(url):
    with pytest.raises(netguard.Refused):
        netguard.check_url(url, dev_mode=False)


def test_development_allows_http_on_localhost_only():
    netguard.check_url("http://127.0.0.1:8080/bcl", dev_mode=True)
    netguard.check_url("http://localhost:8080/bcl", dev_mode=True)
    netguard.check_url("https://shop.example/bcl", dev_mode=True)
    for url in ("http://shop.example/bcl", "http://10.0.0.1/bcl", "https://192.168.1.1/bcl"):
        with pytest.raises(netguard.Refused):
            netguard.check_url(url, dev_mode=True)


def test_a_name_resolving_to_loopback_is_refused_outside_development():
    parts = netguard.check_url("https://localhost/bcl", dev_mode=False)
    with pytest.raises(netguard.Refused):
        netguard.resolve(parts, dev_mode=False)


def test_post_reaches_a_local_listener_in_development_only():
    with Listener() as srv:
        assert netguard.post_form(srv.url(), {"logout_token": "t"}, timeout=5, dev_mode=True) == 200
        assert srv.hits[0].form == {"logout_token": ["t"]}
        assert srv.hits[0].headers["Host"] == f"127.0.0.1:{srv.port}"
        with pytest.raises(netguard.Refused):
            netguard.post_form(srv.url(), {"logout_token": "t"}, timeout=5, dev_mode=False)
        with pytest.raises(netguard.Refused):
            netguard.post_form(srv.url().replace("http:", "https:"), {"x": "y"}, timeout=5, dev_mode=False)
        assert len(srv.hits) == 1


def test_localhost_name_connects_to_a_checked_loopback_address():
    with Listener() as srv:
        url = f"http://localhost:{srv.port}/bcl"
        assert netguard.post_form(url, {"a": "b"}, timeout=5, dev_mode=True) == 200
        assert srv.hits[0].headers["Host"] == f"localhost:{srv.port}"


def test_redirects_are_not_followed():
    with Listener(status=302) as srv:
        assert netguard.post_form(srv.url(), {"a": "b"}, timeout=5, dev_mode=True) == 302
        assert len(srv.hits) == 1


def test_connection_refused_is_a_transient_error():
    with Listener() as srv:
        port = srv.port
    with pytest.raises(OSError):
        netguard.post_form(f"http://127.0.0.1:{port}/bcl", {"a": "b"}, timeout=2, dev_mode=True)
