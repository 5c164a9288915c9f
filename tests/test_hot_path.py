"""Token endpoint hot path: the per-process client cache and race-free refresh rotation."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from urllib.parse import urlencode

import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet

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


def _code(client, customer, rp):
    """A fresh code for ``openid offline_access`` and its PKCE verifier (the customer consents if asked)."""
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    code = callback_params(who.follow(who.authorize(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
        scope="openid offline_access", code_challenge=challenge, code_challenge_method="S256")))["code"]
    return code, verifier


def _redeem(client, rp, code, verifier):
    return client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                       auth=(rp["client_id"], rp["client_secret"]))


def _tokens(client, customer, rp):
    return _redeem(client, rp, *_code(client, customer, rp)).get_json()


def _with_tokens(app, customer, rp):
    """A test client, tokens of a signed-in customer (the app's client is cached from here on), the app's
    credentials and the engine."""
    client = app.test_client()
    tok = _tokens(client, customer, rp)
    with app.app_context():
        engine = db.engine
    return client, tok, (rp["client_id"], rp["client_secret"]), engine


def _refresh(client, auth, value):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": value}, auth=auth)


def _active(client, auth, token) -> bool:
    return client.post("/introspect", data={"token": token}, auth=auth).get_json()["active"]


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


def test_a_return_address_removed_or_a_first_party_app_demoted_applies_to_the_next_authorization(app, customer, rp):
    """The token endpoint may use a cached copy of the app for IDP_CLIENT_CACHE_TTL; the authorization step reads it
    fresh, so a removed return address is refused, and a demoted first-party app asks for consent, at once."""
    from app.oauth2.models import Client

    def change(**values):
        with app.app_context():
            row = db.session.execute(db.select(Client).filter_by(client_id=rp["client_id"])).scalar_one()
            for name, value in values.items():
                setattr(row, name, value)
            db.session.commit()
            return row.meta

    meta = change(trusted=True)
    client = app.test_client()
    _tokens(client, customer, rp)  # signed in, the first-party app in this process's cache
    change(trusted=False, meta={**meta, "redirect_uris": ["https://shop.example/cb2?bar=foo"]})
    _, challenge = pkce_pair()
    params = dict(response_type="code", client_id=rp["client_id"], scope="openid email",
                  code_challenge=challenge, code_challenge_method="S256")
    refused = client.get("/authorize?" + urlencode(dict(params, redirect_uri=rp["redirect_uri"])))
    assert refused.status_code == 400 and "Location" not in refused.headers
    asked = client.get("/authorize?" + urlencode(dict(params, redirect_uri="https://shop.example/cb2?bar=foo")))
    assert asked.status_code == 303 and "/consent?interaction=" in asked.headers["Location"]


def test_a_code_exchange_writes_its_row_while_reading_the_customer_without_a_transaction(app, customer, rp):
    """Reading the customer and inserting the token row are the exchange's only SQL (the code itself is in the
    short-lived store): one data-modifying statement on PostgreSQL, an INSERT then a SELECT on SQLite. With one
    write there is nothing for a transaction to join, so neither BEGIN nor COMMIT costs a round trip."""
    from app.oauth2.models import Token

    client = app.test_client()
    _tokens(client, customer, rp)  # the client is in the cache from here on, as on a busy server
    code, verifier = _code(client, customer, rp)
    with app.app_context():
        engine = db.engine
    with _statements(engine) as sent:
        resp = _redeem(client, rp, code, verifier)
    # The embedded store's own transaction (the code) is left out: with Redis it is no SQL at all.
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"), statement)
            for conn, statement in sent if "ephemeral_items" not in statement]
    assert resp.status_code == 200, resp.get_json()
    if engine.dialect.name == "postgresql":
        assert [(what, mode) for what, mode, _ in seen] == [("WITH", "AUTOCOMMIT")], seen
        assert "INSERT INTO tokens" in seen[0][2] and "FROM users" in seen[0][2]
    else:
        assert [(what, mode) for what, mode, _ in seen] == [("INSERT", "AUTOCOMMIT"), ("SELECT", "AUTOCOMMIT")], seen
    body = resp.get_json()
    # Durable at once: another connection sees the row, and the access and refresh tokens work.
    with engine.connect() as other:
        assert other.execute(sa.select(sa.func.count()).select_from(Token.__table__).where(
            Token.__table__.c.refresh_hash.is_not(None))).scalar() == 2
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + body["access_token"]}).status_code == 200
    again = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
                        auth=(rp["client_id"], rp["client_secret"]))
    assert again.status_code == 200, again.get_json()


def test_a_code_redeemed_after_its_consent_was_withdrawn_is_refused_and_leaves_no_live_token(app, customer, rp):
    """The exchange writes its row in the statement that reads the consent: if the consent is gone, the row just
    written is revoked and the app gets invalid_grant."""
    from app.accounts.models import User
    from app.consent import service
    from app.oauth2.models import Token

    client = app.test_client()
    _tokens(client, customer, rp)  # the client is cached: the exchange runs without a transaction, as when busy
    code, verifier = _code(client, customer, rp)
    with app.app_context():
        service.withdraw(db.session.get(User, customer["id"]), rp["client_id"])
        engine = db.engine
    resp = _redeem(client, rp, code, verifier)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant", resp.get_json()
    table = Token.__table__
    with engine.connect() as conn:
        live = conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.revoked_at.is_(None))).scalar()
    assert live == 0


def test_a_code_redeemed_after_its_customer_was_erased_is_refused_and_writes_nothing(app, customer, rp):
    from app.accounts import erasure
    from app.accounts.models import User
    from app.oauth2.models import Token

    client = app.test_client()
    _tokens(client, customer, rp)  # the client is cached: the exchange runs without a transaction, as when busy
    code, verifier = _code(client, customer, rp)
    with app.app_context():
        erasure.erase(db.session.get(User, customer["id"]), "admin")
        engine = db.engine
    resp = _redeem(client, rp, code, verifier)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant", resp.get_json()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Token.__table__)).scalar() == 0

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


def test_a_password_sign_in_reads_the_customer_and_writes_the_session_without_a_transaction(app, customer, rp):
    """A sign-in reads the customer once and inserts the session row, each in autocommit: no BEGIN, COMMIT or
    ROLLBACK around them, and no second read of the customer or the session after the commit (the redirect
    needs the customer's sub and the session's auth_time, which the request has just written)."""
    from app.accounts.models import LoginSession

    client = app.test_client()
    who = Customer(client, customer["email"], customer["password"])
    page, verifier = who.start(rp, login=False)
    assert b'action="/login' in page.data
    with app.app_context():
        engine = db.engine
    with _statements(engine) as sent:
        signed_in = who.submit_login(page)
    assert signed_in.status_code == 303 and "idp_session=" in signed_in.headers.get("Set-Cookie", "")
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"), statement)
            for conn, statement in sent if "ephemeral_items" not in statement]
    assert [(what, mode) for what, mode, _ in seen] == [("SELECT", "AUTOCOMMIT"), ("INSERT", "AUTOCOMMIT")], seen
    assert "FROM users" in seen[0][2] and "INTO login_sessions" in seen[1][2]
    # Durable at once, and the journey goes on with it: the ID token's auth_time is the session's.
    with engine.connect() as other:
        auth_time = other.execute(sa.select(LoginSession.__table__.c.auth_time).where(
            LoginSession.__table__.c.user_id == customer["id"])).scalar_one()
    code = callback_params(who.follow(signed_in))["code"]
    tokens = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                         "redirect_uri": rp["redirect_uri"], "code_verifier": verifier},
                         auth=(rp["client_id"], rp["client_secret"])).get_json()
    keys = KeySet.import_key_set(client.get("/jwks.json").get_json())
    claims = jwt.decode(tokens["id_token"], keys).claims
    assert claims["sub"] == customer["sub"] and claims["auth_time"] == auth_time


def test_a_signed_in_customer_s_authorization_reads_app_session_and_consent_without_a_transaction(app, customer, rp):
    """Single sign-on for an app the customer already allowed: three reads (the app, fresh; the session; the
    consent), each in autocommit, so no BEGIN before them and no ROLLBACK after. Nothing else: the code goes to
    the short-lived store."""
    client = app.test_client()
    _tokens(client, customer, rp)  # signed in, consent given
    verifier, challenge = pkce_pair()
    with app.app_context():
        engine = db.engine
    with _statements(engine) as sent:
        resp = client.get("/authorize?" + urlencode(dict(
            response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
            scope="openid offline_access", code_challenge=challenge, code_challenge_method="S256")))
    code = callback_params(resp)["code"]
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"), statement)
            for conn, statement in sent if "ephemeral_items" not in statement]
    assert [(what, mode) for what, mode, _ in seen] == [("SELECT", "AUTOCOMMIT")] * 3, seen
    assert [next(t for t in ("FROM clients", "FROM login_sessions", "FROM consent_grants") if t in statement)
            for _, _, statement in seen] == ["FROM clients", "FROM login_sessions", "FROM consent_grants"]
    assert _redeem(client, rp, code, verifier).status_code == 200


def test_a_first_party_app_s_consent_record_is_written_in_one_transaction(app, customer):
    """A first-party app skips the consent page, but its use is recorded: the ledger entry and the grants are
    written together in a transaction, after the authorization's reads in autocommit."""
    from app.cli import create_client
    from app.consent.models import ConsentEvent, ConsentGrant

    with app.app_context():
        own, secret = create_client("Own App", ["https://own.example/cb"], trusted=True)
        own_id, engine = own.client_id, db.engine
    own = {"client_id": own_id, "client_secret": secret, "redirect_uri": "https://own.example/cb"}
    client = app.test_client()
    who = Customer(client, customer["email"], customer["password"])
    page, verifier = who.start(own, "openid email", login=False)
    with _statements(engine) as sent:
        done = who.follow(who.submit_login(page), consent=None)  # no consent page for a first-party app
    code = callback_params(done)["code"]
    writes = [(conn.get_execution_options().get("isolation_level"), statement.split()[2])
              for conn, statement in sent if statement.split()[0].upper() == "INSERT"
              and "ephemeral_items" not in statement]
    assert (None, "consent_events") in writes and (None, "consent_grants") in writes, writes
    with engine.connect() as other:
        grants = other.execute(sa.select(ConsentGrant.__table__.c.item).where(
            ConsentGrant.__table__.c.client_id == own_id)).scalars().all()
        channels = other.execute(sa.select(ConsentEvent.__table__.c.channel).where(
            ConsentEvent.__table__.c.client_id == own_id)).scalars().all()
    assert grants == ["email"] and channels == ["first_party"]
    assert _redeem(client, own, code, verifier).status_code == 200


