"""The subtle points (S-01..S-21, code flow) the OpenID conformance suite checks, one behaviour per test."""

from __future__ import annotations

import json
import re
import time
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import Customer, callback_params, pkce_pair

ISSUER = "http://localhost"
DESCRIPTION_OK = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]*$")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


# -- helpers (also imported by the other rule files) ---------------------------------------------------------------

def jwks(client) -> KeySet:
    return KeySet.import_key_set(client.get("/jwks.json").get_json())


def decode(client, token: str):
    return jwt.decode(token, jwks(client), algorithms=["RS256", "ES256"])


def auth_params(rp, **extra) -> dict:
    params = dict(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
                  scope="openid", state="st-1", nonce="n-1")
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def browse(client, customer, rp, *, consent="allow", login=True, **extra):
    """Run the authorization request through the pages; returns the response that leaves for the app."""
    who = Customer(client, customer["email"], customer["password"])
    return who.follow(who.authorize(**auth_params(rp, **extra)), consent=consent, login=login)


def exchange(client, rp, code, verifier=None, redirect_uri=None, **headers):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri or rp["redirect_uri"]}
    if verifier:
        data["code_verifier"] = verifier
    return client.post("/token", data=data, auth=(rp["client_id"], rp["client_secret"]), headers=headers)


def tokens_for(client, customer, rp, **extra) -> dict:
    cb = callback_params(browse(client, customer, rp, **extra))
    resp = exchange(client, rp, cb["code"], redirect_uri=extra.get("redirect_uri"))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def id_claims(client, tok: dict) -> dict:
    return decode(client, tok["id_token"]).claims


def sign_in(client, customer):
    """A session at the OP without any app involved (the customer signs in on the OP's own page)."""
    who = Customer(client, customer["email"], customer["password"])
    page = client.get("/login")
    assert page.status_code == 200
    resp = who.submit_login(page)
    assert resp.status_code in (302, 303), resp.status_code


def userinfo(client, access_token):
    return client.get("/userinfo", headers={"Authorization": "Bearer " + access_token})


def introspect(client, rp, token):
    return client.post("/introspect", data={"token": token}, auth=(rp["client_id"], rp["client_secret"]))


def assert_error_page(resp):
    assert resp.status_code == 400, resp.status_code
    assert "Location" not in resp.headers
    assert resp.mimetype == "text/html"


def assert_json_error(resp, status, error):
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["error"] == error, body
    assert DESCRIPTION_OK.match(body.get("error_description", ""))
    return body


def redirect_error(resp, error, state="st-1"):
    cb = callback_params(resp)
    assert cb["error"] == error, cb
    assert "code" not in cb
    assert DESCRIPTION_OK.match(cb.get("error_description", ""))
    if state is None:
        assert "state" not in cb
    else:
        assert cb["state"] == state
    return cb


def make_client(app, name="Other Shop", redirect_uris=("https://other.example/cb",), **kw):
    from app.cli import create_client

    with app.app_context():
        kw.setdefault("grant_types", ["authorization_code", "refresh_token"])
        c, secret = create_client(name, list(redirect_uris), **kw)
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": redirect_uris[0]}


# -- S-01 issuer ---------------------------------------------------------------------------------------------------

def test_s01_one_issuer_everywhere_and_no_host_header_influence(client, customer, rp):
    disc = client.get("/.well-known/openid-configuration").get_json()
    assert disc["issuer"] == ISSUER
    spoofed = client.get("/.well-known/openid-configuration",
                         headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}).get_json()
    assert spoofed == disc
    assert all("evil" not in str(v) for v in spoofed.values())

    cb = callback_params(browse(client, customer, rp))
    assert cb["iss"] == disc["issuer"]
    resp = exchange(client, rp, cb["code"], Host="evil.example", **{"X-Forwarded-Host": "evil.example"})
    assert resp.status_code == 200, resp.get_json()
    claims = id_claims(client, resp.get_json())
    assert claims["iss"] == disc["issuer"]  # plain string equality, no trailing slash
    at = decode(client, resp.get_json()["access_token"]).claims
    assert at["iss"] == disc["issuer"]


# -- S-02 error page vs redirect -----------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {"client_id": "no-such-client"},
    {"redirect_uri": "https://shop.example/callback/abcdefghij"},
    {"redirect_uri": "https://shop.example/cb?extra=1"},
    {"redirect_uri": "https://shop.example/cb2?bar=baz"},
    {"redirect_uri": "https://shop.example/cb2"},
    {"redirect_uri": "https://shop.example/cb/"},
    {"redirect_uri": "https://SHOP.example/cb"},
    {"redirect_uri": "https://evil.example/cb"},
    {"redirect_uri": None},
    {"client_id": None},
])
def test_s02_untrusted_target_gets_error_page_never_redirect(client, rp, change):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, **change)))
    assert_error_page(resp)


def test_s02_missing_redirect_uri_does_not_fall_back_even_with_other_errors(client, rp):
    # an error in another parameter must not be redirected to a default URI either
    resp = client.get("/authorize?" + urlencode(auth_params(rp, redirect_uri=None, response_type="token",
                                                            request="x")))
    assert_error_page(resp)


