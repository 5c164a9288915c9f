"""Health checks, Prometheus metrics and structured logs (app/observability.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import time

import pytest
import requests

from app import observability
from tests.support import services
from tests.support.browser import Customer, csrf_token
from tests.support.metrics import TOKEN, Meter
from tests.support.metrics import samples as _samples
from tests.support.metrics import scrape as _scrape
from tests.support.metrics import value as _value
from tests.support.server import LiveServer, free_port

JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9."
       "c2lnbmF0dXJlLXZhbHVlLWdvZXMtaGVyZQ")


# -- health ------------------------------------------------------------------------------------------------------------

def test_healthz_answers_without_cookies_or_caching(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in resp.headers


def test_readyz_reports_each_check(make_app):
    resp = make_app(REDIS_URL=None).test_client().get("/readyz")  # the embedded store: no Redis to check
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"status": "ok", "checks": {"database": "ok", "keys": "ok"}}
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in resp.headers


def test_readyz_checks_redis_when_configured(make_app):
    app = make_app(REDIS_URL=services.redis_url())
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["checks"] == {"database": "ok", "redis": "ok", "keys": "ok"}


def test_readyz_is_503_when_the_database_is_unreachable(make_app):
    make_app()  # the fixture cleans up through the first app: keep that one on the real database
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/idp"  # nothing listens there
    app = make_app(SQLALCHEMY_DATABASE_URI=dead, REDIS_URL=None)
    c = app.test_client()
    resp = c.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "unavailable", "checks": {"database": "failed", "keys": "ok"}}
    assert "postgres" not in resp.get_data(as_text=True)  # no connection details leak
    assert c.get("/healthz").status_code == 200  # alive all the same


def test_readyz_is_503_when_redis_is_unreachable(make_app):
    make_app()
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"] == {"database": "ok", "redis": "failed", "keys": "ok"}


def test_readyz_is_503_when_the_signing_keys_are_gone(make_app, tmp_path):
    keys = tmp_path / "keys"
    app = make_app(IDP_KEYS_DIR=str(keys), REDIS_URL=None)
    c = app.test_client()
    assert c.get("/readyz").status_code == 200
    (keys / "keyring.json").unlink()
    deadline = time.monotonic() + 10  # the ring re-reads keyring.json at most once a second
    while (resp := c.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resp.status_code == 503
    assert resp.get_json()["checks"] == {"database": "ok", "keys": "failed"}


def test_health_endpoints_are_not_rate_limited(make_app):
    app = make_app(RATELIMIT_ENABLED=True)
    c = app.test_client()
    assert all(c.get("/healthz").status_code == 200 for _ in range(30))
    assert "X-RateLimit-Limit" not in c.get("/readyz").headers


# -- metrics -----------------------------------------------------------------------------------------------------------

def test_metrics_are_404_without_a_configured_token(client):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


def test_metrics_need_the_right_bearer_token(make_app):
    c = make_app(IDP_METRICS_TOKEN=TOKEN).test_client()
    assert c.get("/metrics").status_code == 404
    for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer"):
        resp = c.get("/metrics", headers={"Authorization": header})
        assert resp.status_code in (401, 404), header
        assert b"idp_" not in resp.data
    assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_count_tokens_sign_ins_and_requests(make_app, rp, customer):
    app = make_app(IDP_METRICS_TOKEN=TOKEN)
    c = app.test_client()
    before = _scrape(c)
    resp = c.post("/token", data={"grant_type": "client_credentials"}, auth=(rp["client_id"], rp["client_secret"]))
    assert resp.status_code == 200, resp.get_json()
    page = c.get("/login")
    assert Customer(c, customer["email"], "wrong password").submit_login(page).status_code == 401
    after = _scrape(c)

    name = "idp_tokens_issued_total"
    assert _value(after, name, grant_type="client_credentials") == \
        _value(before, name, grant_type="client_credentials") + 1
    name = "idp_signins_total"
    assert _value(after, name, method="password", result="failure") == \
        _value(before, name, method="password", result="failure") + 1
    token_requests = [v for (n, labels), v in after.items() if n == "idp_http_request_duration_seconds_count"
                      and ("method", "POST") in labels and ("status", "2xx") in labels
                      and any(k == "endpoint" and v.endswith("token") for k, v in labels)]
    assert token_requests and token_requests[0] >= 1
    assert _value(after, "idp_http_request_duration_seconds_count",
                  endpoint="accounts.login", method="POST", status="4xx") >= 1


def test_sign_in_success_is_counted_by_method(make_app, customer):
    c = make_app(IDP_METRICS_TOKEN=TOKEN).test_client()
    before = _value(_scrape(c), "idp_signins_total", method="password", result="success")
    assert Customer(c, customer["email"], customer["password"]).submit_login(c.get("/login")).status_code in (302, 303)
    assert _value(_scrape(c), "idp_signins_total", method="password", result="success") == before + 1


def test_rate_limit_hits_are_counted(make_app):
    c = make_app(IDP_METRICS_TOKEN=TOKEN, RATELIMIT_ENABLED=True, IDP_RATELIMIT_SIGNIN="1 per minute").test_client()
    before = _value(_scrape(c), "idp_rate_limited_total", endpoint="accounts.login")
    form = {"csrf_token": csrf_token(c.get("/login").get_data(as_text=True)), "email": "a@example.com", "password": "x"}
    statuses = [c.post("/login", data=form).status_code for _ in range(3)]
    assert 429 in statuses
    assert _value(_scrape(c), "idp_rate_limited_total", endpoint="accounts.login") == before + statuses.count(429)


# -- logs --------------------------------------------------------------------------------------------------------------

def test_mask_hides_emails_jwts_and_long_tokens_but_keeps_identifiers():
    sub = "0f8fad5b-d9cb-469f-a165-70867728950e"
    secret = "Xy3" + "a" * 40
    sid = "Ab3_" + "c" * 28
    text = observability.mask(f"user ada.lovelace@example.co.uk token {JWT} secret={secret} sub={sub} sid={sid}")
    assert "a***@example.co.uk" in text and "ada.lovelace" not in text
    assert JWT not in text and "eyJ" not in text and secret not in text
    assert sub in text and f"sid={sid}" in text


def test_mask_hides_any_email_address_and_password_hashes(app, customer):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        stored = db.session.get(User, customer["id"]).password_hash
    text = observability.mask(f"josé.garcía@correo.españa.es bob@localhost ünal@örnek.com.tr params=('{stored}', 3)")
    for leaked in ("josé.garcía", "bob@", "ünal", stored, stored.rsplit("$", 1)[-1], stored.rsplit("$", 2)[-2]):
        assert leaked not in text
    assert "j***@correo.españa.es" in text and "b***@localhost" in text and "[password-hash]" in text


def test_a_failed_statement_logs_no_bound_values(app):
    """A database error carries the SQL but not its parameters (a password hash, an email, a token hash)."""
    import sqlalchemy as sa

    from app.extensions import db

    with app.app_context():
        with pytest.raises(sa.exc.DBAPIError) as failed:
            db.session.execute(sa.text("SELECT CAST(:hash AS INTEGER) + no_such_column"),
                               {"hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$ZGlnZXN0ZGlnZXN0"})
        db.session.rollback()
    assert "argon2id" not in str(failed.value) and "hidden due to hide_parameters" in str(failed.value)


@pytest.fixture
def json_log(make_app, caplog):
    """An app with IDP_LOG_FORMAT=json; yields (app, buffer of what its log handlers write)."""
    caplog.set_level(logging.INFO)
    app = make_app(IDP_LOG_FORMAT="json")
    handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, observability.JsonFormatter)]
    assert handlers, "JSON mode configured no handler"
    buf = io.StringIO()
    old = [h.setStream(buf) for h in handlers]
    try:
        yield app, buf
    finally:
        for h, stream in zip(handlers, old):
            h.setStream(stream)


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_log_lines_carry_the_request_id_and_mask_personal_data(json_log):
    app, buf = json_log
    c = app.test_client()
    page = c.get("/login")
    html = page.get_data(as_text=True)
    resp = c.post("/login?next=/account", headers={"X-Request-ID": "req-4711.abc"},
                  data={"csrf_token": csrf_token(html), "email": "ada@example.com", "password": "wrong"})
    assert resp.status_code == 401 and resp.headers["X-Request-ID"] == "req-4711.abc"
    with app.test_request_context("/somewhere?token=abc", headers={"X-Request-ID": "req-2"}):
        logging.getLogger("app.example").warning("mail to %s with %s", "ada@example.com", JWT)
    lines = _lines(buf)
    assert lines, buf.getvalue()
    failed = [e for e in lines if e["message"] == "sign-in failed method=pwd"]
    assert failed and failed[0]["request_id"] == "req-4711.abc"
    assert failed[0]["method"] == "POST" and failed[0]["path"] == "/login" and failed[0]["remote_addr"]
    assert {"time", "level", "logger"} <= set(failed[0]) and failed[0]["level"] == "INFO"
    mine = [e for e in lines if e["logger"] == "app.example"]
    assert mine and mine[0]["message"] == "mail to a***@example.com with [jwt]"
    assert mine[0]["request_id"] == "req-2" and mine[0]["path"] == "/somewhere"
    assert "ada@example.com" not in buf.getvalue() and JWT not in buf.getvalue()


def test_an_unsafe_request_id_is_replaced(json_log):
    app, _ = json_log
    c = app.test_client()
    for bad in ("a" * 65, "bad id", "<script>", "-x"):
        rid = c.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
    first, second = (c.get("/healthz").headers["X-Request-ID"] for _ in range(2))
    assert first != second


def test_exceptions_are_masked_in_json_logs(json_log):
    app, buf = json_log
    with app.test_request_context("/"):
        try:
            raise ValueError("duplicate key (email)=(grace@example.org)")
        except ValueError:
            logging.getLogger("app.example").exception("insert failed")
    entry = [e for e in _lines(buf) if e["logger"] == "app.example"][0]
    assert "g***@example.org" in entry["exception"] and "grace@" not in entry["exception"]


# -- the real server: several gunicorn workers -------------------------------------------------------------------------

def test_gunicorn_workers_share_metrics_and_log_json():
    with tempfile.TemporaryDirectory() as prom_dir, LiveServer(workers=2, env={
            "IDP_METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": prom_dir, "IDP_LOG_FORMAT": "json"}) as server:
        app = server.run_cli("clients", "create", "--name", "Batch", "--grant-type", "client_credentials", "--json")
        for _ in range(6):  # fresh connections: the two workers share the work
            r = requests.post(server.url + "/token", data={"grant_type": "client_credentials"},
                              auth=(app["client_id"], app["client_secret"]), timeout=10)
            assert r.status_code == 200, r.text
        assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 404
        for _ in range(4):  # whichever worker answers, it reports the sum of both
            text = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
            assert _value(_samples(text), "idp_tokens_issued_total", grant_type="client_credentials") == 6
        assert os.listdir(prom_dir)

        s = requests.Session()
        page = s.get(server.url + "/login", timeout=10)
        r = s.post(server.url + "/login", headers={"X-Request-ID": "live-1"}, timeout=10,
                   data={"csrf_token": csrf_token(page.text), "email": "nobody@example.com", "password": "wrong"})
        assert r.status_code == 401 and r.headers["X-Request-ID"] == "live-1"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = server.log_tail(400)
            if '"live-1"' in log:
                break
            time.sleep(0.2)
        app_lines = [line for line in log.splitlines() if line.startswith(("INFO:app.", "WARNING:app.", "{"))]
        entries = [json.loads(line) for line in app_lines]  # every application line is JSON
        assert any(e.get("request_id") == "live-1" and e["message"] == "sign-in failed method=pwd" for e in entries)
        assert "nobody@example.com" not in log


def test_consent_grants_and_withdrawals_are_counted_by_channel(make_app, customer):
    """idp_consent_events{action, channel}: one count per ledger event, none when nothing changed."""
    from tests.test_account_api import _bearer, _brand_app, _sign_in

    app = make_app(IDP_METRICS_TOKEN=TOKEN)
    client = app.test_client()
    meter = Meter(client)

    def count(action, channel):
        return meter.delta("idp_consent_events_total", action=action, channel=channel)

    shop = _brand_app(app, "Web Shop", "https://shop.example/cb")
    tv = _brand_app(app, "TV Box", "https://tv.example/cb")
    who = Customer(client, customer["email"], customer["password"])
    denied = who.follow(who.authorize(response_type="code", client_id=tv["client_id"],
                                      redirect_uri=tv["redirect_uri"], scope="openid email"), consent="deny")
    assert "error=access_denied" in denied.headers["Location"]
    assert count("granted", "consent_page") == 0  # Deny records nothing

    shop_tok = _sign_in(client, customer, shop, "openid email account marketing offline_access")
    assert count("granted", "consent_page") == 1
    _sign_in(client, customer, shop, "openid email account marketing offline_access")  # nothing new to allow
    assert count("granted", "consent_page") == 1
    _sign_in(client, customer, tv, "openid email analytics")
    assert count("granted", "consent_page") == 2

    # The account centre: one item from one app.
    page = client.get("/account/apps").get_data(as_text=True)
    assert client.post("/account/apps/withdraw", data={"csrf_token": csrf_token(page), "client_id": tv["client_id"],
                                                       "item": "analytics"}).status_code == 303
    assert count("withdrawn", "account_centre") == 1
    # The Account API: one item from every app is one event per app; withdrawing it again records nothing.
    assert client.delete("/account/api/items/email", headers=_bearer(shop_tok)).status_code == 200
    assert count("withdrawn", "api") == 2
    assert client.delete("/account/api/items/email", headers=_bearer(shop_tok)).status_code == 404
    assert count("withdrawn", "api") == 2
    assert count("withdrawn", "account_centre") == 1 and count("granted", "consent_page") == 2

    # A first-party (trusted) app is allowed without a consent page: the grant is counted under its own channel.
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Own App", ["https://own.example/cb"], trusted=True)
        own = {"client_id": c.client_id, "client_secret": secret, "redirect_uri": "https://own.example/cb"}
    _sign_in(client, customer, own, "openid email")
    assert count("granted", "first_party") == 1 and count("granted", "consent_page") == 2


# -- the access log of both production servers -------------------------------------------------------------------------
# gunicorn writes it (app/gunicorn_conf.py); under granian the app does (app/serve.py, app/access_log.py): the same
# line, so one parser reads both.

SERVERS = [pytest.param(dict(gunicorn_config="python:app.gunicorn_conf"), "gunicorn.access", id="gunicorn"),
           pytest.param(dict(server="granian"), "app.access", id="granian")]

def _log_when(server, *markers: str, timeout: float = 10) -> str:
    """The server's log once every marker appears in it (gunicorn writes the access line after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_tail(400)
        if all(m in log for m in markers) or time.monotonic() > deadline:
            return log
        time.sleep(0.2)