def test_a_page_of_a_pending_sign_in_reads_its_interaction_once(app, rp, monkeypatch):
    """The sign-in page, its language and its form all need the pending request: one read of the short-lived
    store per request, not one per caller."""
    from app.store import store

    client = app.test_client()
    _, challenge = pkce_pair()
    parked = client.get("/authorize?" + urlencode(dict(
        response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"], scope="openid",
        code_challenge=challenge, code_challenge_method="S256", ui_locales="tr")))
    assert parked.status_code == 303 and "/login?interaction=" in parked.headers["Location"]
    with app.app_context():
        kind = type(store())
    reads = []
    real_get = kind.get
    monkeypatch.setattr(kind, "get", lambda self, key: reads.append(key) or real_get(self, key))
    page = client.get(parked.headers["Location"])
    assert page.status_code == 200 and '<html lang="tr">' in page.get_data(as_text=True)  # the interaction's ui_locales
    assert len([key for key in reads if "interaction:" in key]) == 1, reads


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
        resp = _refresh(client, auth, tok["refresh_token"])
    assert resp.status_code == 200, resp.get_json()
    seen = [(statement.split()[0].upper(), conn.get_execution_options().get("isolation_level"), statement)
            for conn, statement in sent if "ephemeral_items" not in statement]
    if engine.dialect.name == "postgresql":
        assert [(what, mode) for what, mode, _ in seen] == [("SELECT", "AUTOCOMMIT"), ("WITH", "AUTOCOMMIT")], seen
        assert "UPDATE tokens" in seen[1][2] and "INSERT INTO tokens" in seen[1][2]
    else:
        assert [(what, mode) for what, mode, _ in seen] == [
            ("SELECT", "AUTOCOMMIT"), ("UPDATE", None), ("INSERT", None)], seen
    new = resp.get_json()
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + new["access_token"]}).status_code == 200
    # The old token was claimed: presented again, it is refused and ends the family, the new token with it.
    again = _refresh(client, auth, tok["refresh_token"])
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    newest = _refresh(client, auth, new["refresh_token"])
    assert newest.status_code == 400 and newest.get_json()["error"] == "invalid_grant"
    gone = client.post("/introspect", data={"token": new["access_token"]}, auth=auth).get_json()
    assert gone == {"active": False}