def test_s02_error_with_trusted_target_is_redirected(client, rp):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, scope="openid bogus")))
    cb = redirect_error(resp, "invalid_scope")
    assert resp.headers["Location"].startswith("https://shop.example/cb?")
    assert cb["iss"] == ISSUER


# -- S-03 registered query ---------------------------------------------------------------------------------------

def test_s03_registered_query_is_kept_in_success_and_error(client, customer, rp):
    uri = "https://shop.example/cb2?bar=foo"
    resp = browse(client, customer, rp, redirect_uri=uri)
    loc = urlsplit(resp.headers["Location"])
    assert (loc.scheme, loc.netloc, loc.path) == ("https", "shop.example", "/cb2")
    q = parse_qs(loc.query)
    assert q["bar"] == ["foo"] and len(q["code"]) == 1 and q["state"] == ["st-1"]
    assert "?" not in loc.query  # one query string, not "?code=" glued on
    tok = exchange(client, rp, q["code"][0], redirect_uri=uri)
    assert tok.status_code == 200, tok.get_json()

    err = client.get("/authorize?" + urlencode(auth_params(rp, redirect_uri=uri, scope="openid bogus")))
    q = parse_qs(urlsplit(err.headers["Location"]).query)
    assert q["bar"] == ["foo"] and q["error"] == ["invalid_scope"] and q["state"] == ["st-1"]


def test_s03_token_request_with_other_redirect_uri_is_refused(client, customer, rp):
    cb = callback_params(browse(client, customer, rp, redirect_uri="https://shop.example/cb2?bar=foo"))
    resp = exchange(client, rp, cb["code"], redirect_uri="https://shop.example/cb")
    assert_json_error(resp, 400, "invalid_grant")


# -- S-04 state ----------------------------------------------------------------------------------------------------

STATES = [
    "x",
    "A" * 128,
    "".join(chr(33 + (i % 94)) for i in range(128)),  # every printable ASCII character, 128 of them
    "a b+c&d=e%20f/g?h#i",
    "état-ß-☃",
]


@pytest.mark.parametrize("state", STATES)
def test_s04_state_is_echoed_byte_for_byte_on_success(client, customer, rp, state):
    cb = callback_params(browse(client, customer, rp, state=state))
    assert cb["state"] == state and cb["code"]


@pytest.mark.parametrize("state", STATES)
def test_s04_state_is_echoed_on_errors(client, rp, state):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, state=state, prompt="none")))
    redirect_error(resp, "login_required", state=state)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, state=state, response_type="token")))
    redirect_error(resp, "unsupported_response_type", state=state)


def test_s04_no_state_back_when_none_sent(client, customer, rp):
    cb = callback_params(browse(client, customer, rp, state=None))
    assert "state" not in cb and cb["code"]
    resp = client.get("/authorize?" + urlencode(auth_params(rp, state=None, scope="bogus")))
    redirect_error(resp, "invalid_scope", state=None)


# -- S-05 / S-06 / S-07 prompt, max_age, auth_time ---------------------------------------------------------------

def test_s07_prompt_none_without_session_redirects_login_required(client, rp):
    state = "s" * 128
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", state=state)))
    assert resp.status_code == 302 and b"<form" not in resp.get_data() and b"password" not in resp.get_data()
    assert resp.headers["Location"].startswith("https://shop.example/cb?")
    redirect_error(resp, "login_required", state=state)


def test_s07_prompt_none_with_session_but_no_consent_is_consent_required(client, customer, rp):
    sign_in(client, customer)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", scope="openid profile")))
    redirect_error(resp, "consent_required")
    # and a consented scope set that grows needs consent again
    browse(client, customer, rp, scope="openid")
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", scope="openid email")))
    redirect_error(resp, "consent_required")


def test_s07_prompt_none_after_denied_consent_is_not_silent(client, customer, rp):
    resp = browse(client, customer, rp, scope="openid profile", consent="deny")
    redirect_error(resp, "access_denied")
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", scope="openid profile")))
    redirect_error(resp, "consent_required")


def test_s05_prompt_none_logged_in_is_silent_with_same_sub_and_auth_time(client, customer, rp):
    first = id_claims(client, tokens_for(client, customer, rp, scope="openid profile"))
    time.sleep(1)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", scope="openid profile")))
    cb = callback_params(resp)
    assert cb["code"] and cb["state"] == "st-1"
    second_tok = exchange(client, rp, cb["code"]).get_json()
    second = id_claims(client, second_tok)
    assert second["sub"] == first["sub"] == customer["sub"]
    assert second["auth_time"] == first["auth_time"]
    assert second["iat"] > first["iat"]  # S-21: minted fresh, never replayed


def test_s05_s06_prompt_login_forces_login_and_later_auth_time(client, customer, rp):
    first = id_claims(client, tokens_for(client, customer, rp))
    time.sleep(1)
    page = browse(client, customer, rp, prompt="login", login=False)
    assert page.status_code == 200 and b'action="/login' in page.data  # re-authentication, despite the session
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.submit_login(page)))
    second = id_claims(client, exchange(client, rp, cb["code"]).get_json())
    assert second["sub"] == first["sub"]
    assert second["auth_time"] > first["auth_time"]


