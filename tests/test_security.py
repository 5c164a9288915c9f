"""Safe defaults: configuration checks, cookies, headers, rate limits, no secrets in logs."""

from __future__ import annotations

import logging
import time

import pytest

from app.config import ConfigError
from tests.support.browser import Customer, callback_params, csrf_token, pkce_pair

HTTPS = "https://id.example.com"


def test_refuses_to_start_with_placeholder_secret_outside_dev(make_app, production_keys):
    with pytest.raises(ConfigError):
        make_app(IDP_ISSUER=HTTPS, **production_keys)
    with pytest.raises(ConfigError):
        make_app(IDP_ISSUER=HTTPS, SECRET_KEY="short", **production_keys)
    with pytest.raises(ConfigError):
        make_app(IDP_ISSUER="http://id.example.com", SECRET_KEY="x" * 40, **production_keys)  # http only for localhost
    with pytest.raises(ConfigError):
        make_app(IDP_ISSUER="https://id.example.com/?x=1", SECRET_KEY="x" * 40, **production_keys)
    assert make_app(IDP_ISSUER=HTTPS, SECRET_KEY="x" * 40, **production_keys).config["IDP_DEV_MODE"] is False


def test_rate_limits_need_counters_shared_by_every_process_outside_development(make_app, production_keys):
    from tests.support import services

    production = {"IDP_ISSUER": HTTPS, "SECRET_KEY": "x" * 40, "RATELIMIT_ENABLED": True, **production_keys}
    with pytest.raises(ConfigError, match="REDIS_URL"):
        make_app(**production, REDIS_URL=None)  # each worker's memory: the limit's worth on every worker and node
    app = make_app(**production, REDIS_URL=services.redis_url())
    assert app.config["RATELIMIT_STORAGE_URI"] == services.redis_url()
    assert app.config["RATELIMIT_STORAGE_OPTIONS"]["socket_timeout"] == app.config["IDP_REDIS_TIMEOUT"]
    # The operator's explicit choice (one process), and development mode, may keep counters in memory.
    assert make_app(**production, REDIS_URL=None, RATELIMIT_STORAGE_URI="memory://").config["RATELIMIT_ENABLED"]
    assert make_app(RATELIMIT_ENABLED=True, REDIS_URL=None).config["RATELIMIT_STORAGE_URI"] == "memory://"


def test_https_issuer_gives_secure_cookies_hsts_and_strict_csp(make_app, customer, production_keys):
    app = make_app(IDP_ISSUER=HTTPS, SECRET_KEY="s" * 40, **production_keys)
    client = app.test_client()
    page = client.get("/login", base_url=HTTPS)
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    # Browsers must send a Referer on our own form posts: Flask-WTF requires it on https.
    assert page.headers["Referrer-Policy"] == "same-origin"
    resp = client.post("/login", base_url=HTTPS, data={
        "csrf_token": csrf_token(page.get_data(as_text=True)), "email": customer["email"],
        "password": customer["password"]}, headers={"Referer": HTTPS + "/login"})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    cookies = [h for h in resp.headers.getlist("Set-Cookie") if h.startswith("idp_session=")]
    assert cookies, resp.headers
    flags = cookies[0].lower()
    assert "httponly" in flags and "secure" in flags and "samesite=lax" in flags


def test_every_form_needs_a_csrf_token(client, customer):
    assert client.post("/login", data={"email": customer["email"], "password": customer["password"]}).status_code == 400
    assert client.post("/register", data={"email": "x@example.com", "password": "long enough"}).status_code == 400
    assert client.post("/logout/confirm").status_code == 400


def test_no_user_enumeration_on_sign_in(client, customer):
    page = client.get("/login")
    unknown = client.post("/login", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                          "email": "nobody@example.com", "password": "whatever123"})
    wrong = client.post("/login", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                        "email": customer["email"], "password": "whatever123"})
    assert unknown.status_code == wrong.status_code == 401
    strip = lambda r: r.get_data(as_text=True).replace(customer["email"], "").replace("nobody@example.com", "")  # noqa: E731
    assert "Incorrect email or password." in strip(unknown)
    assert strip(unknown).split("<form")[0] == strip(wrong).split("<form")[0]


def test_sign_in_and_token_endpoint_are_rate_limited(make_app, customer, rp):
    app = make_app(RATELIMIT_ENABLED=True, IDP_RATELIMIT_SIGNIN="3 per minute", IDP_RATELIMIT_TOKEN="4 per minute")
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Other", ["https://o.example/cb"])
        cid = c.client_id
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    answers = [client.post("/login", data={"csrf_token": token, "email": customer["email"], "password": "bad-pass-1"})
               for _ in range(4)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    tokens = [client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)) for _ in range(5)]
    statuses = [r.status_code for r in tokens]
    assert statuses[-1] == 429 and 429 not in statuses[:4]
    # A refusal says when to retry and which limit it hit (RFC 6585 §4); an answer that was let through carries
    # neither, since reading a limit's window costs round trips to its store.
    for refused, limit in ((answers[-1], "3"), (tokens[-1], "4")):
        assert 1 <= int(refused.headers["Retry-After"]) <= 61, refused.headers  # the minute's window, rounded up
        assert refused.headers["X-RateLimit-Limit"] == limit and refused.headers["X-RateLimit-Remaining"] == "0"
        assert int(refused.headers["X-RateLimit-Reset"]) >= time.time()
    for allowed in answers[:3] + tokens[:4]:
        assert "Retry-After" not in allowed.headers and "X-RateLimit-Limit" not in allowed.headers


def test_passwords_are_argon2id_with_owasp_parameters(app, customer):
    with app.app_context():
        from app.accounts.models import User
        from app.extensions import db

        user = db.session.get(User, customer["id"])
        assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_no_secrets_or_tokens_in_logs(client, customer, rp, caplog):
    caplog.set_level(logging.DEBUG)
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
        scope="openid offline_access", code_challenge=challenge, code_challenge_method="S256")))
    tok = client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                      "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                      auth=(rp["client_id"], rp["client_secret"])).get_json()
    text = caplog.text
    for secret in (customer["password"], rp["client_secret"], cb["code"], tok["access_token"], tok["refresh_token"],
                   tok["id_token"]):
        assert secret not in text
