"""Token endpoint hot path: the per-process client cache and race-free refresh rotation."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import sqlalchemy as sa

from app.extensions import db
from tests.support.browser import Customer, callback_params, pkce_pair


@contextmanager
def _statements(engine):
    """The SQL statements this thread sends meanwhile, as (connection, statement): the test client's requests run
    here, while the outbox poller has a thread of its own."""
    me, seen = threading.get_ident(), []

    def record(conn, cursor, statement, *a):
        if threading.get_ident() == me:
            seen.append((conn, statement))
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


@contextmanager
def _sessions_made():
    """The database Sessions this thread creates meanwhile (one per request that touches the database)."""
    registry = db.session.registry
    made, create, me = [], registry.createfunc, threading.get_ident()

    def counting_create(*a, **k):
        if threading.get_ident() == me:
            made.append(1)
        return create(*a, **k)
    registry.createfunc = counting_create
    try:
        yield made
    finally:
        registry.createfunc = create


def _machine_client(app):
    """A client-credentials client (id, secret) and the app's engine."""
    from app.cli import create_client

    with app.app_context():
        c, secret = create_client("Batch", [], grant_types=["client_credentials"], scope="email")
        return c.client_id, secret, db.engine


def _tokens(client, customer, rp):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    cb = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
        scope="openid offline_access", code_challenge=challenge, code_challenge_method="S256")))
    return client.post("/token", data={"grant_type": "authorization_code", "code": cb["code"],
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"])).get_json()


def _with_tokens(app, customer, rp):
    """A test client, tokens of a signed-in customer (the app's client is cached from here on), the app's
    credentials and the engine."""
    client = app.test_client()
    tok = _tokens(client, customer, rp)
    with app.app_context():
        engine = db.engine
    return client, tok, (rp["client_id"], rp["client_secret"]), engine


def test_two_concurrent_refreshes_with_one_token_one_wins_and_the_family_ends(app, customer, rp):
    tok = _tokens(app.test_client(), customer, rp)
    results = []
    start = threading.Barrier(2)

    def refresh():
        c = app.test_client()
        start.wait()
        r = c.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                   auth=(rp["client_id"], rp["client_secret"]))
        results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 400], results
    winner = next(body for s, body in results if s == 200)
    # The loser presented a token that had just been rotated: the whole family is revoked, the winner's too.
    again = app.test_client().post("/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": winner["refresh_token"]},
                                   auth=(rp["client_id"], rp["client_secret"]))
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_a_deleted_client_stops_working_within_the_cache_bound(make_app):
    app = make_app(IDP_CLIENT_CACHE_TTL=1)
    cid, secret, _ = _machine_client(app)
    client = app.test_client()
    assert client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).status_code == 200
    assert app.test_cli_runner().invoke(args=["clients", "delete", cid]).exit_code == 0
    time.sleep(1.2)
    resp = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_client"


def test_a_code_exchange_runs_two_statements_and_no_transaction_and_its_row_is_durable(app, customer, rp):
    """Reading the customer and inserting the token row are the exchange's only statements (the code itself is in
    the short-lived store); with one write there is nothing for a transaction to join, so neither BEGIN nor
    COMMIT costs a round trip."""
    from app.oauth2.models import Token

    client = app.test_client()
    _tokens(client, customer, rp)  # the client is in the cache from here on, as on a busy server
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    code = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
        scope="openid offline_access", code_challenge=challenge, code_challenge_method="S256")))["code"]
    with app.app_context():
        engine = db.engine
    with _statements(engine) as sent:
        resp = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                           auth=(rp["client_id"], rp["client_secret"]))
    # The embedded store's own transaction (the code) is left out: with Redis it is no SQL at all.
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"))
            for conn, statement in sent if "ephemeral_items" not in statement]
    assert resp.status_code == 200, resp.get_json()
    assert seen == [("SELECT", "AUTOCOMMIT"), ("INSERT", "AUTOCOMMIT")], seen
    body = resp.get_json()
    # Durable at once: another connection sees the row, and the access and refresh tokens work.
    with engine.connect() as other:
        assert other.execute(sa.select(sa.func.count()).select_from(Token.__table__).where(
            Token.__table__.c.refresh_hash.is_not(None))).scalar() == 2
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]}).status_code == 200
    again = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                        auth=(rp["client_id"], rp["client_secret"]))
    assert again.status_code == 200, again.get_json()


def test_a_client_credentials_token_touches_no_database_session(app):
    """A client-credentials token has no row and its client is cached: the request neither queries the database
    nor creates a Session just to commit nothing."""
    cid, secret, engine = _machine_client(app)
    client = app.test_client()
    assert client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).status_code == 200
    with _sessions_made() as made, _statements(engine) as sent:
        for _ in range(3):
            r = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
            assert r.status_code == 200 and r.get_json()["token_type"] == "Bearer"
        bad = client.post("/token", data={"grant_type": "client_credentials", "scope": "phone"},
                          auth=(cid, secret))
        assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_scope"
    assert sent == [] and made == [], (sent, len(made))