def test_s05_s06_max_age_1_forces_login_and_auth_time_is_present_and_recent(client, customer, rp):
    first = id_claims(client, tokens_for(client, customer, rp))
    time.sleep(2)
    page = browse(client, customer, rp, max_age="1", login=False)
    assert page.status_code == 200 and b'action="/login' in page.data
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.submit_login(page)))
    second = id_claims(client, exchange(client, rp, cb["code"]).get_json())
    assert "auth_time" in second
    assert second["auth_time"] > first["auth_time"]
    assert abs(time.time() - second["auth_time"]) < 5


def test_s06_prompt_none_with_expired_max_age_is_login_required(client, customer, rp):
    tokens_for(client, customer, rp)
    time.sleep(2)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", max_age="1")))
    redirect_error(resp, "login_required")


def test_s05_max_age_10000_reuses_session_with_auth_time_in_both(client, customer, rp):
    first = id_claims(client, tokens_for(client, customer, rp, max_age="15000"))
    assert "auth_time" in first
    resp = browse(client, customer, rp, max_age="10000", login=False, consent=None)
    cb = callback_params(resp)  # straight back to the app: no login page, no consent page
    second = id_claims(client, exchange(client, rp, cb["code"]).get_json())
    assert second["auth_time"] == first["auth_time"] and second["sub"] == first["sub"]


def test_s05_id_token_hint_with_prompt_none_is_accepted(client, customer, rp):
    first_tok = tokens_for(client, customer, rp)
    first = id_claims(client, first_tok)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", id_token_hint=first_tok["id_token"])))
    cb = callback_params(resp)
    assert cb["code"], cb
    second = id_claims(client, exchange(client, rp, cb["code"]).get_json())
    assert second["sub"] == first["sub"] and second["auth_time"] == first["auth_time"]


def test_id_token_hint_of_another_issuer_or_garbage_is_refused(client, customer, rp):
    tokens_for(client, customer, rp)
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, auto_kid=True)
    foreign = jwt.encode({"alg": "RS256", "kid": key.kid}, {"iss": ISSUER, "sub": customer["sub"]}, key)
    for hint in (foreign, "not-a-jwt", "a.b.c"):
        resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", id_token_hint=hint)))
        redirect_error(resp, "invalid_request")


def test_id_token_hint_for_another_customer_with_prompt_none_is_login_required(client, app, customer, rp):
    from app.accounts.service import create_user

    with app.app_context():
        create_user("bob@example.com", "another good password", "Bob")
    other_client = app.test_client()
    bob = {"email": "bob@example.com", "password": "another good password"}
    bob_tok = tokens_for(other_client, bob, rp)
    tokens_for(client, customer, rp)
    resp = client.get("/authorize?" + urlencode(auth_params(rp, prompt="none", id_token_hint=bob_tok["id_token"])))
    redirect_error(resp, "login_required")


# -- S-08 code reuse -----------------------------------------------------------------------------------------------

def test_s08_code_reuse_is_invalid_grant_and_revokes_the_first_tokens(client, customer, rp):
    cb = callback_params(browse(client, customer, rp, scope="openid offline_access"))
    first = exchange(client, rp, cb["code"])
    assert first.status_code == 200
    tok = first.get_json()
    assert userinfo(client, tok["access_token"]).status_code == 200
    assert introspect(client, rp, tok["access_token"]).get_json()["active"] is True

    again = exchange(client, rp, cb["code"])
    assert_json_error(again, 400, "invalid_grant")
    assert again.headers["Cache-Control"] == "no-store"

    info = userinfo(client, tok["access_token"])
    assert info.status_code == 401
    assert 'error="invalid_token"' in info.headers["WWW-Authenticate"]
    assert introspect(client, rp, tok["access_token"]).get_json() == {"active": False}
    assert introspect(client, rp, tok["refresh_token"]).get_json() == {"active": False}
    ref = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                      auth=(rp["client_id"], rp["client_secret"]))
    assert_json_error(ref, 400, "invalid_grant")


def test_s08_code_replayed_after_its_lifetime_still_revokes_the_first_tokens(make_app, customer, rp):
    short = make_app(IDP_CODE_TTL=1)
    client = short.test_client()
    cb = callback_params(browse(client, customer, rp, scope="openid offline_access"))
    tok = exchange(client, rp, cb["code"]).get_json()
    time.sleep(1.3)  # the code itself has expired; its first use keeps it long enough to catch the replay
    assert_json_error(exchange(client, rp, cb["code"]), 400, "invalid_grant")
    assert introspect(client, rp, tok["access_token"]).get_json() == {"active": False}
    assert introspect(client, rp, tok["refresh_token"]).get_json() == {"active": False}


def test_s08_code_is_bound_to_its_client(client, app, customer, rp):
    other = make_client(app, redirect_uris=("https://shop.example/cb",))
    cb = callback_params(browse(client, customer, rp))
    stolen = exchange(client, other, cb["code"])
    assert_json_error(stolen, 400, "invalid_grant")
    assert exchange(client, rp, cb["code"]).status_code == 200  # its owner can still use it


def test_s08_unknown_code_is_invalid_grant(client, rp):
    assert_json_error(exchange(client, rp, "x" * 43), 400, "invalid_grant")


# -- refresh tokens (S-16, S-18, RT-01) ----------------------------------------------------------------------------

def _refresh(client, who, refresh_token, **extra):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
                       auth=(who["client_id"], who["client_secret"]))


