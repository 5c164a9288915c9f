"""OAuth 2.0 Device Authorization Grant (RFC 8628) over the Flask test client and the real pages.

A "device" is a second test client that only talks to /device_authorization and /token; the customer
is a browser (``Customer``) that enters the code, signs in and approves or denies on the pages.
"""

from __future__ import annotations

import logging
import re
import time
from html import unescape

import pytest
from joserfc import jwt

from tests.support.browser import Customer, csrf_token, path_of

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile email offline_access"
TV_IP = "203.0.113.7"


@pytest.fixture
def tv(app):
    """A public device app (no secret: it cannot keep one) allowed the device grant and refresh."""
    from app.cli import create_client

    with app.app_context():
        c, _ = create_client("Living Room TV", [], public=True, grant_types=[DEVICE, "refresh_token"],
                             scope="openid profile email offline_access marketing share_purchase_history",
                             logo_uri="https://tv.example/logo.png")
        return {"client_id": c.client_id}


def start(client, tv, scope=SCOPE, **extra):
    resp = client.post("/device_authorization", data={"client_id": tv["client_id"], "scope": scope, **extra},
                       environ_base={"REMOTE_ADDR": TV_IP})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.get_json()


def poll(client, tv, device_code):
    return client.post("/token", data={"grant_type": DEVICE, "device_code": device_code,
                                       "client_id": tv["client_id"]})


def error_of(resp):
    return resp.status_code, resp.get_json().get("error")


def enter_code(browser: Customer, code: str, ip: str = "198.51.100.20"):
    page = browser.client.get("/device")
    return browser.client.post("/device", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                "user_code": code}, environ_base={"REMOTE_ADDR": ip})


def sign_in_to_confirmation(browser: Customer, code: str):
    """Enter the code; sign in when asked; returns the confirmation page."""
    resp = enter_code(browser, code)
    for _ in range(6):
        if resp.status_code in (302, 303):
            resp = browser.client.get(path_of(resp.headers["Location"]))
        elif resp.status_code == 200 and b'action="/login' in resp.data:
            resp = browser.submit_login(resp)
        else:
            break
    assert resp.status_code == 200 and b'name="decision"' in resp.data, resp.get_data(as_text=True)[:2000]
    return resp


def decide(browser: Customer, page, decision: str):
    html = page.get_data(as_text=True)
    code = unescape(re.search(r'name="user_code" value="([^"]+)"', html).group(1))
    return browser.client.post("/device/confirm", data={"csrf_token": csrf_token(html), "user_code": code,
                                                        "decision": decision, "purpose": ["marketing"]})


def test_discovery_advertises_the_device_endpoint_and_grant(client):
    doc = client.get("/.well-known/openid-configuration").get_json()
    assert doc["device_authorization_endpoint"] == "http://localhost/device_authorization"
    assert DEVICE in doc["grant_types_supported"]


def test_device_authorization_response(client, tv):
    data = start(client, tv)
    assert set(data) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                         "expires_in", "interval"}
    assert len(data["device_code"]) >= 43  # 32 random bytes, base64url
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", data["user_code"])
    assert data["verification_uri"] == "http://localhost/device"
    assert data["verification_uri_complete"] == "http://localhost/device?user_code=" + data["user_code"]
    assert data["expires_in"] == 600 and data["interval"] == 5
    assert start(client, tv)["device_code"] != data["device_code"]


