"""Passkeys without a browser: a fido2-based software authenticator against the real ceremony endpoints.

Registration and sign-in (WebAuthn §7.1/§7.2 via py_webauthn), every refusal with
its JSON error, the account-centre management rules, and what apps learn: ``amr``
(RFC 8176) and ``acr`` (OpenID EAP ACR Values ``phr``/``phrh``), including
step-up from a password session with ``acr_values`` or the ``claims`` parameter.
"""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.authenticator import SoftAuthenticator
from tests.support.browser import Customer, callback_params, csrf_token, path_of, pkce_pair


def _csrf(client) -> str:
    return csrf_token(client.get("/login").get_data(as_text=True))


def _post(client, url, body, token=None):
    return client.post(url, data=json.dumps(body), content_type="application/json",
                       headers={"X-CSRFToken": token or _csrf(client)})


def _password_login(client, customer):
    who = Customer(client, customer["email"], customer["password"])
    resp = who.submit_login(client.get("/login"))
    assert resp.status_code == 303, resp.status_code
    return resp


def _signup(client, auth, email="grace@example.com", name="Grace Hopper", interaction=None):
    token = _csrf(client)
    options = _post(client, "/passkeys/signup/options", {"email": email, "name": name, "interaction": interaction},
                    token)
    assert options.status_code == 200, options.get_json()
    opts = options.get_json()
    return _post(client, "/passkeys/signup/verify", {"credential": auth.create(opts)}, token), opts


def _login_options(client, token, interaction=None):
    resp = _post(client, "/passkeys/login/options", {"interaction": interaction}, token)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _passkey_login(client, auth, interaction=None, **kwargs):
    token = _csrf(client)
    options = _login_options(client, token, interaction)
    return _post(client, "/passkeys/login/verify", {"credential": auth.get(options, **kwargs)}, token)


def _session(app, client):
    from app.accounts.models import LoginSession
    from app.crypto import keyed_hash
    from app.extensions import db

    cookie = client.get_cookie("idp_session")
    with app.app_context():
        row = db.session.execute(db.select(LoginSession).filter_by(
            secret_hash=keyed_hash(cookie.value, "session"))).scalar_one()
        return {"amr": row.amr, "acr": row.acr, "user_id": row.user_id}


def _passkeys(app, user_id=None):
    from app.extensions import db
    from app.passkeys.models import PasskeyCredential

    with app.app_context():
        q = db.select(PasskeyCredential)
        if user_id is not None:
            q = q.filter_by(user_id=user_id)
        return [{c.key: getattr(row, c.key) for c in PasskeyCredential.__table__.columns}
                for row in db.session.execute(q).scalars()]


# -- registration and sign-in ---------------------------------------------------------------------------------------

def test_sign_up_with_a_passkey_only_then_sign_in_with_it(app, client):
    auth = SoftAuthenticator()
    resp, opts = _signup(client, auth)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["redirect"] == "/account"
    assert opts["authenticatorSelection"]["residentKey"] == "required"
    assert opts["authenticatorSelection"]["userVerification"] == "required"
    assert opts["attestation"] == "none" and opts["rp"]["id"] == "localhost"
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        user = db.session.execute(db.select(User).filter_by(email="grace@example.com")).scalar_one()
        assert user.password_hash is None and user.name == "Grace Hopper"
        assert opts["user"]["id"] == _b64(user.sub.encode())  # the user handle is the opaque sub
        uid = user.id
    [row] = _passkeys(app, uid)
    assert row["name"] == "Passkey" and row["transports"] == ["internal", "hybrid"]
    assert row["backup_eligible"] is False and row["backup_state"] is False and row["sign_count"] == 1
    assert _session(app, client) == {"amr": ["hwk", "user", "mfa"], "acr": "phrh", "user_id": uid}

    client.delete_cookie("idp_session")
    resp = _passkey_login(client, auth)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"redirect": "/account"}
    assert _session(app, client)["user_id"] == uid
    [row] = _passkeys(app, uid)
    assert row["sign_count"] == 2 and row["last_used_at"] and abs(row["last_used_at"] - time.time()) < 60


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_add_a_synced_passkey_in_the_account_centre_and_sign_in(app, client, customer):
    _password_login(client, customer)
    page = client.get("/account/passkeys")
    assert page.status_code == 200 and "Add a passkey" in page.get_data(as_text=True)
    token = _csrf(client)
    auth = SoftAuthenticator(backup_eligible=True, counter_step=0,
                             aaguid=bytes.fromhex("ea9b8d664d011d213ce4b6b48cb575d4"))
    opts = _post(client, "/passkeys/register/options", {}, token).get_json()
    assert opts["user"]["name"] == customer["email"]
    resp = _post(client, "/passkeys/register/verify", {"credential": auth.create(opts)}, token)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["name"] == "Google Password Manager"
    [row] = _passkeys(app, customer["id"])
    assert row["backup_eligible"] is True and row["backup_state"] is True and row["sign_count"] == 0
    html = client.get("/account/passkeys").get_data(as_text=True)
    assert "Google Password Manager" in html and "Synced across your devices" in html
    # The same passkey again is excluded by the options and refused by the server.
    opts2 = _post(client, "/passkeys/register/options", {}, token).get_json()
    assert [c["id"] for c in opts2["excludeCredentials"]] == [row["credential_id"]]

    client.delete_cookie("idp_session")
    resp = _passkey_login(client, auth)  # counter stays 0 (synced passkeys): allowed
    assert resp.status_code == 200, resp.get_json()
    assert _session(app, client) == {"amr": ["swk", "user", "mfa"], "acr": "phr", "user_id": customer["id"]}