def test_s18_refresh_rotates_keeps_claims_and_reuse_revokes_family(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid offline_access", prompt="consent")
    first = id_claims(client, tok)
    time.sleep(1)
    ref = _refresh(client, rp, tok["refresh_token"], scope="openid offline_access")
    assert ref.status_code == 200, ref.get_json()
    assert ref.headers["Cache-Control"] == "no-store"
    new = ref.get_json()
    assert new["token_type"] == "Bearer" and 0 < new["expires_in"] <= 365 * 86400
    assert new["refresh_token"] != tok["refresh_token"]
    second = id_claims(client, new)
    for name in ("iss", "sub", "aud", "azp", "auth_time"):
        assert second[name] == first[name], name
    assert second["iat"] > first["iat"]

    reuse = _refresh(client, rp, tok["refresh_token"])
    assert_json_error(reuse, 400, "invalid_grant")
    # the whole family is gone: the rotated-in refresh token and both access tokens
    assert_json_error(_refresh(client, rp, new["refresh_token"]), 400, "invalid_grant")
    assert userinfo(client, new["access_token"]).status_code == 401
    assert userinfo(client, tok["access_token"]).status_code == 401


def test_s16_refresh_token_is_bound_to_its_client(client, app, customer, rp):
    other = make_client(app, name="Second Shop")
    tok = tokens_for(client, customer, rp, scope="openid offline_access")
    assert_json_error(_refresh(client, other, tok["refresh_token"]), 400, "invalid_grant")
    assert _refresh(client, rp, tok["refresh_token"]).status_code == 200


def test_refresh_scope_cannot_grow(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid offline_access")
    resp = _refresh(client, rp, tok["refresh_token"], scope="openid offline_access profile")
    assert_json_error(resp, 400, "invalid_scope")


def test_refresh_may_narrow_the_access_token_while_the_refresh_token_keeps_the_grant(client, customer, rp):
    """RFC 6749 §6: a refresh may ask for less than was granted, even without offline_access; the new refresh token
    keeps the scope of the one presented, so a later refresh gets the whole grant back."""
    tok = tokens_for(client, customer, rp, scope="openid offline_access profile email")
    assert set(tok["scope"].split()) == {"openid", "offline_access", "profile", "email"}

    narrow = _refresh(client, rp, tok["refresh_token"], scope="openid profile")
    assert narrow.status_code == 200, narrow.get_json()
    narrow = narrow.get_json()
    assert narrow["scope"] == "openid profile" and narrow["refresh_token"]
    assert decode(client, narrow["access_token"]).claims["scope"] == "openid profile"
    info = userinfo(client, narrow["access_token"]).get_json()
    assert info["name"] and "email" not in info
    assert introspect(client, rp, narrow["access_token"]).get_json()["scope"] == "openid profile"
    kept = introspect(client, rp, narrow["refresh_token"]).get_json()
    assert kept["active"] and set(kept["scope"].split()) == {"openid", "offline_access", "profile", "email"}

    # Asking for nothing is asking for the whole grant; asking for part of it again is fine; more is not.
    whole = _refresh(client, rp, narrow["refresh_token"]).get_json()
    assert set(whole["scope"].split()) == {"openid", "offline_access", "profile", "email"}
    assert userinfo(client, whole["access_token"]).get_json()["email"] == customer["email"]
    part = _refresh(client, rp, whole["refresh_token"], scope="email openid")
    assert part.status_code == 200 and part.get_json()["scope"] == "email openid"
    more = _refresh(client, rp, part.get_json()["refresh_token"], scope="openid phone")
    assert_json_error(more, 400, "invalid_scope")
    # A blank scope asks for nothing in particular; a repeated item counts once.
    blank = _refresh(client, rp, part.get_json()["refresh_token"], scope=" ").get_json()
    assert set(blank["scope"].split()) == {"openid", "offline_access", "profile", "email"}
    twice = _refresh(client, rp, blank["refresh_token"], scope="profile openid profile").get_json()
    assert twice["scope"] == "profile openid"


def test_a_refresh_asking_only_for_withdrawn_items_is_invalid_scope(app, client, customer, rp):
    from app.accounts.models import User
    from app.consent import service
    from app.extensions import db

    tok = tokens_for(client, customer, rp, scope="openid offline_access profile email")
    with app.app_context():
        service.withdraw(db.session.get(User, customer["id"]), rp["client_id"], item="email")
    assert_json_error(_refresh(client, rp, tok["refresh_token"], scope="email"), 400, "invalid_scope")
    rest = _refresh(client, rp, tok["refresh_token"]).get_json()  # the refused request did not use the token up
    assert set(rest["scope"].split()) == {"openid", "offline_access", "profile"}


# -- S-09 request objects ------------------------------------------------------------------------------------------

def test_s09_request_and_request_uri_are_refused_with_state(client, rp):
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdGF0ZSI6ImlubmVyIn0."
    resp = client.get("/authorize?" + urlencode(auth_params(rp, request=unsigned, state="outer-state")))
    redirect_error(resp, "request_not_supported", state="outer-state")
    resp = client.get("/authorize?" + urlencode(auth_params(rp, request_uri="https://rp.example/req#x")))
    redirect_error(resp, "request_uri_not_supported")
    disc = client.get("/.well-known/openid-configuration").get_json()
    assert disc["request_parameter_supported"] is False and disc["request_uri_parameter_supported"] is False


def test_s09_request_object_with_bad_outer_redirect_uri_is_an_error_page(client, rp):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, request="a.b.", redirect_uri=rp["redirect_uri"]
                                                            + "_invalid")))
    assert_error_page(resp)


