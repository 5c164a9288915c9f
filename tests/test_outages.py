"""A backing service that is down or stalled gets a 503 in bounded time, never a hung thread or a 500."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.browser import pkce_pair


@pytest.fixture
def stalled_redis():
    """A TCP server that accepts connections and never answers (a Redis that hangs); yields its redis:// URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    t.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_redis_fails_requests_with_503_within_the_timeout(make_app, rp, stalled_redis):
    app = make_app(REDIS_URL=stalled_redis, IDP_REDIS_TIMEOUT=0.3)
    client = app.test_client()
    _, challenge = pkce_pair()
    started = time.monotonic()
    page = client.get("/authorize", query_string={
        "client_id": rp["client_id"], "redirect_uri": rp["redirect_uri"], "response_type": "code",
        "scope": "openid", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"})
    token = client.post("/token", data={"grant_type": "authorization_code", "code": "x" * 43,
                                        "redirect_uri": rp["redirect_uri"], "code_verifier": "v" * 43},
                        auth=(rp["client_id"], rp["client_secret"]))
    # Without a socket timeout each request would wait for the server forever (it never answers).
    assert time.monotonic() - started < 20
    assert page.status_code == 503 and page.headers["Retry-After"] == "5"
    assert "Traceback" not in page.get_data(as_text=True)
    assert token.status_code == 503 and token.get_json()["error"] == "temporarily_unavailable"
    assert token.headers["Cache-Control"] == "no-store"


def test_an_unreachable_redis_fails_requests_with_503(make_app, rp):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again below: nothing listens there
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    resp = app.test_client().post("/token", data={"grant_type": "authorization_code", "code": "x" * 43,
                                                  "redirect_uri": rp["redirect_uri"], "code_verifier": "v" * 43},
                                  auth=(rp["client_id"], rp["client_secret"]))
    assert resp.status_code == 503 and resp.get_json()["error"] == "temporarily_unavailable"


def _raised(engine, sql: str, **params):
    import sqlalchemy as sa

    with pytest.raises(sa.exc.DBAPIError) as caught, engine.connect() as conn:
        conn.execute(sa.text(sql), params)
    return caught.value


def test_only_transient_database_errors_count_as_an_outage(tmp_path):
    """A 503 with Retry-After where a retry may succeed; a 500 with the traceback logged for everything else."""
    import sqlalchemy as sa

    from app.errors import is_outage
    from tests.support import services

    lite = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}", connect_args={"timeout": 0})
    with lite.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (locked_until INTEGER)"))
    assert not is_outage(_raised(lite, "SELECT no_such_column FROM t"))  # a schema error, even with "locked" near
    assert not is_outage(_raised(lite, "SELECT locked FROM t"))
    holder = lite.connect()
    holder.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        assert is_outage(_raised(lite, "INSERT INTO t VALUES (1)"))  # database is locked (SQLITE_BUSY)
    finally:
        holder.rollback()
        holder.close()
    lite.dispose()

    pg = sa.create_engine(services.create_postgres_database())
    try:
        assert is_outage(_raised(pg, "SET statement_timeout = 1; SELECT pg_sleep(1)"))       # 57014
        assert not is_outage(_raised(pg, "SELECT 1 / 0"))                                   # 22012
        assert not is_outage(_raised(pg, "SELECT no_such_column FROM pg_class"))            # 42703
    finally:
        url = pg.url.render_as_string(hide_password=False)
        pg.dispose()
        services.drop_postgres_database(url)
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    dead = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    assert is_outage(_raised(dead, "SELECT 1"))                                             # refused


def test_redis_errors_that_are_configuration_are_not_an_outage():
    import redis.exceptions as rx

    from app.errors import is_outage

    assert is_outage(rx.ConnectionError("Connection refused")) and is_outage(rx.TimeoutError("Timeout"))
    assert is_outage(rx.ReadOnlyError("You can't write against a read only replica."))
    assert not is_outage(rx.AuthenticationError("invalid username-password pair"))
    assert not is_outage(rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