def test_userinfo_and_introspection_read_without_a_transaction(app, customer, rp):
    """Both only read: each of their statements runs in autocommit, so psycopg sends no BEGIN before them and no
    ROLLBACK when the connection goes back to the pool (two round trips of three, on PostgreSQL)."""
    client, tok, auth, engine = _with_tokens(app, customer, rp)
    with _statements(engine) as sent:
        info = client.get("/userinfo", headers={"Authorization": "Bearer " + tok["access_token"]})
        access = client.post("/introspect", data={"token": tok["access_token"]}, auth=auth)
        refresh = client.post("/introspect", data={"token": tok["refresh_token"], "token_type_hint": "refresh_token"},
                              auth=auth)
    assert info.status_code == 200 and info.get_json()["sub"] == access.get_json()["sub"]
    assert access.get_json()["active"] is True and access.get_json()["token_type"] == "Bearer"
    assert refresh.get_json()["active"] is True and refresh.get_json()["token_type"] == "refresh_token"
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"))
            for conn, statement in sent if "ephemeral_items" not in statement]
    assert len(seen) >= 3 and {mode for _, mode in seen} == {"AUTOCOMMIT"}, seen
    assert {what for what, _ in seen} == {"SELECT"}, seen
    # Each connection got its usual isolation level back in the pool: a write elsewhere is still transactional.
    with engine.connect() as other:
        assert other.get_execution_options().get("isolation_level") is None
        assert other.exec_driver_sql("SELECT 1").scalar() == 1 and other.in_transaction()


def test_introspecting_a_client_credentials_token_takes_no_database_connection(app):
    """A client-credentials token has no row: introspecting it neither queries nor creates a Session."""
    cid, secret, engine = _machine_client(app)
    client = app.test_client()
    token = client.post("/token", data={"grant_type": "client_credentials"}, auth=(cid, secret)).get_json()
    with _sessions_made() as made, _statements(engine) as sent:
        r = client.post("/introspect", data={"token": token["access_token"]}, auth=(cid, secret))
    body = r.get_json()
    assert r.status_code == 200 and body["active"] is True and body["client_id"] == cid, body
    # Only the revocation deny-list is read: from the short-lived store (its own connection when it is embedded).
    sent = [statement for _, statement in sent if "ephemeral_items" not in statement]
    assert sent == [] and made == [], (sent, len(made))


def test_a_refresh_reads_once_then_claims_and_inserts_in_one_statement(app, customer, rp):
    """A refresh reads the token with its customer and their consent, then claims the old token and writes the new
    row. On PostgreSQL the claim and the insert are one data-modifying statement, atomic without a transaction: two
    round trips in all. SQLite has no such statement: there the claim and the insert share a transaction."""
    client, tok, auth, engine = _with_tokens(app, customer, rp)
    with _statements(engine) as sent:
        resp = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                           auth=auth)
    assert resp.status_code == 200, resp.get_json()
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"), statement)
            for conn, statement in sent if "ephemeral_items" not in statement]
    if engine.dialect.name == "postgresql":
        assert [(what, mode) for what, mode, _ in seen] == [("SELECT", "AUTOCOMMIT"), ("WITH", "AUTOCOMMIT")], seen
        assert "UPDATE tokens" in seen[1][2] and "INSERT INTO tokens" in seen[1][2]
    else:
        assert [(what, mode) for what, mode, _ in seen[:3]] == [
            ("SELECT", "AUTOCOMMIT"), ("UPDATE", None), ("INSERT", None)], seen
    new = resp.get_json()
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + new["access_token"]}).status_code == 200
    # The old token was claimed: presented again, it is refused and ends the family, the new token with it.
    again = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                        auth=auth)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    newest = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"]},
                         auth=auth)
    assert newest.status_code == 400 and newest.get_json()["error"] == "invalid_grant"
    gone = client.post("/introspect", data={"token": new["access_token"]}, auth=auth).get_json()
    assert gone == {"active": False}


def test_a_refresh_token_claimed_between_read_and_write_is_refused_and_ends_its_family(app, customer, rp):
    """The race the single statement closes: a request reads a live refresh token, another request rotates it,
    then the first tries to claim it. The first must write nothing and end the family, the other's tokens too."""
    from app.oauth2 import tokens

    client = app.test_client()
    tok = _tokens(client, customer, rp)
    auth = (rp["client_id"], rp["client_secret"])
    real, raced = tokens.refresh_row, []

    def read_then_lose_the_race(value):
        row = real(value)
        if not raced:  # once: the competing request rotates the token after this read
            raced.append(None)

            def compete():  # in a thread of its own, so with its own app context and database session
                raced[0] = app.test_client().post(
                    "/token", data={"grant_type": "refresh_token", "refresh_token": value}, auth=auth)
            other = threading.Thread(target=compete)
            other.start()
            other.join(60)
        return row
    tokens.refresh_row = read_then_lose_the_race
    try:
        late = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                           auth=auth)
    finally:
        tokens.refresh_row = real
    winner = raced[0]
    assert winner.status_code == 200, winner.get_json()
    assert late.status_code == 400 and late.get_json()["error"] == "invalid_grant", late.get_json()
    after = client.post("/token", data={"grant_type": "refresh_token",
                                        "refresh_token": winner.get_json()["refresh_token"]}, auth=auth)
    assert after.status_code == 400 and after.get_json()["error"] == "invalid_grant"
    with app.app_context():
        from app.oauth2.models import Token
        rows = db.session.execute(sa.select(Token.__table__.c.id, Token.__table__.c.revoked_at)).all()
    assert len(rows) == 2 and all(revoked is not None for _, revoked in rows), rows  # nothing written by the loser