# -- parameter validation ------------------------------------------------------------------------------------------

def test_missing_or_unsupported_response_type(client, rp):
    redirect_error(client.get("/authorize?" + urlencode(auth_params(rp, response_type=None))), "invalid_request")
    for rt in ("token", "id_token", "code id_token", "none"):
        resp = client.get("/authorize?" + urlencode(auth_params(rp, response_type=rt)))
        redirect_error(resp, "unsupported_response_type")


@pytest.mark.parametrize("extra", [
    {"display": "page"}, {"display": "popup"}, {"extra": "foobar"}, {"login_hint": "buffy@localhost"},
    {"ui_locales": "se"}, {"claims_locales": "se"}, {"acr_values": "1 2"}, {"nonce": None},
])
def test_optional_parameters_never_break_the_flow(client, customer, rp, extra):
    tok = tokens_for(client, customer, rp, **extra)
    claims = id_claims(client, tok)
    assert claims["sub"] == customer["sub"]
    if "nonce" in extra:
        assert "nonce" not in claims  # S-10: nonce is optional for the code flow
    else:
        assert claims["nonce"] == "n-1"


def test_authorization_request_by_post(client, customer, rp):
    who = Customer(client, customer["email"], customer["password"])
    resp = who.follow(client.post("/authorize", data=auth_params(rp)))
    cb = callback_params(resp)
    assert cb["code"] and cb["state"] == "st-1"


def test_scope_order_does_not_matter(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="email openid")
    body = userinfo(client, tok["access_token"]).get_json()
    assert body["email"] == customer["email"] and "name" not in body


# -- PKCE ----------------------------------------------------------------------------------------------------------

def test_pkce_plain_is_refused(client, rp):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, code_challenge="a" * 43,
                                                            code_challenge_method="plain")))
    redirect_error(resp, "invalid_request")


def test_pkce_public_client_without_challenge_is_refused(client, public_rp):
    resp = client.get("/authorize?" + urlencode(auth_params(public_rp)))
    redirect_error(resp, "invalid_request")
    assert resp.headers["Location"].startswith("com.example.app:/cb?")


def test_pkce_public_client_flow_and_missing_verifier(client, customer, public_rp):
    verifier, challenge = pkce_pair()
    for send_verifier in (False, True):
        resp = browse(client, customer, public_rp, code_challenge=challenge, code_challenge_method="S256")
        code = callback_params(resp)["code"]
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": public_rp["redirect_uri"],
                "client_id": public_rp["client_id"]}
        if send_verifier:
            data["code_verifier"] = verifier
        tok = client.post("/token", data=data)
        if send_verifier:
            assert tok.status_code == 200, tok.get_json()
            assert id_claims(client, tok.get_json())["aud"] == public_rp["client_id"]
        else:
            assert_json_error(tok, 400, "invalid_request")


def test_pkce_wrong_verifier_is_invalid_grant(client, customer, rp):
    verifier, challenge = pkce_pair()
    cb = callback_params(browse(client, customer, rp, code_challenge=challenge, code_challenge_method="S256"))
    assert_json_error(exchange(client, rp, cb["code"], verifier=pkce_pair()[0]), 400, "invalid_grant")


def test_pkce_challenge_without_verifier_is_refused(client, customer, rp):
    _, challenge = pkce_pair()
    cb = callback_params(browse(client, customer, rp, code_challenge=challenge, code_challenge_method="S256"))
    assert_json_error(exchange(client, rp, cb["code"]), 400, "invalid_request")


def test_pkce_verifier_without_challenge_is_invalid_request_but_no_pkce_succeeds(client, customer, rp):
    cb = callback_params(browse(client, customer, rp))
    assert_json_error(exchange(client, rp, cb["code"], verifier=pkce_pair()[0]), 400, "invalid_request")
    cb = callback_params(browse(client, customer, rp))
    assert exchange(client, rp, cb["code"]).status_code == 200


def test_pkce_valid_s256_for_confidential_client(client, customer, rp):
    verifier, challenge = pkce_pair()
    cb = callback_params(browse(client, customer, rp, code_challenge=challenge, code_challenge_method="S256"))
    assert exchange(client, rp, cb["code"], verifier=verifier).status_code == 200


# -- form_post and S-13 CSP ----------------------------------------------------------------------------------------

