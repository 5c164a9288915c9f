"""One contract suite for every ``Store`` backend: SQL on SQLite and PostgreSQL, and Redis.

Each backend is a real server or file, never a fake, so atomicity claims are
exercised against the real concurrency control.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from app.store.redis import RedisStore
from app.store.sql import EphemeralItem, SqlStore
from tests.support.services import create_postgres_database, drop_postgres_database, redis_url

BACKENDS = ["sqlite", "postgresql", "redis"]
THREADS = 8


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory):
    # A file, not :memory:, so every thread has its own connection to one database;
    # the busy timeout makes concurrent writers wait instead of failing.
    path = tmp_path_factory.mktemp("store") / "store.db"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 15})
    EphemeralItem.__table__.create(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def postgresql_engine():
    url = create_postgres_database()
    engine = sa.create_engine(url, pool_size=THREADS)
    try:
        EphemeralItem.__table__.create(engine)
        yield engine
    finally:
        engine.dispose()
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def redis_client():
    import redis

    client = redis.Redis.from_url(redis_url())
    yield client
    client.close()


def _redis_cleanup(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=BACKENDS)
def store(request):
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
        prefix = f"idp-test-{uuid.uuid4().hex}:"
        yield RedisStore(client, prefix=prefix)
        _redis_cleanup(client, prefix)
        return
    engine = request.getfixturevalue(f"{request.param}_engine")
    yield SqlStore(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(EphemeralItem.__table__))


def _all_at_once(fn, n: int = THREADS) -> list:
    """Run ``fn()`` in ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run():
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(run) for _ in range(n)]]


NESTED = {"sub": "u1", "scopes": ["openid", "email"], "claims": {"email": {"essential": True}}, "n": 3, "x": None}


def test_round_trip_nested_json(store):
    store.put("code:1", NESTED, ttl=60)
    assert store.get("code:1") == NESTED


def test_get_missing_is_none(store):
    assert store.get("nope") is None


def test_put_overwrites_and_resets_consumption(store):
    store.put("k", {"v": 1}, ttl=60)
    assert store.consume("k") == ({"v": 1}, True)
    store.put("k", {"v": 2}, ttl=60)
    assert store.get("k") == {"v": 2}
    assert store.consume("k") == ({"v": 2}, True)


def test_replace_only_a_live_value_and_reset_its_consumption(store):
    assert store.replace("absent", {"v": 1}, ttl=60) is False
    assert store.get("absent") is None
    store.put("k", {"v": 1}, ttl=60)
    assert store.consume("k") == ({"v": 1}, True)
    assert store.replace("k", {"v": 2}, ttl=60) is True
    assert store.get("k") == {"v": 2}
    assert store.consume("k") == ({"v": 2}, True)
    store.delete("k")
    assert store.replace("k", {"v": 3}, ttl=60) is False
    assert store.get("k") is None


def test_consume_first_use_once_then_replay_still_sees_value(store):
    store.put("code:2", NESTED, ttl=60)
    assert store.consume("code:2") == (NESTED, True)
    assert store.consume("code:2") == (NESTED, False)
    assert store.consume("code:2") == (NESTED, False)
    assert store.get("code:2") == NESTED


def test_consume_where_marks_only_a_matching_value(store):
    value = {"client_id": "shop", "n": 1}
    store.put("code:w", value, ttl=60)
    assert store.consume("code:w", where={"client_id": "other"}) == (value, False)
    assert store.consume("code:w", where={"client_id": "other"}) == (value, False)  # still unused
    assert store.consume("code:w", where={"client_id": "shop"}) == (value, True)
    assert store.consume("code:w", where={"client_id": "shop"}) == (value, False)
    assert store.consume("code:absent", where={"client_id": "shop"}) == (None, False)
    store.put("code:m", value, ttl=60)
    assert store.consume("code:m", where={"client_id": "shop", "missing": "x"}) == (value, False)
    assert store.consume("code:m", where={"client_id": "shop"}) == (value, True)


def test_consume_missing_key(store):
    assert store.consume("absent") == (None, False)


def test_concurrent_consume_has_exactly_one_first_use(store):
    for round_ in range(3):
        key = f"race:{round_}"
        store.put(key, {"round": round_}, ttl=60)
        results = _all_at_once(lambda: store.consume(key))
        assert [first for _, first in results].count(True) == 1
        assert all(value == {"round": round_} for value, _ in results)


def test_add_only_if_absent(store):
    assert store.add("jti:1", {"seen": 1}, ttl=60) is True
    assert store.add("jti:1", {"seen": 2}, ttl=60) is False
    assert store.get("jti:1") == {"seen": 1}
    store.put("jti:2", {"seen": 1}, ttl=60)
    assert store.add("jti:2", {"seen": 2}, ttl=60) is False


def test_concurrent_add_has_exactly_one_winner(store):
    results = _all_at_once(lambda: store.add("jti:race", {"t": threading.get_ident()}, ttl=60))
    assert results.count(True) == 1


def test_incr_counts(store):
    assert [store.incr("rl:ip", ttl=60) for _ in range(3)] == [1, 2, 3]
    assert store.incr("rl:other", ttl=60) == 1