@pytest.mark.parametrize("kind", [pytest.param(p.values[0], id=p.id) for p in SERVERS])
def test_access_lines_carry_the_request_id_and_no_query_string(kind):
    with LiveServer(workers=1, **kind) as server:
        r = requests.get(server.url + "/login?next=/account&code=c0de-in-the-query", timeout=10,
                         headers={"X-Request-ID": "access-1", "Referer": "https://shop.example/cb?code=ref-c0de",
                                  "User-Agent": 'probe "q" agent'})
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "access-1"
        made = requests.get(server.url + "/healthz", timeout=10).headers["X-Request-ID"]  # an id the app made
        log = _log_when(server, "access-1", made)
    lines = [line for line in log.splitlines() if '"GET /login HTTP/1.1" 200' in line]
    assert len(lines) == 1 and lines[0].endswith(" access-1"), log
    # gunicorn's format: address - - [time] "request line" status bytes duration "User-Agent" request id, with the
    # double quotes inside a field escaped
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "GET /login HTTP/1\.1" 200 [1-9]\d* \d+ms "probe \\"q\\" agent" '
                        r'access-1', lines[0]), lines[0]
    assert any(line.endswith(" " + made) for line in log.splitlines() if '"GET /healthz HTTP/1.1" 200' in line)
    assert "c0de" not in log and "next=" not in log and "shop.example" not in log