def _form_fields(html: str) -> dict:
    return {unescape(n): unescape(v) for n, v in
            re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', html)}


def _csp(resp) -> dict:
    out = {}
    for part in resp.headers["Content-Security-Policy"].split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_s13_form_post_is_an_auto_submitting_form_allowed_by_csp(client, customer, rp):
    state = "st&<\"'>"
    resp = browse(client, customer, rp, response_mode="form_post", state=state)
    assert resp.status_code == 200 and "Location" not in resp.headers
    html = resp.get_data(as_text=True)
    form = re.search(r'<form method="post" action="([^"]+)"', html)
    assert form and unescape(form.group(1)) == rp["redirect_uri"]
    fields = _form_fields(html)
    assert fields["state"] == state and fields["iss"] == ISSUER and len(fields["code"]) >= 43
    csp = _csp(resp)
    nonce = re.search(r'<script nonce="([^"]+)">[^<]*submit\(\)', html).group(1)
    assert f"'nonce-{nonce}'" in csp["script-src"]
    assert "https://shop.example" in csp["form-action"]
    assert resp.headers["Cache-Control"] == "no-store"
    tok = exchange(client, rp, fields["code"])
    assert tok.status_code == 200


def test_s04_s13_form_post_errors_are_posted(client, rp):
    resp = client.get("/authorize?" + urlencode(auth_params(rp, response_mode="form_post", prompt="none",
                                                            state="z" * 128)))
    assert resp.status_code == 200 and "Location" not in resp.headers
    fields = _form_fields(resp.get_data(as_text=True))
    assert fields["error"] == "login_required" and fields["state"] == "z" * 128 and "code" not in fields
    assert DESCRIPTION_OK.match(fields.get("error_description", ""))
    assert "https://shop.example" in _csp(resp)["form-action"]


def test_s13_login_and_consent_pages_let_forms_reach_the_app(client, customer, rp):
    who = Customer(client, customer["email"], customer["password"])
    resp = who.authorize(**auth_params(rp, scope="openid profile"))
    login = client.get(urlsplit(resp.headers["Location"]).path + "?" + urlsplit(resp.headers["Location"]).query)
    assert "https://shop.example" in _csp(login)["form-action"]
    assert _csp(login)["frame-ancestors"] == ["'none'"]
    consent = who.follow(who.submit_login(login), consent=None)
    assert b'name="decision"' in consent.data
    assert "https://shop.example" in _csp(consent)["form-action"]


# -- S-14 cookie ---------------------------------------------------------------------------------------------------

def test_s14_session_cookie_is_lax_httponly(client, customer):
    who = Customer(client, customer["email"], customer["password"])
    resp = who.submit_login(client.get("/login"))
    cookie = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith("idp_session=")]
    assert cookie and "SameSite=Lax" in cookie[0] and "HttpOnly" in cookie[0]


# -- S-15 error_description ----------------------------------------------------------------------------------------

def test_s15_error_descriptions_use_the_allowed_charset(client, rp):
    nasty = 'é"\\<>\u2603'
    cases = [
        {"scope": "openid " + nasty}, {"prompt": nasty}, {"max_age": nasty}, {"claims": nasty},
        {"response_mode": nasty}, {"response_type": nasty}, {"code_challenge": nasty, "code_challenge_method": "S256"},
        {"id_token_hint": nasty}, {nasty: "1", "state": ["a", "b"]},
    ]
    for extra in cases:
        resp = client.get("/authorize?" + urlencode(auth_params(rp, **extra), doseq=True))
        cb = callback_params(resp)
        assert cb["error"] and DESCRIPTION_OK.match(cb.get("error_description", "")), cb
        assert set(cb) <= {"error", "error_description", "error_uri", "state", "iss"}, cb
    for data in ({"grant_type": nasty}, {"grant_type": "authorization_code", "code": nasty},
                 {"grant_type": "refresh_token", "refresh_token": nasty}):
        body = client.post("/token", data=data, auth=(rp["client_id"], rp["client_secret"])).get_json()
        assert DESCRIPTION_OK.match(body.get("error_description", "")), body


# -- S-12 claims ---------------------------------------------------------------------------------------------------

PROFILE_CLAIMS = {"name", "given_name", "family_name", "middle_name", "nickname", "preferred_username", "profile",
                  "picture", "website", "gender", "birthdate", "zoneinfo", "locale", "updated_at"}
ID_TOKEN_ALLOWED = {"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "at_hash",
                    "c_hash", "nbf", "jti", "sid", "s_hash"}


def _assert_typed(claims: dict):
    for name, value in claims.items():
        assert value is not None and value != "", name
    for name in ("email_verified", "phone_number_verified"):
        if name in claims:
            assert isinstance(claims[name], bool)
    if "updated_at" in claims:
        assert isinstance(claims["updated_at"], int) and claims["updated_at"] > 631152000
    if "address" in claims:
        assert isinstance(claims["address"], dict) and all(isinstance(v, str) for v in claims["address"].values())