def test_full_flow_pending_slow_down_approve_tokens_then_invalid_grant(app, client, tv, customer):
    data = start(client, tv, scope=SCOPE + " marketing")
    device_code = data["device_code"]
    assert error_of(poll(client, tv, device_code)) == (400, "authorization_pending")
    # Polling again at once is too fast: slow_down, and the interval grows by 5 s (persisted, per device code).
    assert error_of(poll(client, tv, device_code)) == (400, "slow_down")
    from app.device import state

    with app.test_request_context():
        assert state.interval_of(device_code) == 10
    assert error_of(poll(client, tv, device_code)) == (400, "slow_down")
    with app.test_request_context():
        assert state.interval_of(device_code) == 15

    browser = Customer(app.test_client(), customer["email"], customer["password"])
    page = sign_in_to_confirmation(browser, data["user_code"])
    html = page.get_data(as_text=True)
    assert "Living Room TV" in html and "https://tv.example/logo.png" in html
    assert "Your email address" in html and "Stay connected when you are not using the app" in html
    assert "Marketing messages" in html  # a brand purpose, with its description
    assert TV_IP in html and data["user_code"] in html
    assert "Approve" in html and "Deny" in html
    done = decide(browser, page, "allow")
    assert done.status_code == 200 and "Device connected" in done.get_data(as_text=True)

    resp = poll(client, tv, device_code)  # approved: tokens, even though the device still polls fast
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"
    tokens = resp.get_json()
    assert set(tokens["scope"].split()) == {"openid", "profile", "email", "offline_access", "marketing"}
    assert tokens["refresh_token"] and tokens["token_type"] == "Bearer"
    idt = jwt.decode(tokens["id_token"], _keys(app)).claims
    assert idt["sub"] == customer["sub"] and idt["aud"] == tv["client_id"] and "nonce" not in idt
    assert idt["amr"] == ["pwd"] and idt["acr"] == "1" and idt["sid"] and isinstance(idt["auth_time"], int)
    assert idt["consented_purposes"]["marketing"]["granted_at"]
    at = jwt.decode(tokens["access_token"], _keys(app))
    assert at.header["typ"] == "at+jwt" and at.claims["client_id"] == tv["client_id"]

    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200
    claims = info.get_json()
    assert claims["sub"] == customer["sub"] and claims["email"] == customer["email"] and claims["name"]
    assert "phone_number" not in claims  # not asked for, not consented

    # The device code is spent.
    assert error_of(poll(client, tv, device_code)) == (400, "invalid_grant")
    # The refresh token works like any other (and the family stays a device sign-in).
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                            "client_id": tv["client_id"]})
    assert refreshed.status_code == 200 and refreshed.get_json()["id_token"]

    # The same code cannot be shown or approved again.
    again = enter_code(browser, data["user_code"])
    assert again.status_code == 400 and "That code is not valid" in again.get_data(as_text=True)


def _keys(app):
    from app.keys import keyring

    with app.app_context():
        return keyring().verification_keys()


def test_global_privacy_control_preunticks_sale_or_sharing_on_the_device_page_too(app, client, tv, customer):
    data = start(client, tv, scope=SCOPE + " marketing share_purchase_history")
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    browser.client.environ_base["HTTP_SEC_GPC"] = "1"
    html = sign_in_to_confirmation(browser, data["user_code"]).get_data(as_text=True)
    assert 'value="share_purchase_history">' in html  # unticked: sale or sharing, and the browser sent GPC
    assert 'value="marketing" checked>' in html
    assert "asks us not to sell or share" in html
    plain = Customer(app.test_client(), customer["email"], customer["password"])
    other = start(client, tv, scope=SCOPE + " share_purchase_history")
    assert 'value="share_purchase_history" checked>' in sign_in_to_confirmation(plain, other["user_code"]).get_data(
        as_text=True)


def test_deny_gives_access_denied(app, client, tv, customer):
    data = start(client, tv)
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    page = sign_in_to_confirmation(browser, data["user_code"])
    done = decide(browser, page, "deny")
    assert done.status_code == 200 and "Request denied" in done.get_data(as_text=True)
    assert error_of(poll(client, tv, data["device_code"])) == (400, "access_denied")
    # The code is gone from the pages: nobody can approve it afterwards.
    assert enter_code(browser, data["user_code"]).status_code == 400


def test_an_approved_device_code_redeemed_after_a_withdrawal_gets_invalid_grant_and_no_live_token(
        app, client, tv, customer):
    """The device code is exchanged like an authorization code: the token row is written with the read of the
    customer's consent, and revoked at once when that consent is gone."""
    from app.accounts.models import User
    from app.consent import service
    from app.extensions import db
    from app.oauth2.models import Token

    data = start(client, tv)
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    assert decide(browser, sign_in_to_confirmation(browser, data["user_code"]), "allow").status_code == 200
    with app.app_context():
        service.withdraw(db.session.get(User, customer["id"]), tv["client_id"])
    assert error_of(poll(client, tv, data["device_code"])) == (400, "invalid_grant")
    with app.app_context():
        live = db.session.execute(db.select(db.func.count()).select_from(Token).where(
            Token.client_id == tv["client_id"], Token.revoked_at.is_(None))).scalar()
    assert live == 0