def test_a_refresh_token_claimed_between_read_and_write_is_refused_and_ends_its_family(app, customer, rp,
                                                                                      monkeypatch):
    """The race the single statement closes: a request reads a live refresh token, another request rotates it,
    then the first tries to claim it. The first must write nothing and end the family, the other's tokens too."""
    client, tok, auth, engine = _with_tokens(app, customer, rp)
    raced = []

    def compete(value):
        raced.append(app.test_client().post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": value}, auth=auth))
    _while_refreshing(monkeypatch, compete)
    late = _refresh(client, auth, tok["refresh_token"])
    winner = raced[0]
    assert winner.status_code == 200, winner.get_json()
    assert late.status_code == 400 and late.get_json()["error"] == "invalid_grant", late.get_json()
    after = _refresh(client, auth, winner.get_json()["refresh_token"])
    assert after.status_code == 400 and after.get_json()["error"] == "invalid_grant"
    with app.app_context():
        from app.oauth2.models import Token
        rows = db.session.execute(sa.select(Token.__table__.c.id, Token.__table__.c.revoked_at)).all()
    assert len(rows) == 2 and all(revoked is not None for _, revoked in rows), rows  # nothing written by the loser


def _while_refreshing(monkeypatch, act):
    """Make ``act(value)`` run in a thread of its own (its own app context and session) right after the refresh
    token is read and before it is claimed, once."""
    from app.oauth2 import tokens

    real, done = tokens.refresh_row, []

    def read_then_act(value):
        row = real(value)
        if not done:
            done.append(1)
            other = threading.Thread(target=act, args=(value,))
            other.start()
            other.join(60)
        return row
    monkeypatch.setattr(tokens, "refresh_row", read_then_act)


def test_a_refresh_that_fails_before_writing_leaves_its_token_live(app, customer, rp, monkeypatch):
    """The claim and the new row are written last, after the ID token: a request that fails before (here the ID
    token cannot be signed) writes nothing, so the app's retry with the same refresh token succeeds."""
    from app.oauth2 import tokens

    client, tok, auth, engine = _with_tokens(app, customer, rp)
    real = tokens.id_token

    def cannot_sign(**kw):
        raise RuntimeError("the signing key is unavailable")
    monkeypatch.setattr(tokens, "id_token", cannot_sign)
    try:
        failed = _refresh(client, auth, tok["refresh_token"]).status_code
    except RuntimeError:
        failed = 500  # the test app propagates exceptions
    assert failed == 500
    monkeypatch.setattr(tokens, "id_token", real)
    retry = _refresh(client, auth, tok["refresh_token"])
    assert retry.status_code == 200, retry.get_json()
    assert _active(client, auth, tok["access_token"]) is True


def test_a_refresh_token_that_expires_between_read_and_claim_is_still_rotated(app, customer, rp, monkeypatch):
    """Expiry is judged once, when the token is read: a token that was live then is claimed, not mistaken for a
    reused one (which would end the family)."""
    from app.oauth2.models import Token

    client, tok, auth, engine = _with_tokens(app, customer, rp)
    table = Token.__table__
    with engine.begin() as conn:  # the refresh token expires one second from now
        conn.execute(table.update().where(table.c.refresh_hash.is_not(None))
                     .values(refresh_expires_at=int(time.time()) + 1))
    from app.oauth2 import tokens

    real_mint = tokens.mint

    def slow_mint(**kw):  # the token expires after it was checked live and before it is claimed
        time.sleep(2.1)
        return real_mint(**kw)
    monkeypatch.setattr(tokens, "mint", slow_mint)
    resp = _refresh(client, auth, tok["refresh_token"])
    assert resp.status_code == 200, resp.get_json()
    assert _active(client, auth, tok["access_token"]) is True


def test_a_refresh_token_deleted_between_read_and_claim_gets_invalid_grant(app, customer, rp, monkeypatch):
    """Erasure or a deleted app can remove the token's rows while a refresh is under way: the refresh is refused
    with invalid_grant (never a 500) and writes nothing."""
    from app.oauth2.models import Token

    client, tok, auth, engine = _with_tokens(app, customer, rp)
    table = Token.__table__

    def delete_rows(value):
        with engine.begin() as conn:
            conn.execute(table.delete())
    _while_refreshing(monkeypatch, delete_rows)
    resp = _refresh(client, auth, tok["refresh_token"])
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant", resp.get_json()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def test_a_family_revocation_that_waits_on_a_rotation_also_ends_the_token_rotated_in(app, customer, rp):
    """Sign-out, withdrawal or reuse ending a family while a rotation of it is committing: the revocation waits for
    the claimed row, and must then also revoke the successor that the rotation inserted, which was not there when
    its UPDATE started (READ COMMITTED on PostgreSQL). On SQLite, writers queue, so the revocation sees it anyway."""
    from app.crypto import keyed_hash, random_token
    from app.oauth2 import tokens
    from app.oauth2.models import Token

    client, tok, auth, engine = _with_tokens(app, customer, rp)
    table = Token.__table__
    with engine.connect() as conn:
        old = conn.execute(sa.select(table).where(table.c.refresh_hash.is_not(None))).mappings().one()
    successor = random_token(32)
    with app.app_context():
        successor_hash = keyed_hash(successor, "refresh")
    now = int(time.time())
    row = {**old, "id": random_token(18), "refresh_hash": successor_hash, "issued_at": now, "rotated_at": None}

    rotation = engine.connect()
    pending = rotation.begin()  # the rotation's statement has run, its commit has not yet happened
    if engine.dialect.name == "postgresql":
        claimed = rotation.execute(tokens._rotation(tuple(row)),
                                   {"b_old": old["id"], "b_now": now, **tokens._bound(row)})
        assert claimed.first() is not None
    else:
        assert rotation.execute(tokens._CLAIM, {"b_old": old["id"], "b_now": now}).rowcount == 1
        rotation.execute(tokens._INSERT, row)

    revoked = []

    def revoke():
        with app.app_context():
            revoked.append(tokens.revoke_family(old["family_id"]))
    revoker = threading.Thread(target=revoke)
    try:
        revoker.start()
        _wait_until_blocked(engine, "UPDATE tokens")  # on the claimed row
        assert revoker.is_alive()
        pending.commit()
    finally:
        if pending.is_active:
            pending.rollback()
        rotation.close()
        revoker.join(30)

    assert revoked == [2]  # the claimed row, then its successor
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.revoked_at)
                            .where(table.c.family_id == old["family_id"])).all()
    assert len(rows) == 2 and all(at is not None for _, at in rows), rows
    late = _refresh(client, auth, successor)
    assert late.status_code == 400 and late.get_json()["error"] == "invalid_grant"


