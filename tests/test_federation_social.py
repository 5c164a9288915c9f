"""Continue with GitHub / Facebook / Apple against small real HTTP fakes of their endpoints and APIs."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.support.browser import csrf_token, path_of
from tests.support.fake_upstreams import APPLE_ISSUER, FakeUpstreams
from tests.support.metrics import TOKEN, Meter
from tests.support.server import free_port


@pytest.fixture(scope="module")
def fake():
    with FakeUpstreams() as server:
        yield server


@pytest.fixture
def fresh(fake):
    """Reset what a test may have changed on the shared fake."""
    import copy

    saved = copy.deepcopy(fake.users)
    yield fake
    fake.users, fake.id_token_overrides, fake.deny = saved, {}, False
    fake.apple_seen.clear()


@pytest.fixture
def providers(app, fresh, tmp_path):
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(fresh.apple_private_key_pem())
    runner = app.test_cli_runner()
    commands = [
        ["--name", "github", "--kind", "github", "--client-id", "gh-client", "--client-secret", "gh-secret",
         "--trust-email", "--authorize-url", fresh.url + "/github/authorize", "--token-url",
         fresh.url + "/github/token", "--api-base-url", fresh.url + "/github/api"],
        ["--name", "facebook", "--kind", "facebook", "--client-id", "fb-client", "--client-secret-env",
         "FED_TEST_FB_SECRET", "--authorize-url", fresh.url + "/facebook/authorize", "--token-url",
         fresh.url + "/facebook/token", "--api-base-url", fresh.url + "/facebook/graph"],
        ["--name", "apple", "--kind", "apple", "--client-id", "com.example.signin", "--team-id", "TEAM123456",
         "--key-id", "KEY1234567", "--private-key-file", str(key_file), "--trust-email",
         "--authorize-url", fresh.url + "/apple/authorize", "--token-url", fresh.url + "/apple/token",
         "--jwks-uri", fresh.url + "/apple/keys"],
    ]
    for args in commands:
        result = runner.invoke(args=["upstreams", "add", *args])
        assert result.exit_code == 0, result.output
    return fresh


@pytest.fixture(autouse=True)
def facebook_secret(monkeypatch):
    monkeypatch.setenv("FED_TEST_FB_SECRET", "fb-secret")


def start(client, name, **params):
    resp = client.get(f"/federation/{name}/start", query_string=params)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    return resp.headers["Location"]


def social_sign_in(client, name):
    """Start at our server, let the fake approve, deliver its redirect to our callback; returns our answer."""
    upstream = requests.get(start(client, name), allow_redirects=False, timeout=10)
    assert upstream.status_code == 302, upstream.text
    return client.get(path_of(upstream.headers["Location"]))


def apple_authorize(client):
    answer = requests.get(start(client, "apple"), allow_redirects=False, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def apple_post(client, form):
    """The browser posts Apple's form (response_mode=form_post); we park it and re-enter by GET."""
    action = urlsplit(form["action"]).path
    resp = client.post(action, data=form["fields"])
    assert resp.status_code == 303
    return client.get(path_of(resp.headers["Location"]))


def users(app):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        return {u.email: (u.email_verified, u.name, u.picture, u.given_name, u.family_name)
                for u in db.session.execute(db.select(User)).scalars()}


def identities(app):
    from app.extensions import db
    from app.federation.models import FederatedIdentity

    with app.app_context():
        return [(i.provider, i.subject, i.email) for i in db.session.execute(db.select(FederatedIdentity)).scalars()]


def session_amr(app, client):
    from app.accounts.models import LoginSession
    from app.extensions import db

    with app.app_context():
        rows = db.session.execute(db.select(LoginSession).filter_by(ended_at=None)).scalars().all()
        return [r.amr for r in rows]


# -- GitHub ---------------------------------------------------------------------------------------------------------

def test_github_first_sign_in_uses_the_verified_primary_email(app, client, providers):
    resp = social_sign_in(client, "github")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/account")
    assert users(app)["octo@example.org"][:3] == (True, "Octo Cat", "https://avatars.example/octo.png")
    assert identities(app) == [("github", "4242", "octo@example.org")]
    assert session_amr(app, client) == [["fed"]]
    # The authorization request carried PKCE and a state; the token request used the verifier (the fake checks).
    authorize = next(p for m, p in providers.requests if p.startswith("/github/authorize"))
    q = parse_qs(urlsplit(authorize).query)
    assert q["code_challenge_method"] == ["S256"] and q["state"][0] and q["redirect_uri"] == [
        "http://localhost/federation/github/callback"]

    # A second sign-in (another browser) reuses the account.
    other = app.test_client()
    assert social_sign_in(other, "github").status_code == 303
    assert len(users(app)) == 1 and len(identities(app)) == 1


