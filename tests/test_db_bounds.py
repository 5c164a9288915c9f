"""PostgreSQL statement and lock bounds (IDP_DB_STATEMENT_TIMEOUT, IDP_DB_LOCK_TIMEOUT): a stuck query or a held
lock fails the request with a 503 within the bound instead of holding its thread; migrations run without them."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from app.errors import is_outage
from app.extensions import db
from tests.support import services
from tests.test_hot_path import _refresh, _with_tokens

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def app(make_app):
    return make_app(IDP_DB_STATEMENT_TIMEOUT=2.5, IDP_DB_LOCK_TIMEOUT=0.3)


def _shown(app) -> tuple[str, str]:
    with app.app_context():
        return (db.session.execute(sa.text("SHOW statement_timeout")).scalar_one(),
                db.session.execute(sa.text("SHOW lock_timeout")).scalar_one())


@on_postgresql
def test_every_connection_carries_the_configured_bounds(app, make_app):
    assert _shown(app) == ("2500ms", "300ms")
    # Committed when the connection was opened: a rolled-back request does not undo them, and every pooled
    # connection has them (two checked out at once).
    with app.app_context():
        db.session.execute(sa.text("SELECT 1"))
        db.session.rollback()
        with db.engine.connect() as a, db.engine.connect() as b:
            assert [c.exec_driver_sql("SHOW lock_timeout").scalar_one() for c in (a, b)] == ["300ms", "300ms"]
    assert _shown(app) == ("2500ms", "300ms")
    assert _shown(make_app()) == ("15s", "5s")  # the defaults


@on_postgresql
def test_zero_leaves_the_servers_own_setting(make_app):
    with make_app().app_context():
        server = db.session.execute(sa.text("SELECT reset_val FROM pg_settings WHERE name = 'statement_timeout'"))
        server_default = server.scalar_one()
    app = make_app(IDP_DB_STATEMENT_TIMEOUT=0, IDP_DB_LOCK_TIMEOUT=0)
    with app.app_context():
        values = db.session.execute(sa.text(
            "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout')")).all()
    assert dict(values) == {"statement_timeout": server_default, "lock_timeout": "0"}


@on_postgresql
def test_a_runaway_statement_is_cancelled_and_counts_as_an_outage(app):
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as raised:
            db.session.execute(sa.text("SELECT pg_sleep(10)"))
        db.session.rollback()
        assert time.monotonic() - started < 8
    assert raised.value.orig.sqlstate == "57014" and is_outage(raised.value)


@on_postgresql
def test_a_refresh_behind_a_held_lock_fails_fast_with_503_and_the_token_still_works(app, customer, rp):
    client, tok, auth, engine = _with_tokens(app, customer, rp)
    with engine.connect() as holder:
        # Another transaction holds the token's row (a stuck request, a long admin statement). Without the lock
        # bound the refresh would wait for it for ever, in this very thread: the server ends the holder's session
        # after 5 s, and the refresh then succeeds, which fails the test rather than hanging it.
        holder.exec_driver_sql("SET idle_in_transaction_session_timeout = 5000")
        held = holder.execute(sa.text("SELECT id FROM tokens WHERE refresh_hash IS NOT NULL FOR UPDATE")).all()
        assert len(held) == 1
        started = time.monotonic()
        blocked = _refresh(client, auth, tok["refresh_token"])
        waited = time.monotonic() - started
        try:
            holder.rollback()
        except sa.exc.DBAPIError:
            holder.invalidate()  # ended by the server (the bound was missing)
    assert blocked.status_code == 503, blocked.get_json()
    assert blocked.get_json()["error"] == "temporarily_unavailable" and blocked.headers["Retry-After"] == "5"
    assert waited < 2.5  # the lock bound (0.3 s), not the statement bound or forever
    # The claim never happened: once the lock is gone the same refresh token works, and only once.
    again = _refresh(client, auth, tok["refresh_token"])
    assert again.status_code == 200, again.get_json()
    assert _refresh(client, auth, tok["refresh_token"]).status_code == 400


def test_migrations_run_without_the_apps_bounds(keys_dir):
    import flask_migrate

    from app import create_app

    url = services.create_postgres_database()
    try:
        # 1 ms: every CREATE TABLE and CREATE INDEX of the schema would be cancelled under the app's bound.
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True,
                          "IDP_DB_STATEMENT_TIMEOUT": 0.001, "IDP_DB_LOCK_TIMEOUT": 0.001})
        with app.app_context():
            flask_migrate.upgrade()
            assert "tokens" in sa.inspect(db.engine).get_table_names()
            assert db.session.execute(sa.text("SHOW statement_timeout")).scalar_one() == "1ms"  # the app's again
            db.session.rollback()
            db.engine.dispose()
    finally:
        services.drop_postgres_database(url)
