"""Continue with Google / any OIDC provider, for real: a second instance of this server (gunicorn) is the upstream.

Our app under test is the Flask test client (issuer http://localhost), so its callback URLs are
http://localhost/federation/NAME/callback; the upstream's pages are driven with ``requests`` and its
final redirect is fed into our test client. The upstream plays "google" (kind google, issuer
overridden), "corp" (a generic OIDC provider, addresses not trusted) and "evil" (configured with
another issuer but the upstream's endpoints: its tokens and ``iss`` parameter must be refused).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from html import unescape
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import pytest
import requests

from tests.support.browser import Customer, csrf_token, path_of
from tests.support.metrics import TOKEN, Meter
from tests.support.server import LiveServer

PASSWORD = "upstream-password"
NAMES = ("google", "corp", "evil")


@pytest.fixture(scope="module")
def upstream():
    with LiveServer(env={"IDP_RATELIMIT_ENABLED": "false"}) as server:
        server.run_cli("users", "create", "--email", "alice@upstream.example", "--password", PASSWORD,
                       "--name", "Alice Upstream", "--email-verified")
        server.run_cli("users", "create", "--email", "ada@example.com", "--password", PASSWORD,
                       "--name", "Ada Upstream", "--email-verified")
        uris = [arg for name in NAMES for arg in ("--redirect-uri", f"http://localhost/federation/{name}/callback")]
        client = server.run_cli("clients", "create", "--name", "Broker", *uris, "--trusted", "--json")
        yield SimpleNamespace(url=server.url, client_id=client["client_id"], secret=client["client_secret"],
                              server=server)


@pytest.fixture
def providers(app, upstream):
    up = upstream.url
    common = ["--client-id", upstream.client_id, "--client-secret", upstream.secret]
    runner = app.test_cli_runner()
    for args in (
        ["--name", "google", "--kind", "google", "--issuer", up, "--trust-email"],
        ["--name", "corp", "--kind", "oidc", "--issuer", up, "--label", "Corp SSO"],
        ["--name", "evil", "--kind", "oidc", "--issuer", up.replace("localhost", "127.0.0.1"), "--trust-email",
         "--authorize-url", up + "/authorize", "--token-url", up + "/token", "--jwks-uri", up + "/jwks.json",
         "--userinfo-url", up + "/userinfo"],
    ):
        result = runner.invoke(args=["upstreams", "add", *args, *common])
        assert result.exit_code == 0, result.output
    return upstream


@pytest.fixture
def fed_log(caplog, monkeypatch):
    # The migration run (alembic's fileConfig) disables loggers that existed before it.
    monkeypatch.setattr(logging.getLogger("app.federation.views"), "disabled", False)
    caplog.set_level("INFO", logger="app.federation.views")
    return caplog


def drive_upstream(url: str, email: str = "alice@upstream.example", browser: requests.Session | None = None) -> str:
    """Sign in at the upstream from its authorization URL; returns the path of its redirect to our callback."""
    browser = browser or requests.Session()
    resp = browser.get(url, allow_redirects=False, timeout=10)
    for _ in range(10):
        if resp.status_code in (302, 303):
            location = urljoin(resp.url, resp.headers["Location"])
            if location.startswith("http://localhost/"):
                return path_of(location)
            resp = browser.get(location, allow_redirects=False, timeout=10)
            continue
        if resp.status_code == 200 and 'action="/login' in resp.text:
            html = resp.text
            action = unescape(re.search(r'<form method="post" action="([^"]+)"', html).group(1))
            iid = re.search(r'name="interaction" type="hidden" value="([^"]*)"', html)
            resp = browser.post(urljoin(resp.url, action), allow_redirects=False, timeout=10, data={
                "csrf_token": csrf_token(html), "email": email, "password": PASSWORD,
                "interaction": unescape(iid.group(1)) if iid else ""})
            continue
        raise AssertionError(f"upstream answered {resp.status_code}: {resp.text[:300]}")
    raise AssertionError("too many hops at the upstream")


def start(client, name: str, **params) -> str:
    resp = client.get(f"/federation/{name}/start", query_string=params)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    return resp.headers["Location"]


def sign_in(client, name: str, email: str = "alice@upstream.example"):
    return client.get(drive_upstream(start(client, name), email))


def with_query(path: str, **changes) -> str:
    parts = urlsplit(path)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    q = {k: v for k, v in q.items() if v is not None}
    return urlunsplit(("", "", parts.path, urlencode(q), ""))


def db_state(app):
    from app.accounts.models import LoginSession, User
    from app.audit import AuditEvent
    from app.extensions import db
    from app.federation.models import FederatedIdentity

    with app.app_context():
        users = {u.email: u for u in db.session.execute(db.select(User)).scalars()}
        return SimpleNamespace(
            users={e: (u.id, u.email_verified, u.name) for e, u in users.items()},
            links=sorted((i.provider, i.user_id) for i in db.session.execute(db.select(FederatedIdentity)).scalars()),
            audit=[(e.user_id, e.type, e.data.get("provider")) for e in
                   db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars()],
            sessions=[(s.user_id, s.amr) for s in
                      db.session.execute(db.select(LoginSession).filter_by(ended_at=None)).scalars()],
        )


def claims_of(jws: str) -> dict:
    payload = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- journeys -------------------------------------------------------------------------------------------------------

def test_first_social_sign_in_creates_an_account_and_completes_the_apps_flow(app, client, providers, rp):
    resp = client.get("/authorize?" + urlencode({
        "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "response_type": "code",
        "scope": "openid email profile", "state": "s-1", "nonce": "n-1", "idp_hint": "google"}))
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/federation/google/start?interaction=")
    resp = client.get(drive_upstream(client.get(resp.headers["Location"]).headers["Location"]))
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/authorize/resume?interaction=")
    final = Customer(client).follow(resp)
    assert final.status_code == 302 and final.headers["Location"].startswith(rp["redirect_uri"])
    q = parse_qs(urlsplit(final.headers["Location"]).query)
    assert q["state"] == ["s-1"]
    token = client.post("/token", data={"grant_type": "authorization_code", "code": q["code"][0],
                                        "redirect_uri": rp["redirect_uri"]},
                        auth=(rp["client_id"], rp["client_secret"]))
    assert token.status_code == 200, token.get_data(as_text=True)
    id_token = claims_of(token.get_json()["id_token"])
    assert "fed" in id_token["amr"] and id_token["acr"] == "1" and id_token["nonce"] == "n-1"

    state = db_state(app)
    user_id, verified, name = state.users["alice@upstream.example"]
    assert verified is True and name == "Alice Upstream"  # from the upstream's userinfo, through the mapping table
    assert state.links == [("google", user_id)]
    assert (user_id, "identity_linked", "google") in state.audit
    profile = client.get("/userinfo", headers={"Authorization": "Bearer " + token.get_json()["access_token"]})
    assert profile.get_json()["sub"] == id_token["sub"]

    # A second sign-in, in another browser, signs in to the same account.
    other = app.test_client()
    resp = sign_in(other, "google")
    assert resp.status_code == 303 and resp.headers["Location"] == "/account"
    again = db_state(app)
    assert len(again.users) == 1 and again.links == state.links


def test_generic_oidc_provider_passes_on_the_upstream_amr(app, client, providers):
    resp = sign_in(client, "corp")
    assert resp.status_code == 303
    state = db_state(app)
    user_id = state.users["alice@upstream.example"][0]
    assert state.users["alice@upstream.example"][1] is False  # corp is not trusted for addresses
    assert state.sessions == [(user_id, ["fed", "pwd"])]


def test_verified_email_links_automatically(app, client, providers, customer):
    resp = sign_in(client, "google", email="ada@example.com")
    assert resp.status_code == 303
    state = db_state(app)
    assert len(state.users) == 1 and state.links == [("google", customer["id"])]
    assert (customer["id"], "identity_linked", "google") in state.audit
    assert state.sessions == [(customer["id"], ["fed"])]


def test_unverified_local_email_needs_proof_even_from_a_trusted_provider(app, client, providers, customer):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        db.session.get(User, customer["id"]).email_verified = False
        db.session.commit()
    resp = sign_in(client, "google", email="ada@example.com")
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/federation/confirm?p=")
    assert db_state(app).links == []


def test_untrusted_email_is_linked_only_after_the_password(app, client, providers, customer):
    resp = sign_in(client, "corp", email="ada@example.com")
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/federation/confirm?p=")
    assert db_state(app).links == [] and db_state(app).sessions == []
    page = client.get(path_of(resp.headers["Location"]))
    html = page.get_data(as_text=True)
    assert "ada@example.com" in html and "Corp SSO" in html
    key = parse_qs(urlsplit(resp.headers["Location"]).query)["p"][0]
    wrong = client.post("/federation/confirm", data={"csrf_token": csrf_token(html), "p": key, "password": "guess"})
    assert wrong.status_code == 401 and db_state(app).links == []
    # Another browser cannot use the pending step.
    assert app.test_client().get(path_of(resp.headers["Location"])).status_code == 400
    right = client.post("/federation/confirm", data={"csrf_token": csrf_token(html), "p": key,
                                                     "password": customer["password"]})
    assert right.status_code == 303
    state = db_state(app)
    assert state.links == [("corp", customer["id"])] and len(state.users) == 1
    assert state.sessions == [(customer["id"], ["fed", "pwd"])]
    assert (customer["id"], "identity_linked", "corp") in state.audit


def test_link_and_unlink_in_the_account_centre(app, client, providers, customer):
    browser = Customer(client, customer["email"], customer["password"])
    browser.follow(client.get("/account"))
    page = client.get("/account/identities")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Link Corp SSO" in html
    resp = client.post("/account/identities/link", data={"csrf_token": csrf_token(html), "provider": "corp"})
    assert resp.status_code == 303 and resp.headers["Location"].startswith(providers.url + "/authorize?")
    done = client.get(drive_upstream(resp.headers["Location"]))
    assert done.status_code == 303 and done.headers["Location"] == "/account/identities"
    state = db_state(app)
    assert state.links == [("corp", customer["id"])] and len(state.users) == 1
    assert (customer["id"], "identity_linked", "corp") in state.audit

    html = client.get("/account/identities").get_data(as_text=True)
    assert "is now linked" in html and "Unlink" in html
    from app.extensions import db
    from app.federation.models import FederatedIdentity

    with app.app_context():
        identity_id = db.session.execute(db.select(FederatedIdentity.id)).scalar_one()
    resp = client.post("/account/identities/unlink", data={"csrf_token": csrf_token(html), "identity": identity_id})
    assert resp.status_code == 303
    state = db_state(app)
    assert state.links == [] and (customer["id"], "identity_unlinked", "corp") in state.audit


def test_the_last_sign_in_method_cannot_be_removed(app, client, providers):
    assert sign_in(client, "google").status_code == 303
    html = client.get("/account/identities").get_data(as_text=True)
    assert "Your only way to sign in" in html
    from app.extensions import db
    from app.federation.models import FederatedIdentity

    with app.app_context():
        identity_id = db.session.execute(db.select(FederatedIdentity.id)).scalar_one()
    resp = client.post("/account/identities/unlink", data={"csrf_token": csrf_token(html), "identity": identity_id})
    assert resp.status_code == 303
    assert "only way to sign in" in client.get("/account/identities").get_data(as_text=True)
    assert len(db_state(app).links) == 1
    # With a second provider linked, one of them can go.
    resp = client.post("/account/identities/link", data={"csrf_token": csrf_token(html), "provider": "corp"})
    assert client.get(drive_upstream(resp.headers["Location"])).status_code == 303
    assert len(db_state(app).links) == 2
    resp = client.post("/account/identities/unlink", data={"csrf_token": csrf_token(html), "identity": identity_id})
    assert [p for p, _ in db_state(app).links] == ["corp"]


def test_an_identity_of_another_customer_cannot_be_linked(app, client, providers, customer):
    assert sign_in(app.test_client(), "corp").status_code == 303  # alice's account owns the corp identity
    Customer(client, customer["email"], customer["password"]).follow(client.get("/account"))
    html = client.get("/account/identities").get_data(as_text=True)
    resp = client.post("/account/identities/link", data={"csrf_token": csrf_token(html), "provider": "corp"})
    done = client.get(drive_upstream(resp.headers["Location"]))
    assert done.status_code == 303
    assert "already linked to another customer" in client.get("/account/identities").get_data(as_text=True)
    assert all(user_id != customer["id"] for _, user_id in db_state(app).links)


def test_sign_in_page_offers_the_providers_and_idp_hint_ignores_unknown_names(app, client, providers, rp):
    html = client.get("/login").get_data(as_text=True)
    if "federation/_buttons.html" in open("templates/accounts/login.html").read():
        assert "Continue with Google" in html and "Continue with Corp SSO" in html
        assert 'class="button federation-button federation-google"' in html
    resp = client.get("/authorize?" + urlencode({
        "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "response_type": "code",
        "scope": "openid", "idp_hint": "nope"}))
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/login?interaction=")


# -- attacks --------------------------------------------------------------------------------------------------------

def test_wrong_state_is_refused(app, client, providers, fed_log):
    callback = drive_upstream(start(client, "google"))
    assert client.get(with_query(callback, state="A" * 32)).status_code == 400
    assert client.get(with_query(callback, state=None)).status_code == 400
    assert db_state(app).sessions == []
    assert "unknown or expired state" in fed_log.text


def test_replayed_callback_is_refused(app, client, providers, fed_log):
    callback = drive_upstream(start(client, "google"))
    assert client.get(callback).status_code == 303
    assert client.get(callback).status_code == 400
    assert "replayed state" in fed_log.text


def test_callback_in_another_browser_is_refused(app, client, providers, fed_log):
    callback = drive_upstream(start(client, "google"))
    assert app.test_client().get(callback).status_code == 400
    assert "another browser" in fed_log.text and db_state(app).sessions == []


def test_nonce_mismatch_is_refused(app, client, providers, fed_log):
    url = start(client, "google")
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q["nonce"] = "a-nonce-this-browser-never-sent"
    callback = drive_upstream(urlunsplit(parts._replace(query=urlencode(q))))
    assert client.get(callback).status_code == 400
    assert "ID token rejected: nonce" in fed_log.text and db_state(app).users == {}


def test_callback_for_a_provider_that_was_not_started_is_refused(app, client, providers, fed_log):
    callback = drive_upstream(start(client, "google"))
    resp = client.get(callback.replace("/federation/google/", "/federation/corp/"))
    assert resp.status_code == 400
    assert "started for provider google" in fed_log.text and db_state(app).sessions == []


def test_iss_parameter_of_another_issuer_is_refused(app, client, providers, fed_log):
    callback = drive_upstream(start(client, "evil"))
    assert parse_qs(urlsplit(callback).query)["iss"] == [providers.url]
    assert client.get(callback).status_code == 400
    assert "iss parameter" in fed_log.text


def test_id_token_from_another_issuer_is_refused(app, client, providers, fed_log):
    callback = with_query(drive_upstream(start(client, "evil")), iss=None)  # an upstream that does not send iss
    assert client.get(callback).status_code == 400
    assert "ID token rejected: issuer" in fed_log.text and db_state(app).users == {}


def test_upstream_refusal_is_shown_kindly_with_a_way_back(app, client, providers, rp):
    resp = client.get("/authorize?" + urlencode({
        "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "response_type": "code",
        "scope": "openid", "idp_hint": "corp"}))
    iid = parse_qs(urlsplit(resp.headers["Location"]).query)["interaction"][0]
    url = client.get(resp.headers["Location"]).headers["Location"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    page = client.get("/federation/corp/callback?" + urlencode({"error": "access_denied", "state": state}))
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "Sign-in with Corp SSO was cancelled" in html
    assert f'href="/login?interaction={iid}"' in html


# -- metrics: idp_signins{method="federation"} ------------------------------------------------------------------------

@pytest.fixture
def meter(app):
    app.config["IDP_METRICS_TOKEN"] = TOKEN  # read per request by GET /metrics
    return Meter(app.test_client())


def test_a_wrong_password_proof_is_a_failed_federated_sign_in(app, client, providers, customer, meter):
    resp = sign_in(client, "corp", email="ada@example.com")
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/federation/confirm?p=")
    html = client.get(path_of(resp.headers["Location"])).get_data(as_text=True)
    key = parse_qs(urlsplit(resp.headers["Location"]).query)["p"][0]
    wrong = client.post("/federation/confirm", data={"csrf_token": csrf_token(html), "p": key, "password": "guess"})
    assert wrong.status_code == 401
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 1
    assert meter.delta("idp_signins_total", method="password", result="failure") == 0
    right = client.post("/federation/confirm", data={"csrf_token": csrf_token(html), "p": key,
                                                     "password": customer["password"]})
    assert right.status_code == 303
    assert meter.delta("idp_signins_total", method="federation", result="success") == 1
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 1


def test_a_state_mismatch_counts_once_and_a_failed_link_not_at_all(app, client, providers, customer, meter):
    callback = drive_upstream(start(client, "google"))
    assert client.get(with_query(callback, state="A" * 32)).status_code == 400
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 1

    # Linking in the account centre is not a sign-in: its replayed answer is refused but not counted.
    Customer(client, customer["email"], customer["password"]).follow(client.get("/account"))
    html = client.get("/account/identities").get_data(as_text=True)
    resp = client.post("/account/identities/link", data={"csrf_token": csrf_token(html), "provider": "corp"})
    linked = drive_upstream(resp.headers["Location"])
    assert client.get(linked).status_code == 303
    assert client.get(linked).status_code == 400
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 1
    assert meter.delta("idp_signins_total", method="password", result="success") == 1