def test_github_without_a_verified_email_asks_for_one(app, client, providers):
    providers.users["github"]["emails"] = [{"email": "octo@example.org", "primary": True, "verified": False}]
    resp = social_sign_in(client, "github")
    assert resp.status_code == 303 and "/federation/email" in resp.headers["Location"]
    page = client.get(path_of(resp.headers["Location"]))
    html = page.get_data(as_text=True)
    assert "did not share an email address" in html
    key = parse_qs(urlsplit(resp.headers["Location"]).query)["p"][0]
    bad = client.post("/federation/email", data={"csrf_token": csrf_token(html), "p": key, "email": "nope"})
    assert bad.status_code == 400
    done = client.post("/federation/email", data={"csrf_token": csrf_token(html), "p": key,
                                                  "email": "Typed@Example.org"})
    assert done.status_code == 303
    assert users(app)["typed@example.org"][0] is False  # an address the customer typed starts unverified
    assert identities(app) == [("github", "4242", None)]
    # The pending step is single-use.
    again = client.post("/federation/email", data={"csrf_token": csrf_token(html), "p": key, "email": "x@example.org"})
    assert again.status_code == 400


# -- Facebook -------------------------------------------------------------------------------------------------------

def test_facebook_profile_is_mapped_and_secret_comes_from_the_environment(app, client, providers):
    resp = social_sign_in(client, "facebook")
    assert resp.status_code == 303
    verified, name, picture, given, family = users(app)["fay@example.org"]
    assert (name, picture, given, family) == ("Fay Book", "https://graph.example/fay.jpg", "Fay", "Book")
    assert verified is False  # facebook was added without --trust-email
    assert any(p.startswith("/facebook/graph/me?fields=") for _, p in providers.requests)


def test_cancelled_sign_in_shows_a_friendly_page(app, client, providers):
    providers.deny = True
    resp = social_sign_in(client, "facebook")
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "was cancelled" in html and 'href="/login"' in html
    assert users(app) == {}


# -- Apple ----------------------------------------------------------------------------------------------------------

def test_apple_client_secret_is_an_es256_jwt_signed_with_the_operator_key(app, providers):
    from app.federation import providers as registry

    with app.app_context():
        up = registry.get("apple")
        secret = up.secret()
    token = jwt.decode(secret, ECKey.import_key(providers.apple_key.as_dict(private=False)), algorithms=["ES256"])
    assert (token.header["alg"], token.header["kid"]) == ("ES256", "KEY1234567")
    c = token.claims
    assert (c["iss"], c["sub"], c["aud"]) == ("TEAM123456", "com.example.signin", APPLE_ISSUER)
    assert 0 < c["exp"] - c["iat"] <= 600 and c["exp"] > time.time()


def test_apple_form_post_stores_the_name_sent_only_on_the_first_sign_in(app, client, providers):
    form = apple_authorize(client)
    assert "user" in form["fields"]
    resp = apple_post(client, form)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    verified, name, _, given, family = users(app)["apple.user@privaterelay.appleid.com"]
    assert (verified, name, given, family) == (True, "Ann Apple", "Ann", "Apple")  # "true" as a string counts
    other = app.test_client()
    form = apple_authorize(other)
    assert "user" not in form["fields"]
    assert apple_post(other, form).status_code == 303
    assert users(app)["apple.user@privaterelay.appleid.com"][1] == "Ann Apple"
    assert len(identities(app)) == 1


def test_apple_posted_answer_cannot_be_replayed(app, client, providers):
    form = apple_authorize(client)
    resp = client.post(urlsplit(form["action"]).path, data=form["fields"])
    target = path_of(resp.headers["Location"])
    assert client.get(target).status_code == 303
    assert client.get(target).status_code == 400
    # Nor posted a second time.
    assert apple_post(client, form).status_code == 400