def test_adding_a_passkey_needs_a_recent_sign_in(app, client, customer):
    from app.accounts.models import LoginSession
    from app.extensions import db

    assert _post(client, "/passkeys/register/options", {}).get_json()["error"] == "login_required"
    _password_login(client, customer)
    with app.app_context():
        db.session.execute(db.update(LoginSession).values(auth_time=int(time.time()) - 3600))
        db.session.commit()
    resp = _post(client, "/passkeys/register/options", {})
    assert resp.status_code == 403
    body = resp.get_json()
    assert body["error"] == "reauthentication_required" and body["redirect"].startswith("/login?next=")


def test_sign_up_refuses_a_taken_or_invalid_email(client, customer):
    token = _csrf(client)
    taken = _post(client, "/passkeys/signup/options", {"email": customer["email"].upper()}, token)
    assert taken.status_code == 400 and taken.get_json()["error"] == "email_taken"
    bad = _post(client, "/passkeys/signup/options", {"email": "not-an-email"}, token)
    assert bad.get_json()["error"] == "invalid_email" and bad.get_json()["message"]


# -- refusals -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, code", [
    ({"origin": "https://evil.example"}, "wrong_origin"),
    ({"origin": "http://localhost:8080"}, "wrong_origin"),
    ({"rp_id": "evil.example"}, "wrong_rp_id"),
    ({"uv": False}, "user_verification_required"),
])
def test_sign_in_refusals(app, client, kwargs, code):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    client.delete_cookie("idp_session")
    resp = _passkey_login(client, auth, **kwargs)
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == code and body["message"]
    assert client.get_cookie("idp_session") is None


@pytest.mark.parametrize("kwargs, code", [
    ({"origin": "https://evil.example"}, "wrong_origin"),
    ({"rp_id": "evil.example"}, "wrong_rp_id"),
    ({"uv": False}, "user_verification_required"),
])
def test_registration_refusals(app, client, kwargs, code):
    auth = SoftAuthenticator()
    token = _csrf(client)
    opts = _post(client, "/passkeys/signup/options", {"email": "eve@example.com"}, token).get_json()
    resp = _post(client, "/passkeys/signup/verify", {"credential": auth.create(opts, **kwargs)}, token)
    assert resp.status_code == 400 and resp.get_json()["error"] == code
    from app.accounts.service import find_by_email

    with app.app_context():
        assert find_by_email("eve@example.com") is None  # no account without its passkey


def test_a_challenge_is_single_use(app, client):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    token = _csrf(client)
    options = _login_options(client, token)
    first = auth.get(options)
    assert _post(client, "/passkeys/login/verify", {"credential": first}, token).status_code == 200
    again = _post(client, "/passkeys/login/verify", {"credential": auth.get(options)}, token)
    assert again.status_code == 400 and again.get_json()["error"] == "challenge_replayed"
    # A challenge the server never issued.
    made_up = auth.get(options, challenge=_b64(b"x" * 32))
    assert _post(client, "/passkeys/login/verify", {"credential": made_up}, token).get_json()["error"] == \
        "challenge_expired"


def test_an_expired_challenge_is_refused(make_app):
    app = make_app(IDP_PASSKEY_CHALLENGE_TTL=1)
    client = app.test_client()
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    token = _csrf(client)
    options = _login_options(client, token)
    assert options["timeout"] == 1000
    time.sleep(1.3)
    resp = _post(client, "/passkeys/login/verify", {"credential": auth.get(options)}, token)
    assert resp.status_code == 400 and resp.get_json()["error"] == "challenge_expired"