def _wait_until_blocked(engine, statement: str) -> None:
    """Wait until a statement starting with ``statement`` waits on a lock (PostgreSQL), or half a second (SQLite,
    where a writer waits on the database's write lock and nothing shows it)."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.5)
        return
    with engine.connect() as watch:
        for _ in range(250):
            waiting = watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE :q"), {"q": statement + "%"}).scalar()
            watch.rollback()  # a transaction sees one snapshot of pg_stat_activity: look again in a new one
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError(f"{statement!r} never waited on a lock")


def _redeem_during(app, customer, rp, begin, end=None):
    """Redeem a fresh code while another transaction has run ``begin(conn)`` and not committed; once the exchange
    waits for it, run ``end(conn)`` and commit. Returns the exchange's response and the engine."""
    client = app.test_client()
    _tokens(client, customer, rp)  # the client is cached: the exchange runs without a transaction, as when busy
    code, verifier = _code(client, customer, rp)
    with app.app_context():
        engine = db.engine
    other = engine.connect()
    pending = other.begin()
    begin(other)
    answers = []
    exchange = threading.Thread(target=lambda: answers.append(_redeem(app.test_client(), rp, code, verifier)))
    try:
        exchange.start()
        _wait_until_blocked(engine, "WITH" if engine.dialect.name == "postgresql" else "")
        assert exchange.is_alive(), answers and answers[0].get_json()
        if end is not None:
            end(other)
        pending.commit()
    finally:
        if pending.is_active:
            pending.rollback()
        other.close()
        exchange.join(30)
    assert answers, "the exchange failed with an exception"
    return answers[0], engine