def test_concurrent_incr_loses_no_update(store):
    results = _all_at_once(lambda: [store.incr("rl:race", ttl=60) for _ in range(5)])
    counts = sorted(n for batch in results for n in batch)
    assert counts == list(range(1, THREADS * 5 + 1))


def test_delete(store):
    store.put("k", {"v": 1}, ttl=60)
    store.consume("k")
    store.delete("k")
    assert store.get("k") is None
    assert store.consume("k") == (None, False)
    assert store.add("k", {"v": 2}, ttl=60) is True
    assert store.consume("k") == ({"v": 2}, True)
    store.delete("never-existed")  # no error


def test_keys_are_isolated(store):
    store.put("a", {"v": "a"}, ttl=60)
    store.put("ab", {"v": "ab"}, ttl=60)
    store.incr("n", ttl=60)
    store.consume("a")
    assert store.get("ab") == {"v": "ab"}
    assert store.consume("ab") == ({"v": "ab"}, True)
    store.delete("a")
    assert store.get("ab") == {"v": "ab"}
    assert store.incr("n", ttl=60) == 2


def test_expiry(store):
    """The one sleeping test: every TTL-bound behaviour after the TTL runs out."""
    store.put("put", {"v": 1}, ttl=1)
    store.put("consumed", {"v": 1}, ttl=1)
    store.consume("consumed")
    store.put("long", {"v": 1}, ttl=60)
    store.put("kept", {"v": 1}, ttl=1)
    assert store.consume("kept", keep=30) == ({"v": 1}, True)
    store.put("kept-late", {"v": 1}, ttl=1)
    assert store.consume("kept-late") == ({"v": 1}, True)
    assert store.consume("kept-late", keep=30) == ({"v": 1}, False)  # only the first use extends
    assert store.add("added", {"v": 1}, ttl=1) is True
    assert [store.incr("counter", ttl=1) for _ in range(2)] == [1, 2]
    store.put("replaced", {"v": 1}, ttl=1)
    time.sleep(1.3)
    assert store.replace("replaced", {"v": 2}, ttl=60) is False
    assert store.get("replaced") is None
    assert store.get("put") is None
    assert store.consume("put") == (None, False)
    assert store.consume("consumed") == (None, False)
    assert store.get("long") == {"v": 1}
    # A value consumed with ``keep`` outlives its TTL, still consumed: a replay is still recognised.
    assert store.consume("kept") == ({"v": 1}, False)
    assert store.consume("kept-late") == (None, False)
    assert store.add("added", {"v": 2}, ttl=60) is True
    assert store.consume("added") == ({"v": 2}, True)
    assert store.incr("counter", ttl=60) == 1
    assert store.incr("counter", ttl=60) == 2
    # A fresh value under an expired, consumed key is unconsumed.
    store.put("consumed", {"v": 2}, ttl=60)
    assert store.consume("consumed") == ({"v": 2}, True)


# Backend-specific behaviour outside the shared contract.


def test_redis_prefixes_are_isolated(redis_client):
    one = RedisStore(redis_client, prefix=f"idp-test-{uuid.uuid4().hex}:")
    two = RedisStore(redis_client, prefix=f"idp-test-{uuid.uuid4().hex}:")
    try:
        one.put("k", {"v": 1}, ttl=60)
        assert two.get("k") is None
        assert two.consume("k") == (None, False)
        assert two.add("k", {"v": 2}, ttl=60) is True
        assert one.incr("n", ttl=60) == 1 and two.incr("n", ttl=60) == 1
        assert one.consume("k") == ({"v": 1}, True)
        assert two.consume("k") == ({"v": 2}, True)
    finally:
        _redis_cleanup(redis_client, one.prefix)
        _redis_cleanup(redis_client, two.prefix)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sql_purge_removes_only_expired_rows(request, backend):
    engine = request.getfixturevalue(f"{backend}_engine")
    table = EphemeralItem.__table__
    with engine.begin() as conn:
        conn.execute(sa.insert(table).values(key="old", value={"v": 1}, expires_at=time.time() - 10))
    try:
        # No opportunistic purge on this write (it would take "old" first, at random); purge() must find it.
        SqlStore(engine, purge_probability=0.0).put("live", {"v": 1}, ttl=60)
        assert SqlStore(engine).purge() == 1
        with engine.begin() as conn:
            assert conn.execute(sa.select(table.c.key)).scalars().all() == ["live"]
        # Writes purge opportunistically.
        with engine.begin() as conn:
            conn.execute(sa.insert(table).values(key="old", value={"v": 1}, expires_at=time.time() - 10))
        SqlStore(engine, purge_probability=1.0).incr("n", ttl=60)
        with engine.begin() as conn:
            assert sorted(conn.execute(sa.select(table.c.key)).scalars()) == ["live", "n"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.delete(table))


def test_sql_counter_rows_store_sql_null(sqlite_engine):
    SqlStore(sqlite_engine).incr("n", ttl=60)
    try:
        with sqlite_engine.begin() as conn:
            assert conn.execute(sa.text("SELECT value IS NULL FROM ephemeral_items WHERE key = 'n'")).scalar() == 1
    finally:
        with sqlite_engine.begin() as conn:
            conn.execute(sa.delete(EphemeralItem.__table__))