@pytest.mark.parametrize("kind,logger", SERVERS)
def test_access_lines_are_json_with_the_apps_keys_under_idp_log_format_json(kind, logger):
    agent = 'probe "quoted" \\ agent'
    with LiveServer(workers=1, env={"IDP_LOG_FORMAT": "json"}, **kind) as server:
        s = requests.Session()
        page = s.get(server.url + "/login", timeout=10)
        r = s.post(server.url + "/login?code=c0de-in-the-query&state=st4te", timeout=10,
                   headers={"X-Request-ID": "access-json-1", "User-Agent": agent,
                            "Referer": "https://shop.example/cb?code=ref-c0de"},
                   data={"csrf_token": csrf_token(page.text), "email": "nobody@example.com", "password": "wrong"})
        assert r.status_code == 401 and r.headers["X-Request-ID"] == "access-json-1"
        odd = requests.get(server.url + '/no"such\\path', timeout=10)  # quotes and backslashes survive as JSON
        assert odd.status_code == 404
        log = _log_when(server, '"access-json-1"', odd.headers["X-Request-ID"])
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == logger]
    assert access and all(line.startswith("{") for line in log.splitlines() if "HTTP/1.1" in line)
    (posted,) = [e for e in access if e["request_id"] == "access-json-1"]
    assert (posted["method"], posted["path"], posted["status"], posted["level"]) == ("POST", "/login", 401, "INFO")
    assert posted["user_agent"] == agent and posted["protocol"] == "HTTP/1.1" and posted["message"] == "POST /login 401"
    assert isinstance(posted["duration_ms"], int) and posted["remote_addr"] == "127.0.0.1" and posted["time"]
    # The app's own line for that request has the same request id under the same key names.
    (app_line,) = [e for e in entries if e["logger"].startswith("app.") and e["logger"] != logger
                   and e.get("request_id") == "access-json-1"]
    assert app_line["message"] == "sign-in failed method=pwd"
    assert {"time", "level", "request_id", "method", "path"} <= set(app_line) & set(posted)
    (missing,) = [e for e in access if e["request_id"] == odd.headers["X-Request-ID"]]
    assert missing["path"] == '/no"such\\path' and missing["status"] == 404
    for secret in ("c0de", "st4te", "state=", "shop.example", "nobody@example.com"):
        assert secret not in log
    if logger != "gunicorn.access":
        return  # granian's own start-up lines are its own format
    # gunicorn's own lines too (the master's start, the worker's boot): one stream of JSON objects.
    mine = [line for line in log.splitlines() if line.strip() and "INFO  [alembic" not in line]
    assert all(line.startswith("{") for line in mine), [line for line in mine if not line.startswith("{")][:5]
    started = [e for e in entries if e["logger"] == "gunicorn.error"]
    assert any(e["message"].startswith("Starting gunicorn") for e in started), started
    assert any(e["message"].startswith("Booting worker") for e in started), started