def test_a_challenge_belongs_to_the_browser_that_asked(app, client):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    options = _login_options(client, _csrf(client))
    other = app.test_client()
    resp = _post(other, "/passkeys/login/verify", {"credential": auth.get(options)})
    assert resp.status_code == 400 and resp.get_json()["error"] == "challenge_expired"


def test_an_unknown_credential_is_refused_with_what_the_signal_api_needs(app, client):
    auth = SoftAuthenticator()
    stranger = SoftAuthenticator()
    stranger.create({"rp": {"id": "localhost"}, "user": {"id": _b64(b"someone")}, "challenge": _b64(b"c" * 32)})
    resp = _passkey_login(client, stranger)
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == "unknown_credential" and body["rp_id"] == "localhost"
    assert body["credential_id"] == next(iter(stranger.credentials))
    assert "not registered" in body["message"]
    assert auth.credentials == {}


def test_a_sign_count_regression_is_refused_and_logged(app, client, caplog, monkeypatch):
    # The migration run (alembic's fileConfig) disables loggers that existed before it.
    monkeypatch.setattr(logging.getLogger("app.passkeys.ceremony"), "disabled", False)
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    client.delete_cookie("idp_session")
    assert _passkey_login(client, auth).status_code == 200  # count 2 stored
    client.delete_cookie("idp_session")
    with caplog.at_level(logging.WARNING, logger="app.passkeys.ceremony"):
        resp = _passkey_login(client, auth, counter=2)
    assert resp.status_code == 400 and resp.get_json()["error"] == "sign_count_regression"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "sign-count" in r.getMessage()]
    assert len(warnings) == 1 and "stored=2 received=2" in warnings[0].getMessage()
    assert client.get_cookie("idp_session") is None
    assert _passkey_login(client, auth, counter=7).status_code == 200  # a genuine, higher count still works


def test_a_cancelled_ceremony_spends_the_challenge(client):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    token = _csrf(client)
    options = _login_options(client, token)
    resp = _post(client, "/passkeys/login/verify", {"cancelled": True, "challenge": options["challenge"]}, token)
    assert resp.status_code == 400 and resp.get_json() == {"error": "cancelled", "message": "Cancelled"}
    late = _post(client, "/passkeys/login/verify", {"credential": auth.get(options)}, token)
    assert late.get_json()["error"] == "challenge_replayed"