def test_short_lifetime_gives_expired_token_and_a_clear_page(make_app):
    app = make_app(IDP_DEVICE_CODE_TTL=3)
    from app.accounts.service import create_user
    from app.cli import create_client

    with app.app_context():
        c, _ = create_client("Console", [], public=True, grant_types=[DEVICE], scope="openid email")
        create_user("eve@example.com", "correct horse battery", "Eve")
        tv = {"client_id": c.client_id}
    client = app.test_client()
    data = start(client, tv, scope="openid email")
    assert data["expires_in"] == 3
    browser = Customer(app.test_client(), "eve@example.com", "correct horse battery")
    page = sign_in_to_confirmation(browser, data["user_code"])
    time.sleep(3.2)
    assert error_of(poll(client, tv, data["device_code"])) == (400, "expired_token")
    late = decide(browser, page, "allow")  # the page was open, but the request has expired meanwhile
    assert late.status_code == 400 and "This code no longer works" in late.get_data(as_text=True)
    assert error_of(poll(client, tv, data["device_code"])) == (400, "expired_token")


def test_user_code_normalisation(app, client, tv, customer):
    from app.device import user_codes

    assert user_codes.normalise("bcdf-ghjk") == "BCDFGHJK"
    assert user_codes.normalise(" BCDF GHJK ") == "BCDFGHJK"
    assert user_codes.normalise("bcdfghjk") == "BCDFGHJK"
    assert user_codes.normalise("BCDF–GHJK") == "BCDFGHJK"  # an en dash typed by a phone keyboard
    assert user_codes.normalise("ABCD-EFGH") is None  # vowels are never in a code
    assert user_codes.normalise("BCDF-GHJ") is None and user_codes.normalise(None) is None

    data = start(client, tv)
    typed = data["user_code"].replace("-", " ").lower()  # "bcdf ghjk"
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    page = sign_in_to_confirmation(browser, typed)
    assert data["user_code"] in page.get_data(as_text=True)


def test_verification_uri_complete_prefills_but_still_asks(app, client, tv, customer):
    data = start(client, tv)
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    page = browser.client.get(path_of(data["verification_uri_complete"]))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and f'value="{data["user_code"]}"' in html
    assert 'name="decision"' not in html  # nothing is approved by following a link
    assert error_of(poll(client, tv, data["device_code"])) == (400, "authorization_pending")


def test_signed_in_customer_goes_straight_to_the_confirmation(app, client, tv, customer):
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    login = browser.client.get("/login")
    browser.submit_login(login)
    data = start(client, tv)
    resp = enter_code(browser, data["user_code"])
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/device/confirm")
    page = browser.client.get("/device/confirm")
    assert b'name="decision"' in page.data and customer["email"].encode() in page.data


def test_brute_force_of_user_codes_is_throttled_per_browser(app, client, tv, customer):
    data = start(client, tv)
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    for i in range(10):  # ten entries per browser per 15 minutes
        resp = enter_code(browser, f"BCDF-GH{'JKLMNPQRST'[i]}Z")
        assert resp.status_code == 400 and "That code is not valid" in resp.get_data(as_text=True)
    blocked = enter_code(browser, data["user_code"])  # even the right code now waits
    assert blocked.status_code == 429 and "Too many attempts" in blocked.get_data(as_text=True)
    # Another browser (another person) is not affected.
    other = Customer(app.test_client(), customer["email"], customer["password"])
    assert enter_code(other, data["user_code"]).status_code == 303


def test_brute_force_is_throttled_per_ip_address(make_app, caplog, monkeypatch):
    app = make_app(RATELIMIT_ENABLED=True, IDP_RATELIMIT_DEVICE="5 per minute", IDP_DEVICE_ENTRY_ATTEMPTS=1000)
    # The migration run (alembic's fileConfig) disables loggers that existed before it.
    monkeypatch.setattr(logging.getLogger("app.device.views"), "disabled", False)
    caplog.set_level("INFO", logger="app.device.views")
    statuses = []
    for i in range(7):  # a fresh browser each time: the per-browser counter cannot stop this
        browser = Customer(app.test_client())
        resp = enter_code(browser, "QQQQ-QQQQ" if i % 2 else "bcdf-bcdf", ip="192.0.2.99")
        statuses.append(resp.status_code)
    assert statuses[:5] == [400] * 5 and statuses[5:] == [429, 429], statuses
    assert "Too many attempts" in resp.get_data(as_text=True)
    failures = [r.getMessage() for r in caplog.records if "device code entry failed" in r.getMessage()]
    assert len(failures) == 5 and all("192.0.2.99" in m for m in failures)
    assert not any("BCDF" in r.getMessage().upper() for r in caplog.records)  # codes never reach the logs