def test_s12_scope_openid_only_puts_no_profile_claims_anywhere(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid")
    claims = id_claims(client, tok)
    assert set(claims) <= ID_TOKEN_ALLOWED, set(claims) - ID_TOKEN_ALLOWED
    assert userinfo(client, tok["access_token"]).get_json() == {"sub": customer["sub"]}


def test_s12_scope_email_goes_to_userinfo_not_id_token(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid email")
    claims = id_claims(client, tok)
    assert "email" not in claims and "name" not in claims and set(claims) <= ID_TOKEN_ALLOWED
    body = userinfo(client, tok["access_token"]).get_json()
    assert body == {"sub": customer["sub"], "email": customer["email"], "email_verified": True}
    assert "nonce" not in body  # S-10


def test_s12_userinfo_returns_every_claim_of_granted_scopes_with_a_value(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid profile email phone address")
    claims = id_claims(client, tok)
    assert set(claims) <= ID_TOKEN_ALLOWED
    body = userinfo(client, tok["access_token"]).get_json()
    _assert_typed(body)
    assert body["sub"] == claims["sub"]
    for name in ("name", "given_name", "family_name", "updated_at", "email", "email_verified", "phone_number",
                 "phone_number_verified", "address"):
        assert name in body, name
    assert body["address"]["locality"] == "London"
    assert body["phone_number_verified"] is False and body["email_verified"] is True


def test_s12_empty_profile_values_are_omitted_not_null(client, app, rp):
    from app.accounts.service import create_user
    from app.extensions import db

    with app.app_context():
        user = create_user("empty@example.com", "a long enough password", None)
        user.nickname, user.phone_number, user.address = "", "", {"locality": "", "country": None}
        db.session.commit()
    who = {"email": "empty@example.com", "password": "a long enough password"}
    tok = tokens_for(client, who, rp, scope="openid profile email phone address")
    body = userinfo(client, tok["access_token"]).get_json()
    _assert_typed(body)
    assert "nickname" not in body and "phone_number" not in body and "address" not in body
    assert "phone_number_verified" not in body and body["email_verified"] is False


def test_s12_essential_userinfo_claim_goes_to_userinfo_only(client, customer, rp):
    claims_param = json.dumps({"userinfo": {"name": {"essential": True}}})
    who = Customer(client, customer["email"], customer["password"])
    page = who.follow(who.authorize(**auth_params(rp, claims=claims_param)), consent=None)
    assert b'name="decision"' in page.data and b"full name" in page.data  # the customer is asked
    cb = callback_params(who.follow(who.submit_consent(page)))
    tok = exchange(client, rp, cb["code"]).get_json()
    assert "name" not in id_claims(client, tok)
    body = userinfo(client, tok["access_token"]).get_json()
    assert body["name"] == "Ada Lovelace" and "email" not in body


def test_s12_denied_claim_is_not_released(client, customer, rp):
    claims_param = json.dumps({"userinfo": {"name": {"essential": True}}})
    resp = browse(client, customer, rp, claims=claims_param, consent="deny")
    redirect_error(resp, "access_denied")


def test_s12_claim_requested_for_id_token_goes_there(client, customer, rp):
    claims_param = json.dumps({"id_token": {"name": None, "email": {"essential": True}}})
    tok = tokens_for(client, customer, rp, claims=claims_param)
    claims = id_claims(client, tok)
    assert claims["name"] == "Ada Lovelace" and claims["email"] == customer["email"]
    assert "name" not in userinfo(client, tok["access_token"]).get_json()


def test_invalid_claims_parameter_is_invalid_request(client, rp):
    for bad in ("{not json", "[]", '{"userinfo": []}', '{"userinfo": {"name": 1}}'):
        redirect_error(client.get("/authorize?" + urlencode(auth_params(rp, claims=bad))), "invalid_request")


# -- userinfo (RFC 6750) -------------------------------------------------------------------------------------------

def test_userinfo_get_post_header_and_post_body_agree(client, customer, rp):
    tok = tokens_for(client, customer, rp, scope="openid email")
    at = tok["access_token"]
    get = client.get("/userinfo", headers={"Authorization": "Bearer " + at})
    post = client.post("/userinfo", headers={"Authorization": "Bearer " + at})
    body = client.post("/userinfo", data={"access_token": at})
    for resp in (get, post, body):
        assert resp.status_code == 200 and resp.mimetype == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
    assert get.get_json() == post.get_json() == body.get_json()
    assert get.get_json()["sub"] == id_claims(client, tok)["sub"]


def test_userinfo_refuses_query_token_and_bad_tokens(client, customer, rp):
    tok = tokens_for(client, customer, rp)
    at = tok["access_token"]
    resp = client.get("/userinfo?" + urlencode({"access_token": at}))
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "sub" not in (resp.get_json() or {})
    none = client.get("/userinfo")
    assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Bearer ")
    tampered = at[:-4] + ("AAAA" if not at.endswith("AAAA") else "BBBB")
    for bad in ("garbage", tampered, tok["id_token"], at + "x"):
        resp = client.get("/userinfo", headers={"Authorization": "Bearer " + bad})
        assert resp.status_code == 401, bad
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    both = client.post("/userinfo", data={"access_token": at}, headers={"Authorization": "Bearer " + at})
    assert both.status_code == 400 and 'error="invalid_request"' in both.headers["WWW-Authenticate"]


def test_userinfo_refuses_client_credentials_token(client, rp):
    resp = client.post("/token", data={"grant_type": "client_credentials"},
                       auth=(rp["client_id"], rp["client_secret"]))
    assert resp.status_code == 200, resp.get_json()
    info = userinfo(client, resp.get_json()["access_token"])
    assert info.status_code in (401, 403) and "sub" not in info.get_json()


# -- S-16 client authentication ------------------------------------------------------------------------------------

def test_s16_client_secret_post_and_basic_only_for_their_own_clients(client, app, customer, rp):
    post_rp = make_client(app, name="Post Shop", redirect_uris=("https://post.example/cb",),
                          auth_method="client_secret_post")
    disc = client.get("/.well-known/openid-configuration").get_json()
    assert {"client_secret_basic", "client_secret_post"} <= set(disc["token_endpoint_auth_methods_supported"])

    def code_for(who):
        return callback_params(browse(client, customer, who))["code"]

    def body_auth(who, code):
        return client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": who["redirect_uri"], "client_id": who["client_id"],
                                           "client_secret": who["client_secret"]})

    ok = body_auth(post_rp, code_for(post_rp))
    assert ok.status_code == 200, ok.get_json()
    assert id_claims(client, ok.get_json())["aud"] == post_rp["client_id"]
    assert_json_error(exchange(client, post_rp, code_for(post_rp)), 401, "invalid_client")
    assert_json_error(body_auth(rp, code_for(rp)), 401, "invalid_client")
    assert exchange(client, rp, code_for(rp)).status_code == 200


def test_s16_bad_secret_is_401_invalid_client_with_basic_challenge(client, rp):
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": "x" * 43,
                                       "redirect_uri": rp["redirect_uri"]}, auth=(rp["client_id"], "wrong"))
    assert_json_error(resp, 401, "invalid_client")
    assert resp.headers["WWW-Authenticate"].lower().startswith("basic")