def test_a_code_exchange_during_a_withdrawal_waits_for_it_and_leaves_no_live_token(app, customer, rp):
    """A withdrawal has deleted the app's consent rows and not yet committed when the code is redeemed. The
    exchange must not write a token on the strength of the consent it saw before: it waits for the withdrawal,
    then finds the consent gone and revokes its row (answering invalid_grant); it never leaves a live token that the
    withdrawal's revocation ran too early to see. (On SQLite the embedded short-lived store already makes the
    exchange wait, for the code.)"""
    from app.consent.models import ConsentGrant
    from app.oauth2.models import Token

    grants, table = ConsentGrant.__table__, Token.__table__
    mine = (table.c.user_id == customer["id"], table.c.client_id == rp["client_id"])
    resp, engine = _redeem_during(  # what consent.service.withdraw does, in order: delete the grant, revoke, commit
        app, customer, rp,
        lambda conn: conn.execute(grants.delete().where(grants.c.user_id == customer["id"],
                                                        grants.c.client_id == rp["client_id"])),
        lambda conn: conn.execute(table.update().where(*mine, table.c.revoked_at.is_(None))
                                  .values(revoked_at=int(time.time()))))
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant", resp.get_json()
    with engine.connect() as conn:
        live = conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.revoked_at.is_(None))).scalar()
    assert live == 0


def test_a_code_exchange_during_an_erasure_gets_invalid_grant_and_writes_nothing(app, customer, rp):
    """The customer is being erased when their code is redeemed: the exchange saw them, but the token row's
    reference fails once the erasure commits. The answer is invalid_grant, never a 500, and no row remains."""
    from app.accounts.models import User
    from app.oauth2.models import Token

    users = User.__table__
    resp, engine = _redeem_during(app, customer, rp,
                                  lambda conn: conn.execute(users.delete().where(users.c.id == customer["id"])))
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_grant", resp.get_json()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Token.__table__)).scalar() == 0
