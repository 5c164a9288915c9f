"""OpenID Connect Front-Channel Logout 1.0: one iframe per app of the ended session, CSP frame-src for exactly those."""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.support.browser import csrf_token
from tests.test_conformance_rules import ISSUER, id_claims, tokens_for

BYE = "https://shop.example/bye"
FC = "https://shop.example/fc-logout?app=1"


def _register(app, **meta):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Shop", ["https://shop.example/cb"], post_logout_redirect_uris=[BYE], **meta)
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": "https://shop.example/cb"}


def _iframes(html: str) -> list[str]:
    return [unescape(s) for s in re.findall(r'<iframe class="frontchannel-logout" src="([^"]+)"', html)]


def _csp(resp) -> dict[str, str]:
    out = {}
    for part in resp.headers["Content-Security-Policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        out[name] = value
    return out


def test_rp_initiated_logout_renders_iframe_with_iss_and_sid_then_continues(client, app, customer):
    rp = _register(app, frontchannel_logout_uri=FC, frontchannel_logout_session_required=True)
    tok = tokens_for(client, customer, rp)
    sid = id_claims(client, tok)["sid"]
    resp = client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"], "post_logout_redirect_uri": BYE,
                                              "state": "st"}))
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    [src] = _iframes(html)
    parts = urlsplit(src)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "shop.example", "/fc-logout")
    assert parse_qs(parts.query) == {"app": ["1"], "iss": [ISSUER], "sid": [sid]}
    csp = _csp(resp)
    assert csp["frame-src"] == "https://shop.example"
    assert csp["frame-ancestors"] == "'none'"
    # Then on to the app: a nonce'd script and a plain link for browsers without JavaScript.
    assert f'href="{BYE}?state=st"' in html
    nonce = re.search(r"'nonce-([^']+)'", csp["script-src"]).group(1)
    assert f'<script nonce="{nonce}">' in html
    # The session is over.
    again = client.get("/authorize?" + urlencode(dict(response_type="code", client_id=rp["client_id"],
                                                      redirect_uri=rp["redirect_uri"], scope="openid", prompt="none")))
    assert "error=login_required" in again.headers["Location"]


def test_confirmation_page_sign_out_shows_the_iframes_without_continuing(client, app, customer):
    rp = _register(app, frontchannel_logout_uri=FC, frontchannel_logout_session_required=True)
    sid = id_claims(client, tokens_for(client, customer, rp))["sid"]
    page = client.get("/logout")
    done = client.post("/logout/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and "You are signed out" in html
    [src] = _iframes(html)
    assert parse_qs(urlsplit(src).query)["sid"] == [sid]
    assert _csp(done)["frame-src"] == "https://shop.example"
    assert "<script" not in html and 'id="continue"' not in html


def test_without_session_required_the_uri_is_loaded_as_registered(client, app, customer):
    rp = _register(app, frontchannel_logout_uri=FC)
    tok = tokens_for(client, customer, rp)
    resp = client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]}))
    assert _iframes(resp.get_data(as_text=True)) == [FC]


def test_only_apps_of_that_session_are_framed(client, app, customer, rp):
    other = _register(app, frontchannel_logout_uri=FC)  # registered, but the customer never used it
    assert other
    tok = tokens_for(client, customer, rp)
    resp = client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"], "post_logout_redirect_uri": BYE}))
    assert resp.status_code == 302 and resp.headers["Location"] == BYE
    page = client.get("/")
    assert "frame-src" not in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("uri", ["https://evil.example/fc", "http://shop.example/fc", "https://shop.example:8443/fc",
                                 "https://shop.example/fc#frag"])
def test_registration_refuses_a_frontchannel_uri_off_the_redirect_origin(app, uri):
    import click

    from app.cli import create_client

    with app.app_context(), pytest.raises(click.BadParameter):
        create_client("Shop", ["https://shop.example/cb"], frontchannel_logout_uri=uri)


def test_cli_registers_frontchannel_metadata(app):
    import json

    out = app.test_cli_runner().invoke(args=[
        "clients", "create", "--name", "Shop", "--redirect-uri", "https://shop.example/cb",
        "--frontchannel-logout-uri", FC, "--frontchannel-logout-session-required", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["frontchannel_logout_uri"] == FC and data["frontchannel_logout_session_required"] is True