def test_s16_two_auth_methods_at_once_are_refused(client, customer, rp):
    cb = callback_params(browse(client, customer, rp))
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                       "redirect_uri": rp["redirect_uri"], "client_id": rp["client_id"],
                                       "client_secret": rp["client_secret"]},
                       auth=(rp["client_id"], rp["client_secret"]))
    assert_json_error(resp, 400, "invalid_request")
    assert exchange(client, rp, cb["code"]).status_code == 200  # the refused request did not use the code


# -- S-18 token endpoint headers -----------------------------------------------------------------------------------

def test_s18_token_endpoint_responses_are_no_store(client, customer, rp):
    cb = callback_params(browse(client, customer, rp))
    ok = exchange(client, rp, cb["code"])
    bad = exchange(client, rp, cb["code"])
    for resp in (ok, bad):
        assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    tok = ok.get_json()
    assert tok["token_type"] == "Bearer" and 0 < tok["expires_in"] <= 365 * 86400


# -- S-17 keys -----------------------------------------------------------------------------------------------------

def test_s17_jwks_has_unique_kids_and_no_private_members(client, customer, rp):
    keys = client.get("/jwks.json").get_json()["keys"]
    assert keys
    kids = [k.get("kid") for k in keys]
    assert all(kids) and len(set(kids)) == len(kids)
    for k in keys:
        assert k["kty"] in ("RSA", "EC") and not (PRIVATE_MEMBERS & set(k)), k
    tok = tokens_for(client, customer, rp)
    token = decode(client, tok["id_token"])
    assert token.header["kid"] in kids and token.header["alg"] == "RS256"


def test_s17_es256_id_token_for_client_that_asks(client, app, customer):
    es = make_client(app, name="EC Shop", id_token_signed_response_alg="ES256")
    tok = tokens_for(client, customer, es)
    token = jwt.decode(tok["id_token"], jwks(client), algorithms=["ES256"])
    assert token.header["alg"] == "ES256" and token.header["kid"]
    from authlib.oidc.core.util import create_half_hash

    assert token.claims["at_hash"] == create_half_hash(tok["access_token"], "ES256").decode()
    assert token.claims["aud"] == es["client_id"]


# -- S-10 / S-11 / S-21 ID token contents --------------------------------------------------------------------------

def test_s10_s11_s21_id_token_nonce_at_hash_and_clock(client, customer, rp):
    tok = tokens_for(client, customer, rp, nonce="nonce with spaces & stuff")
    token = decode(client, tok["id_token"])
    c = token.claims
    from authlib.oidc.core.util import create_half_hash

    assert c["nonce"] == "nonce with spaces & stuff"
    assert c["at_hash"] == create_half_hash(tok["access_token"], "RS256").decode()
    now = time.time()
    assert abs(c["iat"] - now) < 300 and now < c["exp"] < now + 50 * 365 * 86400
    assert isinstance(c["iat"], int) and isinstance(c["exp"], int)
    assert c["aud"] == rp["client_id"] and c["azp"] == rp["client_id"]


def test_claims_parameter_cannot_reach_beyond_the_apps_registered_scopes(app, client, customer):
    """An app registered without `phone` cannot get phone_number by asking for the claim one by one."""
    import json

    from app.cli import create_client
    from tests.support.browser import Customer, callback_params, pkce_pair

    with app.app_context():
        c, secret = create_client("Narrow", ["https://narrow.example/cb"], scope="openid email")
        cid = c.client_id
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    resp = who.follow(who.authorize(
        response_type="code", client_id=cid, redirect_uri="https://narrow.example/cb", scope="openid email",
        code_challenge=challenge, code_challenge_method="S256",
        claims=json.dumps({"userinfo": {"phone_number": {"essential": True}}, "id_token": {"phone_number": None}})))
    code = callback_params(resp)["code"]
    tok = client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                      "redirect_uri": "https://narrow.example/cb"}, auth=(cid, secret)).get_json()
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]}).get_json()
    assert info["email"] == customer["email"] and "phone_number" not in info
    from joserfc import jwt as _jwt
    from joserfc.jwk import KeySet as _KeySet

    keys = _KeySet.import_key_set(client.get("/jwks.json").get_json())
    assert "phone_number" not in _jwt.decode(tok["id_token"], keys, algorithms=["RS256"]).claims