def test_the_json_endpoints_need_the_csrf_header(client):
    resp = client.post("/passkeys/login/options", data="{}", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"] == "csrf"
    bad = _post(client, "/passkeys/login/verify", {"credential": "nonsense"})
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_response"
    junk = client.post("/passkeys/login/verify", data="[", content_type="application/json",
                       headers={"X-CSRFToken": _csrf(client)})
    assert junk.status_code == 400 and junk.get_json()["error"] == "invalid_request"


# -- account centre -------------------------------------------------------------------------------------------------

def test_rename_and_the_last_sign_in_method_cannot_be_deleted(app, client):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    page = client.get("/account/passkeys")
    html = page.get_data(as_text=True)
    [row] = _passkeys(app)
    assert "Passkey" in html and "On this device only" in html and "Not used yet" in html
    token = csrf_token(html)
    resp = client.post(f"/account/passkeys/{row['id']}/rename", data={"csrf_token": token, "name": "  My  laptop "})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/account/passkeys?renamed=1")
    assert _passkeys(app)[0]["name"] == "My laptop"
    assert 'data-renamed="1"' in client.get("/account/passkeys?renamed=1").get_data(as_text=True)
    empty = client.post(f"/account/passkeys/{row['id']}/rename", data={"csrf_token": token, "name": "  "})
    assert empty.status_code == 400 and "Give the passkey a name." in empty.get_data(as_text=True)

    refused = client.post(f"/account/passkeys/{row['id']}/delete", data={"csrf_token": token})
    assert refused.status_code == 400
    assert "This is the only way to sign in to your account" in refused.get_data(as_text=True)
    assert len(_passkeys(app)) == 1

    # With a second passkey, the first can go; the deleted one no longer signs in.
    second = SoftAuthenticator()
    opts = _post(client, "/passkeys/register/options", {}, token).get_json()
    assert _post(client, "/passkeys/register/verify", {"credential": second.create(opts)}, token).status_code == 200
    gone = client.post(f"/account/passkeys/{row['id']}/delete", data={"csrf_token": token})
    assert gone.status_code == 303
    assert "Passkey deleted" in client.get("/account/passkeys").get_data(as_text=True)
    client.delete_cookie("idp_session")
    assert _passkey_login(client, auth).get_json()["error"] == "unknown_credential"
    assert _passkey_login(client, second).status_code == 200


def test_a_customer_with_a_password_may_delete_every_passkey(app, client, customer):
    _password_login(client, customer)
    token = _csrf(client)
    auth = SoftAuthenticator()
    opts = _post(client, "/passkeys/register/options", {}, token).get_json()
    assert _post(client, "/passkeys/register/verify", {"credential": auth.create(opts)}, token).status_code == 200
    [row] = _passkeys(app)
    assert client.post(f"/account/passkeys/{row['id']}/delete", data={"csrf_token": token}).status_code == 303
    assert _passkeys(app) == []


def test_someone_elses_passkey_cannot_be_touched(app, client, customer):
    other = app.test_client()
    assert _signup(other, SoftAuthenticator())[0].status_code == 200
    [row] = _passkeys(app)
    _password_login(client, customer)
    token = _csrf(client)
    assert client.post(f"/account/passkeys/{row['id']}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/account/passkeys/{row['id']}/rename",
                       data={"csrf_token": token, "name": "mine"}).status_code == 404
    assert _passkeys(app)[0]["name"] == "Passkey"


# -- OpenID Connect: amr/acr and step-up ----------------------------------------------------------------------------

def _authorize(client, rp, **extra):
    verifier, challenge = pkce_pair()
    params = dict(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope="openid",
                  state="st", nonce="n-1", code_challenge=challenge, code_challenge_method="S256", **extra)
    return client.get("/authorize", query_string=params), verifier


def _interaction(resp) -> str:
    assert resp.status_code == 303, resp.status_code
    loc = urlsplit(resp.headers["Location"])
    assert loc.path == "/login", resp.headers["Location"]
    return parse_qs(loc.query)["interaction"][0]


def _finish(client, redirect_to):
    """Follow resume → consent → the app's redirect URI."""
    who = Customer(client)
    return who.follow(client.get(path_of(redirect_to)), login=False)


def _id_token(client, rp, code, verifier) -> dict:
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"]))
    assert resp.status_code == 200, resp.get_json()
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    return jwt.decode(resp.get_json()["id_token"], keys, algorithms=["RS256"]).claims


def test_a_passkey_sign_in_inside_the_oidc_flow_tells_the_app_amr_and_acr(app, client, rp):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    client.delete_cookie("idp_session")
    start, verifier = _authorize(client, rp)
    iid = _interaction(start)
    login_page = client.get(start.headers["Location"]).get_data(as_text=True)
    assert 'action="/login' in login_page
    resp = _passkey_login(client, auth, interaction=iid)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["redirect"] == f"/authorize/resume?interaction={iid}"
    cb = callback_params(_finish(client, resp.get_json()["redirect"]))
    claims = _id_token(client, rp, cb["code"], verifier)
    assert claims["acr"] == "phrh" and claims["amr"] == ["hwk", "user", "mfa"] and claims["nonce"] == "n-1"


def test_sign_up_with_a_passkey_inside_the_oidc_flow(app, client, rp):
    start, verifier = _authorize(client, rp)
    iid = _interaction(start)
    resp, _ = _signup(client, SoftAuthenticator(backup_eligible=True), interaction=iid)
    assert resp.get_json()["redirect"] == f"/authorize/resume?interaction={iid}"
    cb = callback_params(_finish(client, resp.get_json()["redirect"]))
    claims = _id_token(client, rp, cb["code"], verifier)
    assert claims["acr"] == "phr" and claims["amr"] == ["swk", "user", "mfa"]


def test_another_browsers_interaction_is_ignored(app, client, rp):
    auth = SoftAuthenticator()
    assert _signup(client, auth)[0].status_code == 200
    iid = _interaction(_authorize(app.test_client(), rp)[0])
    resp = _passkey_login(client, auth, interaction=iid)
    assert resp.get_json() == {"redirect": "/account"}


@pytest.mark.parametrize("extra", [
    {"acr_values": "phr"},
    {"acr_values": "phrh"},
    {"claims": json.dumps({"id_token": {"acr": {"essential": True, "values": ["phr"]}}})},
])
def test_step_up_from_a_password_session_needs_a_passkey(app, client, customer, rp, extra):
    # The customer has a passkey and a password, and is signed in with the password.
    _password_login(client, customer)
    token = _csrf(client)
    auth = SoftAuthenticator()
    opts = _post(client, "/passkeys/register/options", {}, token).get_json()
    assert _post(client, "/passkeys/register/verify", {"credential": auth.create(opts)}, token).status_code == 200
    _password_login(client, customer)
    assert _session(app, client)["acr"] == "1"

    silent, _ = _authorize(client, rp, prompt="none", **extra)
    assert callback_params(silent)["error"] == "login_required"

    start, verifier = _authorize(client, rp, **extra)
    iid = _interaction(start)  # a live password session is not enough: off to sign in, no code
    page = client.get(start.headers["Location"]).get_data(as_text=True)
    if "passkeys/_signin.html" in _login_template():
        assert "This app asks you to sign in with a passkey" in page
    # Signing in with the password again does not satisfy the app either.
    again = Customer(client, customer["email"], customer["password"]).submit_login(client.get(f"/login?interaction={iid}"))
    assert _interaction(client.get(path_of(again.headers["Location"]))) == iid

    resp = _passkey_login(client, auth, interaction=iid)
    assert resp.status_code == 200, resp.get_json()
    cb = callback_params(_finish(client, resp.get_json()["redirect"]))
    claims = _id_token(client, rp, cb["code"], verifier)
    assert claims["acr"] == "phrh" and claims["amr"] == ["hwk", "user", "mfa"]  # device-bound: meets phr and phrh
    # A passkey session satisfies the request silently afterwards.
    silent_ok, _ = _authorize(client, rp, prompt="none", **extra)
    assert "code" in callback_params(silent_ok)


def test_a_synced_passkey_does_not_satisfy_phrh_but_does_satisfy_phr(app, client, rp):
    auth = SoftAuthenticator(backup_eligible=True)
    assert _signup(client, auth)[0].status_code == 200
    assert callback_params(_authorize(client, rp, prompt="none", acr_values="phrh")[0])["error"] == "login_required"
    assert "code" in callback_params(_authorize(client, rp, prompt="none", acr_values="phr")[0])
    # Unknown values are voluntary; "1" is met by any sign-in.
    assert "code" in callback_params(_authorize(client, rp, prompt="none", acr_values="urn:example:gold")[0])
    assert "code" in callback_params(_authorize(client, rp, prompt="none", acr_values="1")[0])


def test_a_password_session_still_gets_acr_1(client, customer, rp):
    _password_login(client, customer)
    start, verifier = _authorize(client, rp)
    cb = callback_params(Customer(client).follow(start, login=False))
    claims = _id_token(client, rp, cb["code"], verifier)
    assert claims["acr"] == "1" and claims["amr"] == ["pwd"]


def test_discovery_lists_the_acr_values(client):
    doc = client.get("/.well-known/openid-configuration").get_json()
    assert doc["acr_values_supported"] == ["1", "phr", "phrh"]


def _login_template() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "templates" / "accounts" / "login.html").read_text()


