"""``SqlStore``: the ``Store`` protocol on a table of the application database.

Works on SQLite and PostgreSQL. Every operation is one short transaction of its
own on the engine (never ``db.session``), so it commits independently of any
request transaction, and every check-and-set is a single SQL statement so the
database, not Python, provides the atomicity across threads and processes.

Times are float epoch seconds from this process's clock: the same column type
and comparisons on both dialects, and no dialect-specific date functions.
"""

from __future__ import annotations

import random
import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db


class EphemeralItem(db.Model):
    __tablename__ = "ephemeral_items"

    key = sa.Column(sa.String(255), primary_key=True)
    # none_as_null: counters store SQL NULL, not the JSON literal 'null'.
    value = sa.Column(sa.JSON(none_as_null=True), nullable=True)
    counter = sa.Column(sa.Integer, nullable=False, default=0, server_default="0")
    expires_at = sa.Column(sa.Float, nullable=False, index=True)  # epoch seconds
    consumed_at = sa.Column(sa.Float, nullable=True)  # epoch seconds


_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class SqlStore:
    """A ``Store`` over ``engine``; expired rows are purged on ~``purge_probability`` of writes."""

    def __init__(self, engine: sa.Engine, *, purge_probability: float = 0.01):
        if engine.dialect.name not in _INSERTS:
            raise NotImplementedError(f"SqlStore supports sqlite and postgresql, not {engine.dialect.name}")
        self.engine = engine
        self.purge_probability = purge_probability
        self._table = EphemeralItem.__table__
        self._insert = _INSERTS[engine.dialect.name]

    def _upsert(self, row: dict, set_, where=None):
        """INSERT ``row``, or on a key conflict UPDATE with ``set_(excluded)`` (if ``where`` holds)."""
        stmt = self._insert(self._table).values(**row)
        return stmt.on_conflict_do_update(index_elements=[self._table.c.key], set_=set_(stmt.excluded), where=where)

    @staticmethod
    def _replace(excluded) -> dict:
        return {c: excluded[c] for c in ("value", "counter", "expires_at", "consumed_at")}

    def _maybe_purge(self) -> None:
        if random.random() < self.purge_probability:
            self.purge()

    def put(self, key: str, value: dict, ttl: int) -> None:
        row = {"key": key, "value": value, "counter": 0, "expires_at": time.time() + ttl, "consumed_at": None}
        stmt = self._upsert(row, self._replace)
        with self.engine.begin() as conn:
            conn.execute(stmt)
        self._maybe_purge()

    def get(self, key: str) -> dict | None:
        t = self._table
        with self.engine.begin() as conn:
            return conn.execute(sa.select(t.c.value).where(t.c.key == key, t.c.expires_at > time.time())).scalar()

    def consume(self, key: str, keep: int | None = None,
                where: dict[str, str] | None = None) -> tuple[dict | None, bool]:
        t, now = self._table, time.time()
        values = {"consumed_at": now, **({"expires_at": now + keep} if keep else {})}
        read = sa.select(t.c.value).where(t.c.key == key, t.c.expires_at > now)
        with self.engine.begin() as conn:
            value = conn.execute(read).scalar() if where else None
            if where and (value is None or any(value.get(f) != v for f, v in where.items())):
                return value, False
            # The conditional UPDATE is the decision: PostgreSQL re-checks the WHERE
            # after waiting on a concurrent writer's row lock, SQLite serialises writers,
            # so exactly one caller matches the row. It never changes the value, so one read is enough.
            marked = conn.execute(
                sa.update(t)
                .where(t.c.key == key, t.c.consumed_at.is_(None), t.c.expires_at > now)
                .values(**values)
            ).rowcount
            if value is None:
                value = conn.execute(read).scalar()
        return value, marked == 1 and value is not None

    def add(self, key: str, value: dict, ttl: int) -> bool:
        t, now = self._table, time.time()
        row = {"key": key, "value": value, "counter": 0, "expires_at": now + ttl, "consumed_at": None}
        # Overwrite only an expired row; RETURNING yields a row only if we inserted or overwrote.
        stmt = self._upsert(row, self._replace, where=t.c.expires_at <= now)
        with self.engine.begin() as conn:
            added = conn.execute(stmt.returning(t.c.key)).first() is not None
        self._maybe_purge()
        return added

    def replace(self, key: str, value: dict, ttl: int) -> bool:
        t, now = self._table, time.time()
        stmt = (sa.update(t).where(t.c.key == key, t.c.expires_at > now)
                .values(value=value, counter=0, expires_at=now + ttl, consumed_at=None))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def incr(self, key: str, ttl: int) -> int:
        t, now = self._table, time.time()
        expired = t.c.expires_at <= now
        row = {"key": key, "value": None, "counter": 1, "expires_at": now + ttl, "consumed_at": None}
        # SET expressions all see the old row, so one statement both tests the window and bumps.
        stmt = self._upsert(
            row,
            lambda ex: {
                "counter": sa.case((expired, 1), else_=t.c.counter + 1),
                "expires_at": sa.case((expired, ex.expires_at), else_=t.c.expires_at),
                # A restarted window must not revive an expired value stored under the key.
                "value": sa.case((expired, sa.null()), else_=t.c.value),
                "consumed_at": sa.case((expired, sa.null()), else_=t.c.consumed_at),
            },
        )
        with self.engine.begin() as conn:
            count = conn.execute(stmt.returning(t.c.counter)).scalar_one()
        self._maybe_purge()
        return count

    def delete(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self._table).where(self._table.c.key == key))

    def purge(self) -> int:
        """Delete expired rows; returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(self._table).where(self._table.c.expires_at <= time.time())).rowcount
