"""Behind PgBouncer in transaction mode (docs/production.md, sizing): every journey works with
IDP_DB_PREPARED_STATEMENTS=false, on a real PgBouncer in front of the real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import sqlalchemy as sa

from tests.support import services
from tests.support.server import free_port
from tests.test_conformance_rules import introspect, tokens_for, userinfo

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def bouncer(postgresql_url):
    """A PgBouncer in transaction mode with one server connection for the test database; yields (URL, log)."""
    binary = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.path.exists(p)), None)
    if binary is None:
        services.missing("pgbouncer is not installed (Debian package pgbouncer)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
    major_minor = tuple(int(x) for x in version[1].split(".")[:2])  # "PgBouncer 1.18.0"
    url = sa.engine.make_url(postgresql_url)
    port = free_port()
    folder = tempfile.mkdtemp(prefix="idp-pgbouncer-")
    os.chmod(folder, 0o755)  # it drops root for nobody, who must read the file
    ini = os.path.join(folder, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(f"""[databases]
{url.database} = host={url.host or '127.0.0.1'} port={url.port or 5432} user={url.username} dbname={url.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
; One server connection: every client's transactions take turns on it, so anything a client leaves on a
; server connection (a prepared statement, a session setting) meets the other clients.
default_pool_size = 1
max_client_conn = 100
""")
        if major_minor >= (1, 21):
            # Since 1.21 PgBouncer can track prepared statements itself (on by default since 1.24); off here, it is
            # the PgBouncer that IDP_DB_PREPARED_STATEMENTS=false is for.
            f.write("max_prepared_statements = 0\n")
    os.chmod(ini, 0o644)
    log = open(os.path.join(folder, "pgbouncer.log"), "w+")
    cmd = [binary, ini] + (["-u", "nobody"] if os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"pgbouncer did not start: {log.read()}")
            time.sleep(0.05)
    try:
        yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), log
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _two_connections_take_turns(app) -> None:
    """Two pooled connections of ``app`` run the same statement often enough for psycopg to prepare it."""
    from app.extensions import db

    with app.app_context():
        with db.engine.connect() as a, db.engine.connect() as b:
            for _ in range(8):
                for conn in (a, b):
                    assert conn.execute(sa.text("SELECT count(*) FROM users WHERE id > :n"), {"n": 0}).scalar() >= 0
                    conn.commit()


def test_prepared_statements_off_is_what_transaction_pooling_needs(make_app, bouncer, customer):
    url, _ = bouncer
    # The default prepares statements per client connection: through one shared server connection, the second
    # client's PREPARE meets the first client's statement of the same name.
    with pytest.raises(sa.exc.DBAPIError, match="prepared statement"):
        _two_connections_take_turns(make_app(SQLALCHEMY_DATABASE_URI=url))
    _two_connections_take_turns(make_app(SQLALCHEMY_DATABASE_URI=url, IDP_DB_PREPARED_STATEMENTS=False))


def test_every_token_journey_works_behind_pgbouncer(make_app, bouncer, customer, rp):
    url, log = bouncer
    app = make_app(SQLALCHEMY_DATABASE_URI=url, IDP_DB_PREPARED_STATEMENTS=False)
    client = app.test_client()
    auth = (rp["client_id"], rp["client_secret"])
    for _ in range(6):  # past psycopg's threshold (5): each statement would have been prepared by now
        tok = tokens_for(client, customer, rp, scope="openid email offline_access")
        assert userinfo(client, tok["access_token"]).get_json()["sub"] == customer["sub"]
        assert introspect(client, rp, tok["access_token"]).get_json()["active"] is True
        resp = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                           auth=auth)
        assert resp.status_code == 200, resp.get_json()
        assert client.post("/revoke", data={"token": resp.get_json()["refresh_token"]}, auth=auth).status_code == 200
        assert introspect(client, rp, resp.get_json()["refresh_token"]).get_json() == {"active": False}

    # Several threads at once (several pooled client connections, one server connection): refresh chains.
    starts = [tokens_for(client, customer, rp, scope="openid email offline_access")["refresh_token"] for _ in range(4)]
    failures = []

    def chain(refresh: str) -> None:
        c = app.test_client()
        for _ in range(6):
            resp = c.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, auth=auth)
            if resp.status_code != 200:
                failures.append((resp.status_code, resp.get_data(as_text=True)))
                return
            refresh = resp.get_json()["refresh_token"]

    threads = [threading.Thread(target=chain, args=(r,)) for r in starts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    log.seek(0)
    assert "prepared statement" not in log.read()
