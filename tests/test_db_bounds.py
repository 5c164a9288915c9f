"""PostgreSQL statement and lock bounds (IDP_DB_STATEMENT_TIMEOUT, IDP_DB_LOCK_TIMEOUT): a stuck query or a held
lock fails the request with a 503 within the bound instead of holding its thread; migrations run without them."""

from __future__ import annotations

import secrets
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


def test_zero_leaves_the_database_roles_own_setting(keys_dir):
    """0 sends nothing: bounds set on the database (or role), as behind PgBouncer, apply as they are."""
    from app import create_app

    url = services.create_postgres_database()
    admin = sa.create_engine(services.postgres_admin_url(), isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(url).database
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET statement_timeout = \'7s\'')
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET lock_timeout = \'3s\'')
        found = {}
        for label, bounds in (("off", {"IDP_DB_STATEMENT_TIMEOUT": 0, "IDP_DB_LOCK_TIMEOUT": 0}),
                              ("lock only", {"IDP_DB_STATEMENT_TIMEOUT": 0, "IDP_DB_LOCK_TIMEOUT": 0.25}),
                              ("defaults", {})):
            app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True, **bounds})
            found[label] = _shown(app)
            with app.app_context():
                db.engine.dispose()
        assert found == {"off": ("7s", "3s"), "lock only": ("7s", "250ms"), "defaults": ("15s", "5s")}
    finally:
        admin.dispose()
        services.drop_postgres_database(url)


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
    """Every statement of the migrations runs with no statement or lock bound, and the connection that ran them
    (its session unbounded) is closed rather than handed back to the app's pool."""
    import flask_migrate

    from app import create_app

    url = services.create_postgres_database()
    seen = []

    def settings_at_create(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("CREATE"):
            seen.append(cursor.connection.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").fetchone())
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True,
                          "IDP_DB_STATEMENT_TIMEOUT": 2.5, "IDP_DB_LOCK_TIMEOUT": 0.3})
        with app.app_context():
            sa.event.listen(db.engine, "after_cursor_execute", settings_at_create)
            flask_migrate.upgrade()
            sa.event.remove(db.engine, "after_cursor_execute", settings_at_create)
            assert len(seen) > 10 and set(seen) == {("0", "0")}, seen
            # Every connection the app gets afterwards has its bounds again (the pool holds one connection here).
            for _ in range(3):
                with db.engine.connect() as conn:
                    assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "2500ms"
                    assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "300ms"
            db.engine.dispose()
    finally:
        services.drop_postgres_database(url)


@on_postgresql
def test_a_worker_starts_while_the_key_ring_is_locked_and_loads_it_at_first_use(make_app):
    """With the key ring in the database, a worker that starts while another transaction holds the ring (a
    rotation, a migration) past the lock bound still starts: a worker that failed to start would stop gunicorn.
    Until the lock is gone it is not ready and its JWKS answers 503; then it loads the ring."""
    keys = {"IDP_KEYS_STORE": "database", "IDP_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32)}
    first = make_app(**keys)  # creates the ring
    published = first.test_client().get("/jwks.json").get_json()["keys"]
    with first.app_context():
        engine = db.engine
    with engine.connect() as holder:
        holder.exec_driver_sql("SET idle_in_transaction_session_timeout = 10000")  # a safety net, as above
        holder.exec_driver_sql("SELECT * FROM signing_key_ring FOR UPDATE").all()
        started = time.monotonic()
        app = make_app(IDP_DB_LOCK_TIMEOUT=0.3, **keys)
        assert time.monotonic() - started < 5
        client = app.test_client()
        assert client.get("/jwks.json").status_code == 503
        assert client.get("/readyz").status_code == 503
        holder.rollback()
    assert client.get("/jwks.json").get_json()["keys"] == published
    assert client.get("/readyz").status_code == 200