@pytest.mark.parametrize("override, reason", [
    ({"aud": "com.example.other"}, "audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, "expired"),
    ({"iss": "https://evil.example"}, "issuer"),
    ({"nonce": "not-the-nonce"}, "nonce"),
], ids=["wrong-audience", "expired", "other-issuer", "nonce-mismatch"])
def test_apple_id_token_checks(app, client, providers, override, reason, caplog, monkeypatch):
    import logging

    # The migration run (alembic's fileConfig) disables loggers that existed before it.
    monkeypatch.setattr(logging.getLogger("app.federation.views"), "disabled", False)
    caplog.set_level("INFO", logger="app.federation.views")
    providers.id_token_overrides = override
    resp = apple_post(client, apple_authorize(client))
    assert resp.status_code == 400
    assert "could not be completed" in resp.get_data(as_text=True)
    assert f"ID token rejected: {reason}" in caplog.text
    assert users(app) == {} and session_amr(app, client) == []


def test_apple_token_endpoint_refuses_a_bad_client_secret(app, client, providers, tmp_path):
    other_key = tmp_path / "other.p8"
    other_key.write_bytes(ECKey.generate_key("P-256", private=True).as_pem(private=True))
    result = app.test_cli_runner().invoke(args=[
        "upstreams", "add", "--replace", "--name", "apple", "--kind", "apple", "--client-id", "com.example.signin",
        "--team-id", "TEAM123456", "--key-id", "KEY1234567", "--private-key-file", str(other_key),
        "--authorize-url", providers.url + "/apple/authorize", "--token-url", providers.url + "/apple/token",
        "--jwks-uri", providers.url + "/apple/keys"])
    assert result.exit_code == 0, result.output
    resp = apple_post(client, apple_authorize(client))
    assert resp.status_code == 400 and users(app) == {}


def test_callback_with_a_forged_state_is_refused(app, client, providers):
    start(client, "github")
    resp = client.get("/federation/github/callback?code=abc&state=" + "x" * 32)
    assert resp.status_code == 400 and users(app) == {}


def test_upstream_error_without_state_is_still_friendly(client, providers):
    resp = client.get("/federation/github/callback?error=server_error")
    assert resp.status_code == 400
    assert "could not sign you in" in resp.get_data(as_text=True)


def test_unknown_provider_pages(client, providers):
    assert client.get("/federation/nope/start").status_code == 404
    assert client.get("/federation/nope/callback?code=a&state=b").status_code == 404
    assert client.post("/federation/nope/callback", data={"code": "a"}).status_code == 404
    assert client.get("/federation/NOT%20VALID/start").status_code == 404


# -- metrics: idp_signins{method="federation"} ------------------------------------------------------------------------

@pytest.fixture
def meter(app):
    app.config["IDP_METRICS_TOKEN"] = TOKEN  # read per request by GET /metrics
    return Meter(app.test_client())


def _replace_github(app, providers, client_secret="gh-secret", token_url=None):
    result = app.test_cli_runner().invoke(args=[
        "upstreams", "add", "--replace", "--name", "github", "--kind", "github", "--client-id", "gh-client",
        "--client-secret", client_secret, "--trust-email", "--authorize-url", providers.url + "/github/authorize",
        "--token-url", token_url or providers.url + "/github/token", "--api-base-url", providers.url + "/github/api"])
    assert result.exit_code == 0, result.output


def _forged_state(app, client, providers):
    start(client, "github")
    return client.get("/federation/github/callback?code=abc&state=" + "x" * 32)


def _provider_error(app, client, providers):
    state = parse_qs(urlsplit(start(client, "github")).query)["state"][0]
    return client.get("/federation/github/callback?" + urlencode({"error": "server_error", "state": state}))


def _provider_error_without_state(app, client, providers):
    return client.get("/federation/github/callback?error=temporarily_unavailable")


def _code_refused_by_the_token_endpoint(app, client, providers):
    _replace_github(app, providers, client_secret="not-the-secret")
    return social_sign_in(client, "github")


def _token_endpoint_unreachable(app, client, providers):
    _replace_github(app, providers, token_url=f"http://127.0.0.1:{free_port()}/token")
    return social_sign_in(client, "github")


def _invalid_id_token(app, client, providers):
    providers.id_token_overrides = {"aud": "com.example.other"}
    return apple_post(client, apple_authorize(client))


def _posted_answer_replayed(app, client, providers):
    form = apple_authorize(client)
    target = path_of(client.post(urlsplit(form["action"]).path, data=form["fields"]).headers["Location"])
    assert client.get(target).status_code == 303  # a sign-in that succeeds…
    return client.get(target)                      # …and its replay, which fails


@pytest.mark.parametrize("failure, status", [
    (_forged_state, 400), (_provider_error, 400), (_provider_error_without_state, 400),
    (_code_refused_by_the_token_endpoint, 400), (_token_endpoint_unreachable, 502), (_invalid_id_token, 400),
    (_posted_answer_replayed, 400),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_each_failed_federated_sign_in_is_counted_once(app, client, providers, meter, failure, status):
    resp = failure(app, client, providers)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 1
    replayed = failure is _posted_answer_replayed
    assert meter.delta("idp_signins_total", method="federation", result="success") == (1 if replayed else 0)
    assert meter.delta("idp_signins_total", method="password", result="failure") == 0
    assert session_amr(app, client) == ([["fed"]] if replayed else [])


def test_federated_success_is_counted_and_a_cancel_is_no_failure(app, client, providers, meter):
    assert social_sign_in(client, "github").status_code == 303
    assert meter.delta("idp_signins_total", method="federation", result="success") == 1
    providers.deny = True  # the customer says no at the provider (error=access_denied)
    assert social_sign_in(app.test_client(), "facebook").status_code == 400
    assert meter.delta("idp_signins_total", method="federation", result="failure") == 0
    assert meter.delta("idp_signins_total", method="federation", result="success") == 1