def test_revocation_from_account_devices_kills_the_tokens(app, client, tv, customer):
    data = start(client, tv)
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    decide(browser, sign_in_to_confirmation(browser, data["user_code"]), "allow")
    tokens = poll(client, tv, data["device_code"]).get_json()
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert client.get("/userinfo", headers=bearer).status_code == 200

    page = browser.client.get("/account/devices")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Living Room TV" in html and "Sign out this device" in html
    # CSRF protected: a forged form does nothing.
    forged = browser.client.post("/account/devices/sign-out", data={"client_id": tv["client_id"]})
    assert forged.status_code == 400
    assert client.get("/userinfo", headers=bearer).status_code == 200

    resp = browser.client.post("/account/devices/sign-out",
                               data={"csrf_token": csrf_token(html), "client_id": tv["client_id"]})
    assert resp.status_code == 303
    after = browser.client.get("/account/devices").get_data(as_text=True)
    assert "The device was signed out" in after and "Sign out this device" not in after
    assert client.get("/userinfo", headers=bearer).status_code == 401
    refused = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                          "client_id": tv["client_id"]})
    assert error_of(refused) == (400, "invalid_grant")


def test_account_devices_needs_sign_in(client):
    resp = client.get("/account/devices")
    assert resp.status_code == 303 and "/login?next=/account/devices" in resp.headers["Location"]


def test_device_authorization_errors(app, client, tv, rp, public_rp):
    def post(data, **kw):
        return client.post("/device_authorization", data=data, **kw)

    # A code-flow app is not registered for the device grant.
    resp = post({"scope": "openid"}, auth=(rp["client_id"], rp["client_secret"]))
    assert error_of(resp) == (400, "unauthorized_client")
    assert error_of(post({"client_id": public_rp["client_id"], "scope": "openid"})) == (400, "unauthorized_client")
    # Unknown client; a confidential client without its secret.
    assert post({"client_id": "nope", "scope": "openid"}).get_json()["error"] == "invalid_client"
    # Scopes as at the authorization endpoint.
    assert error_of(post({"client_id": tv["client_id"], "scope": "openid banking"})) == (400, "invalid_scope")
    assert error_of(post({"client_id": tv["client_id"], "scope": "phone"})) == (400, "invalid_scope")
    assert error_of(post({"client_id": tv["client_id"]})) == (400, "invalid_scope")
    # Form body only, no repeated parameters, no query string.
    assert error_of(post({"client_id": tv["client_id"], "scope": ["openid", "email"]})) == (400, "invalid_request")
    resp = client.post(f"/device_authorization?client_id={tv['client_id']}&scope=openid")
    assert resp.status_code in (400, 401) and resp.mimetype == "application/json"
    assert error_of(client.post("/device_authorization", json={"client_id": tv["client_id"]})) == (
        400, "invalid_request")


def test_confidential_device_client_authenticates_at_both_endpoints(app, client):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Set-top box", [], grant_types=[DEVICE], scope="openid email")
        cid = c.client_id
    resp = client.post("/device_authorization", data={"client_id": cid, "scope": "openid"})
    assert resp.get_json()["error"] == "invalid_client"  # it must use its secret
    data = client.post("/device_authorization", data={"scope": "openid"}, auth=(cid, secret)).get_json()
    resp = client.post("/token", data={"grant_type": DEVICE, "device_code": data["device_code"]},
                       auth=(cid, secret))
    assert error_of(resp) == (400, "authorization_pending")
    # Another client cannot redeem (or even probe) this device code.
    with app.app_context():
        other, other_secret = create_client("Other box", [], grant_types=[DEVICE], scope="openid")
        other_id = other.client_id
    resp = client.post("/token", data={"grant_type": DEVICE, "device_code": data["device_code"]},
                       auth=(other_id, other_secret))
    assert error_of(resp) == (400, "invalid_grant")


def test_token_endpoint_errors(client, tv):
    assert error_of(poll(client, tv, "x" * 43)) == (400, "invalid_grant")
    resp = client.post("/token", data={"grant_type": DEVICE, "client_id": tv["client_id"]})
    assert error_of(resp) == (400, "invalid_request")


def test_confirmation_without_a_pending_code_is_a_clear_page(app, customer):
    browser = Customer(app.test_client(), customer["email"], customer["password"])
    browser.submit_login(browser.client.get("/login"))
    resp = browser.client.get("/device/confirm")
    assert resp.status_code == 400 and "This code no longer works" in resp.get_data(as_text=True)


def test_qr_code(client):
    svg = client.get("/device/qr?user_code=bcdf-ghjk")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    png = client.get("/device/qr?user_code=BCDFGHJK&format=png")
    assert png.status_code == 200 and png.mimetype == "image/png" and png.data.startswith(b"\x89PNG")
    bad = client.get("/device/qr?user_code=<script>")
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_request"
