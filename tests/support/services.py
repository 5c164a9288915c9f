"""Real PostgreSQL and Redis for tests, and the one rule for anything a test needs from the machine.

Locally a missing server or tool skips the tests that need it, with the reason;
under CI=true it is a failure, never a skip (``missing``).
"""

from __future__ import annotations

import os
import uuid

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def missing(msg: str):
    """A server or tool this test needs is absent: skip locally with ``msg``, fail under CI=true."""
    if IN_CI:
        pytest.fail(msg + " — CI must provide it", pytrace=False)
    pytest.skip(msg)


def _unavailable(what: str, why: Exception | str):
    missing(f"{what} is not reachable ({why})")


def postgres_admin_url() -> str:
    return os.environ.get("IDP_TEST_POSTGRES_URL", DEFAULT_PG)


def create_postgres_database() -> str:
    """Create a fresh, empty database and return its URL (skips or fails if PostgreSQL is missing)."""
    import sqlalchemy as sa

    admin = postgres_admin_url()
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        name = "idp_test_" + uuid.uuid4().hex[:12]
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any connection failure
        _unavailable("PostgreSQL", exc)
    return sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    engine = sa.create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def redis_url() -> str:
    """A reachable Redis URL (skips or fails if Redis is missing)."""
    import redis

    url = os.environ.get("IDP_TEST_REDIS_URL", DEFAULT_REDIS)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    return url
