"""OpenID Connect Back-Channel Logout 1.0 (S-20, conformance §8): logout tokens, durable delivery with retries."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import csrf_token
from tests.support.listener import Listener
from tests.support.metrics import TOKEN, Meter
from tests.test_conformance_rules import ISSUER, id_claims, tokens_for

EVENT = "http://schemas.openid.net/event/backchannel-logout"
BYE = "https://shop.example/bye"


@pytest.fixture
def listener():
    with Listener() as srv:
        yield srv


def _register(app, listener, **meta):
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Shop", ["https://shop.example/cb"], post_logout_redirect_uris=[BYE],
                                  backchannel_logout_uri=listener.url(), **meta)
        return {"client_id": c.client_id, "client_secret": secret, "redirect_uri": "https://shop.example/cb"}


def _rows(app):
    from app.extensions import db
    from app.outbox import OutboxMessage

    with app.app_context():
        rows = db.session.execute(db.select(OutboxMessage).order_by(OutboxMessage.id)).scalars().all()
        db.session.expunge_all()
        return rows


def _wait_rows(app, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(app)
        if rows and predicate(rows):
            return rows
        time.sleep(0.05)
    raise AssertionError(f"outbox rows never matched: {[(r.attempts, r.delivered_at, r.last_error) for r in rows]}")


def _decode(client, token: str):
    return jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").get_json()), algorithms=["RS256", "ES256"])


def _only_token(hit) -> str:
    assert hit.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = hit.form
    assert list(form) == ["logout_token"] and len(form["logout_token"]) == 1  # POSTed alone
    return form["logout_token"][0]


def _assert_logout_token(client, token, rp):
    decoded = _decode(client, token)
    assert decoded.header["typ"] == "logout+jwt"
    c = decoded.claims
    now = time.time()
    assert c["iss"] == ISSUER and c["aud"] == rp["client_id"]
    assert now - 60 <= c["iat"] <= now + 5 and c["iat"] < c["exp"] <= c["iat"] + 300
    assert isinstance(c["jti"], str) and len(c["jti"]) >= 16
    assert c["events"] == {EVENT: {}} and json.dumps(c["events"]) == json.dumps({EVENT: {}})
    assert "nonce" not in c
    return c


def test_rp_initiated_logout_posts_one_logout_token_with_sid_and_sub(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener)
    tok = tokens_for(client, customer, rp)
    idc = id_claims(client, tok)
    assert idc.get("sid")
    resp = client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"], "post_logout_redirect_uri": BYE,
                                              "state": "s"}))
    assert resp.status_code == 302 and resp.headers["Location"] == BYE + "?state=s"
    hit = listener.wait_for(1)[0]
    assert hit.path == "/bcl"
    c = _assert_logout_token(client, _only_token(hit), rp)
    assert c["sid"] == idc["sid"] and c["sub"] == idc["sub"] == customer["sub"]
    rows = _wait_rows(app, lambda rs: rs[0].delivered_at is not None)
    assert len(rows) == 1 and rows[0].attempts == 1 and rows[0].kind == "backchannel_logout"
    time.sleep(0.3)
    assert len(listener.hits) == 1  # exactly one delivery


def test_sign_out_confirmation_also_sends_a_logout_token(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener)
    idc = id_claims(client, tokens_for(client, customer, rp))
    page = client.get("/logout")
    done = client.post("/logout/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    assert done.status_code == 200
    c = _assert_logout_token(client, _only_token(listener.wait_for(1)[0]), rp)
    assert c["sid"] == idc["sid"] and c["sub"] == customer["sub"]


def test_a_failing_endpoint_gets_it_on_the_third_attempt(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread", IDP_OUTBOX_BASE_DELAY=0.2)
    listener.fail(2, status=503)
    client = app.test_client()
    rp = _register(app, listener)
    tok = tokens_for(client, customer, rp)
    client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]}))
    hits = listener.wait_for(3, timeout=20)
    tokens = [_only_token(h) for h in hits]
    claims = [_decode(client, t).claims for t in tokens]
    assert len({c["jti"] for c in claims}) == 1  # the same logout event, retried
    rows = _wait_rows(app, lambda rs: rs[0].delivered_at is not None)
    assert rows[0].attempts == 3 and rows[0].failed_at is None and rows[0].last_error is None


def test_withdrawing_everything_sends_sub_without_sid(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener)
    tokens_for(client, customer, rp, scope="openid profile")
    from app.accounts.models import User
    from app.consent import service
    from app.extensions import db

    with app.test_request_context():
        service.withdraw(db.session.get(User, customer["id"]), client_id=rp["client_id"])
    c = _assert_logout_token(client, _only_token(listener.wait_for(1)[0]), rp)
    assert c["sub"] == customer["sub"] and "sid" not in c


def test_session_required_app_gets_sid_even_when_the_grant_ends(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener, backchannel_logout_session_required=True)
    idc = id_claims(client, tokens_for(client, customer, rp, scope="openid profile"))
    from app.accounts.models import User
    from app.consent import service
    from app.extensions import db

    with app.test_request_context():
        service.withdraw(db.session.get(User, customer["id"]), client_id=rp["client_id"])
    c = _assert_logout_token(client, _only_token(listener.wait_for(1)[0]), rp)
    assert c["sub"] == customer["sub"] and c["sid"] == idc["sid"]


def test_account_deleted_reaches_every_listed_app(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="off")
    rp = _register(app, listener)
    from app import outbox
    from app.events import account_deleted

    with app.test_request_context():
        account_deleted.send(None, sub=customer["sub"], client_ids=[rp["client_id"], "no-such-app"], sids=["x"])
        assert outbox.deliver_due() == 1
    c = _assert_logout_token(app.test_client(), _only_token(listener.wait_for(1)[0]), rp)
    assert c["sub"] == customer["sub"] and "sid" not in c


def test_es256_app_gets_an_es256_logout_token(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener, id_token_signed_response_alg="ES256")
    tok = tokens_for(client, customer, rp)
    client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]}))
    token = _only_token(listener.wait_for(1)[0])
    assert _decode(client, token).header["alg"] == "ES256"


def test_apps_without_a_backchannel_uri_get_nothing_and_logout_still_works(make_app, customer, rp):
    app = make_app(IDP_OUTBOX_WORKER="off")
    client = app.test_client()
    tok = tokens_for(client, customer, rp)
    resp = client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"], "post_logout_redirect_uri": BYE}))
    assert resp.status_code == 302
    assert _rows(app) == []


def test_queued_rows_survive_a_restart_and_a_new_instance_delivers_them(make_app, customer, listener):
    # Process 1: no worker at all (as if it crashed right after the commit).
    first = make_app(IDP_OUTBOX_WORKER="off")
    client = first.test_client()
    rp = _register(first, listener)
    tok = tokens_for(client, customer, rp)
    client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]}))
    rows = _rows(first)
    assert len(rows) == 1 and rows[0].delivered_at is None and rows[0].attempts == 0
    time.sleep(0.2)
    assert listener.hits == []
    # Process 2: a new app instance with the in-process poller picks it up at its first request.
    second = make_app(IDP_OUTBOX_WORKER="thread")
    assert second.test_client().get("/.well-known/openid-configuration").status_code == 200
    _assert_logout_token(client, _only_token(listener.wait_for(1)[0]), rp)
    rows = _wait_rows(second, lambda rs: rs[0].delivered_at is not None)
    assert rows[0].payload == ""  # the token names the customer; nothing of it is kept once delivered


def test_flask_outbox_work_once_and_list(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="off")
    client = app.test_client()
    rp = _register(app, listener)
    tok = tokens_for(client, customer, rp)
    client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]}))
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["outbox", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert [(d["kind"], d["state"], d["target"]) for d in data] == [("backchannel_logout", "pending", listener.url())]
    assert "eyJ" not in listed.output  # never the token
    worked = runner.invoke(args=["outbox", "work", "--once"])
    assert worked.exit_code == 0, worked.output
    assert len(listener.hits) == 1
    assert json.loads(runner.invoke(args=["outbox", "list", "--json"]).output) == []


def test_a_row_is_claimed_by_one_worker_only(make_app, listener):
    app = make_app(IDP_OUTBOX_WORKER="off")
    from app import outbox

    with app.app_context():
        row = outbox.enqueue("backchannel_logout", listener.url(), "x")
        now = int(time.time())
        assert outbox._claim(row.id, now) is True
        assert outbox._claim(row.id, now) is False     # leased by the first
        assert outbox.deliver_due() == 0
        assert outbox._claim(row.id, now + 3600) is True  # the lease of a crashed worker runs out


def test_gives_up_after_the_last_attempt(make_app, listener):
    app = make_app(IDP_OUTBOX_WORKER="off")
    listener.status = 500
    from app import outbox
    from app.extensions import db

    with app.app_context():
        row = outbox.enqueue("backchannel_logout", listener.url(), "x")
        row.attempts = outbox.MAX_ATTEMPTS - 1
        db.session.commit()
        assert outbox.deliver_due() == 1
        db.session.refresh(row)
        assert row.failed_at is not None and row.last_error == "HTTP 500" and row.delivered_at is None
        assert row.payload == ""
        assert outbox.deliver_due() == 0


def test_backoff_doubles_and_is_capped(make_app):
    app = make_app()
    from app import outbox

    with app.app_context():
        assert [outbox.backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
        assert outbox.backoff(20) == 3600


def test_an_expiring_stored_token_is_resigned_with_the_same_jti(make_app, customer, listener):
    app = make_app(IDP_OUTBOX_WORKER="off")
    rp = _register(app, listener)
    from app import outbox
    from app.oauth2.tokens import sign
    from app.oidc import backchannel

    with app.app_context():
        old = int(time.time()) - 3600
        stale = sign({"iss": ISSUER, "aud": rp["client_id"], "iat": old, "exp": old + 120, "jti": "jti-of-the-logout-1",
                      "sub": customer["sub"], "events": {EVENT: {}}}, "RS256", typ="logout+jwt")
        outbox.enqueue(backchannel.KIND, listener.url(), stale)
        outbox.deliver_due()
    c = _assert_logout_token(app.test_client(), _only_token(listener.wait_for(1)[0]), rp)
    assert c["jti"] == "jti-of-the-logout-1" and c["exp"] > time.time()


def test_plain_http_or_private_targets_are_refused_outside_development(make_app, listener, production_keys):
    import click

    app = make_app(IDP_ISSUER="https://id.example.com", SECRET_KEY="x" * 40, IDP_OUTBOX_WORKER="off",
                   **production_keys)
    from app import outbox
    from app.cli import create_client

    with app.app_context():
        for uri in (listener.url(), "http://shop.example/bcl", "https://10.0.0.8/bcl", "https://127.0.0.1/bcl",
                    "https://[::ffff:192.168.1.1]/bcl", "https://169.254.169.254/latest", "https://shop.example/b#x"):
            with pytest.raises(click.BadParameter):
                create_client("Bad", ["https://shop.example/cb"], backchannel_logout_uri=uri)
        row = outbox.enqueue("backchannel_logout", listener.url(), "x")   # e.g. registered before an upgrade
        assert outbox.deliver_due() == 1
        from app.extensions import db

        db.session.refresh(row)
        assert row.failed_at is not None and row.last_error.startswith("refused")
    assert listener.hits == []


def test_cli_registration_refuses_plain_http_backchannel_uri_in_development_too(app):
    runner = app.test_cli_runner()
    bad = runner.invoke(args=["clients", "create", "--name", "X", "--redirect-uri", "https://x.example/cb",
                              "--backchannel-logout-uri", "http://x.example/bcl"])
    assert bad.exit_code != 0 and "https" in bad.output
    ok = runner.invoke(args=["clients", "create", "--name", "X", "--redirect-uri", "https://x.example/cb",
                             "--backchannel-logout-uri", "http://127.0.0.1:9/bcl", "--backchannel-logout-session-required",
                             "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["backchannel_logout_uri"] == "http://127.0.0.1:9/bcl"
    assert data["backchannel_logout_session_required"] is True


def test_discovery_announces_back_and_front_channel_logout(client):
    doc = client.get("/.well-known/openid-configuration").get_json()
    for key in ("backchannel_logout_supported", "backchannel_logout_session_supported",
                "frontchannel_logout_supported", "frontchannel_logout_session_supported"):
        assert doc[key] is True
    assert doc["end_session_endpoint"] == ISSUER + "/logout"


def test_account_centre_sign_out_of_a_session_sends_a_token(make_app, customer, listener):
    """Any end of the session (here: directly, as the account centre does) notifies the apps."""
    app = make_app(IDP_OUTBOX_WORKER="thread")
    client = app.test_client()
    rp = _register(app, listener)
    idc = id_claims(client, tokens_for(client, customer, rp))
    from app.accounts import sessions

    with app.test_request_context():
        sessions.end(sessions.by_sid(idc["sid"]))
    c = _assert_logout_token(client, _only_token(listener.wait_for(1)[0]), rp)
    assert c["sid"] == idc["sid"]


def test_delivery_outcomes_are_counted(make_app, customer, listener):
    """idp_outbox_deliveries{kind="backchannel_logout"}: one count per attempt, by its outcome."""
    app = make_app(IDP_OUTBOX_WORKER="off", IDP_METRICS_TOKEN=TOKEN)
    client = app.test_client()
    meter = Meter(client)
    rp = _register(app, listener)
    from app import outbox
    from app.extensions import db

    def logout_and_deliver(prepare=None):
        """Sign in to the app, log out there, and make one delivery attempt of the queued logout token."""
        tok = tokens_for(client, customer, rp)
        assert client.get("/logout?" + urlencode({"id_token_hint": tok["id_token"]})).status_code in (200, 302)
        with app.app_context():
            row = db.session.execute(db.select(outbox.OutboxMessage).filter_by(delivered_at=None, failed_at=None)
                                     ).scalar_one()
            if prepare:
                prepare(row)
                db.session.commit()
            assert outbox.deliver_due() == 1
            db.session.refresh(row)
            return row

    def count(outcome):
        return meter.delta("idp_outbox_deliveries_total", kind="backchannel_logout", outcome=outcome)

    listener.fail(1, status=503)
    row = logout_and_deliver()  # the receiver is down: retried later
    assert row.last_error == "HTTP 503" and row.delivered_at is None and row.failed_at is None
    assert (count("retry"), count("delivered"), count("failed")) == (1, 0, 0)
    with app.app_context():
        db.session.execute(db.update(outbox.OutboxMessage).values(next_attempt_at=0))  # due now
        db.session.commit()
        assert outbox.deliver_due() == 1  # the receiver is back
    assert (count("retry"), count("delivered"), count("failed")) == (1, 1, 0)

    listener.status = 500
    row = logout_and_deliver(prepare=lambda r: setattr(r, "attempts", outbox.MAX_ATTEMPTS - 1))  # the last try
    assert row.failed_at is not None and row.last_error == "HTTP 500"
    assert (count("retry"), count("delivered"), count("failed")) == (1, 1, 1)
    assert listener.attempts == 3
