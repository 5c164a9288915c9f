"""RP-Initiated Logout 1.0 (S-20): exact post_logout_redirect_uri, only with a valid id_token_hint, only state appended."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.browser import csrf_token
from tests.test_conformance_rules import (ISSUER, assert_error_page, auth_params, id_claims, redirect_error,
                                          tokens_for)

BYE = "https://shop.example/bye"


def _logout(client, **params):
    return client.get("/logout?" + urlencode(params))


def _still_signed_in(client, rp) -> bool:
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none")))
    return "code=" in resp.headers.get("Location", "")


def _assert_signed_out(client, rp):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", state="after-logout")))
    redirect_error(resp, "login_required", state="after-logout")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("state", ["s-1", "x" * 128, "a b&c=d"])
def test_valid_hint_registered_uri_and_state_redirects_with_exactly_state(client, customer, rp, state):
    hint = tokens_for(client, customer, rp)["id_token"]
    resp = _logout(client, id_token_hint=hint, post_logout_redirect_uri=BYE, state=state)
    assert resp.status_code == 302
    assert resp.headers["Location"] == BYE + "?" + urlencode({"state": state})
    _assert_signed_out(client, rp)


def test_without_state_no_state_is_added(client, customer, rp):
    hint = tokens_for(client, customer, rp)["id_token"]
    resp = _logout(client, id_token_hint=hint, post_logout_redirect_uri=BYE)
    assert resp.status_code == 302 and resp.headers["Location"] == BYE
    _assert_signed_out(client, rp)


def test_logout_by_post_form(client, customer, rp):
    hint = tokens_for(client, customer, rp)["id_token"]
    resp = client.post("/logout", data={"id_token_hint": hint, "post_logout_redirect_uri": BYE, "state": "p"})
    assert resp.status_code == 302 and resp.headers["Location"] == BYE + "?state=p"
    _assert_signed_out(client, rp)


@pytest.mark.parametrize("uri", [BYE + "?foo=bar", BYE + "/", "https://shop.example/cb", "https://evil.example/bye",
                                 "https://SHOP.example/bye", BYE + "#x"])
def test_unregistered_or_changed_post_logout_uri_never_redirects(client, customer, rp, uri):
    hint = tokens_for(client, customer, rp)["id_token"]
    resp = _logout(client, id_token_hint=hint, post_logout_redirect_uri=uri, state="s")
    assert_error_page(resp)
    assert _still_signed_in(client, rp)


def test_registered_uri_without_hint_never_redirects(client, customer, rp):
    tokens_for(client, customer, rp)
    resp = _logout(client, post_logout_redirect_uri=BYE, client_id=rp["client_id"], state="s")
    assert "Location" not in resp.headers and resp.status_code in (200, 400)


def test_foreign_signed_hint_never_redirects(client, customer, rp):
    real = id_claims(client, tokens_for(client, customer, rp))
    key = RSAKey.generate_key(2048, auto_kid=True)
    forged = jwt.encode({"alg": "RS256", "kid": key.kid}, real, key)
    resp = _logout(client, id_token_hint=forged, post_logout_redirect_uri=BYE, state="s")
    assert_error_page(resp)
    assert _still_signed_in(client, rp)


def test_alg_none_hint_never_redirects(client, customer, rp):
    real = id_claims(client, tokens_for(client, customer, rp))
    unsigned = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(real) + "."
    resp = _logout(client, id_token_hint=unsigned, post_logout_redirect_uri=BYE, state="s")
    assert_error_page(resp)
    assert _still_signed_in(client, rp)


def test_hint_with_another_issuer_never_redirects(client, app, customer, rp):
    claims = id_claims(client, tokens_for(client, customer, rp))
    claims["iss"] = ISSUER + "/"
    with app.app_context():
        from app.oauth2.tokens import sign

        hint = sign(claims, "RS256")
    assert_error_page(_logout(client, id_token_hint=hint, post_logout_redirect_uri=BYE))
    assert _still_signed_in(client, rp)


def test_client_id_not_matching_hint_audience_never_redirects(client, app, customer, rp):
    from app.cli import create_client

    with app.app_context():
        other, _ = create_client("Other", ["https://other.example/cb"],
                                 post_logout_redirect_uris=["https://other.example/bye"])
        other_id = other.client_id
    hint = tokens_for(client, customer, rp)["id_token"]
    resp = _logout(client, id_token_hint=hint, client_id=other_id, post_logout_redirect_uri="https://other.example/bye")
    assert_error_page(resp)


def test_expired_hint_is_accepted(client, app, customer, rp):
    claims = id_claims(client, tokens_for(client, customer, rp))
    claims["iat"], claims["exp"] = int(time.time()) - 7200, int(time.time()) - 3600
    with app.app_context():
        from app.oauth2.tokens import sign

        hint = sign(claims, "RS256")
    resp = _logout(client, id_token_hint=hint, post_logout_redirect_uri=BYE, state="old")
    assert resp.status_code == 302 and resp.headers["Location"] == BYE + "?state=old"
    _assert_signed_out(client, rp)


def test_no_hint_asks_for_confirmation_then_post_with_csrf_ends_session(client, customer, rp):
    tokens_for(client, customer, rp)
    page = _logout(client)
    assert page.status_code == 200 and "Location" not in page.headers
    html = page.get_data(as_text=True)
    assert "<button" in html and "Sign out" in html and 'action="/logout/confirm"' in html
    assert _still_signed_in(client, rp)  # the GET alone ended nothing

    forged = client.post("/logout/confirm", data={})
    assert forged.status_code == 400
    assert _still_signed_in(client, rp)

    done = client.post("/logout/confirm", data={"csrf_token": csrf_token(html)})
    assert done.status_code == 200 and "Location" not in done.headers
    _assert_signed_out(client, rp)


def test_hint_for_another_session_needs_confirmation(client, app, customer, rp):
    other_browser = app.test_client()
    hint = tokens_for(other_browser, customer, rp)["id_token"]
    tokens_for(client, customer, rp)
    page = _logout(client, id_token_hint=hint, post_logout_redirect_uri=BYE, state="s")
    assert page.status_code == 200 and "Location" not in page.headers and b"Sign out" in page.data
    done = client.post("/logout/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    assert done.status_code == 302 and done.headers["Location"] == BYE + "?state=s"
    _assert_signed_out(client, rp)


def test_after_logout_the_old_tokens_session_is_gone_and_prompt_none_fails(client, customer, rp):
    tok = tokens_for(client, customer, rp)
    first = id_claims(client, tok)
    assert _logout(client, id_token_hint=tok["id_token"]).status_code == 200  # signed-out page, no redirect
    _assert_signed_out(client, rp)
    # the hint's sid is dead: prompt=none with it must not revive anything
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", id_token_hint=tok["id_token"])))
    redirect_error(resp, "login_required")
    assert first["sid"]


def test_logout_without_session_and_without_hint_is_harmless(client):
    resp = _logout(client)
    assert resp.status_code == 200 and "Location" not in resp.headers