def test_the_passkey_pages_carry_the_labels_and_no_inline_script(app, client, customer):
    _password_login(client, customer)
    html = client.get("/account/passkeys").get_data(as_text=True)
    assert "Add a passkey" in html
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts and all("src=" in s and "nonce=" in s for s in scripts)
    if "passkeys/_signin.html" in _login_template():
        assert "Sign in with a passkey" in client.get("/login").get_data(as_text=True)


def test_wrong_methods_get_a_page_or_json_never_a_500(client, customer):
    _password_login(client, customer)
    page = client.get("/account/passkeys/1/delete")
    assert page.status_code == 405 and page.mimetype == "text/html"
    assert client.get("/passkeys/login/options").status_code == 405
    missing = client.get("/account/passkeys/999999/rename")
    assert missing.status_code == 405
    gone = client.post("/account/passkeys/999999/rename", data={"csrf_token": _csrf(client), "name": "x"})
    assert gone.status_code == 404 and gone.mimetype == "text/html"


def test_a_passkey_can_be_removed_when_a_linked_account_remains(app, client):
    """The last-method rule counts every way in: password, passkeys and linked upstream accounts."""
    from app.accounts.methods import sign_in_methods
    from app.accounts.service import create_user
    from app.extensions import db
    from app.federation.models import FederatedIdentity
    from app.passkeys.models import PasskeyCredential
    from app.passkeys.service import delete

    with app.app_context():
        user = create_user("nopw@example.com", None)
        key = PasskeyCredential(user_id=user.id, credential_id="cred-1", public_key=b"k", name="Phone")
        db.session.add(key)
        db.session.commit()
        assert sign_in_methods(user) == 1
        import pytest

        from app.passkeys.ceremony import PasskeyError

        with pytest.raises(PasskeyError):
            delete(user, key)
        db.session.add(FederatedIdentity(user_id=user.id, provider="google", subject="g-1"))
        db.session.commit()
        assert sign_in_methods(user) == 2
        delete(user, key)
        assert db.session.get(PasskeyCredential, key.id) is None
