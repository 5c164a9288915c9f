"""Short-lived state behind one small TTL-aware interface.

Authorization codes, login interactions, replay caches, challenges and counters
live here. Two backends pass one contract suite (tests/test_store_contract.py):
``SqlStore`` (the embedded default, a table in the application database) and
``RedisStore`` (production). Invariants every backend keeps:

* a value is visible until its TTL runs out, then never again;
* ``consume`` is atomic: exactly one caller sees ``first_use=True`` for a key,
  and later callers still get the value (so a replay can be detected and punished)
  until the TTL runs out; ``keep`` makes that first use extend the value's life to
  ``keep`` seconds from then (replays stay detectable after a short TTL); with
  ``where`` (field → value), a value whose top-level fields differ is returned
  but not marked used (an authorization code presented by another client);
* ``add`` sets a key only if it is absent or expired (replay caches);
* ``replace`` sets a key only if it is present and unexpired, like ``put`` otherwise (a pending step that
  another request may have finished meanwhile must not come back);
* ``incr`` counts within a window that starts with the first increment;
* each operation commits on its own: it never joins the caller's database transaction.
"""

from __future__ import annotations

from typing import Protocol

from flask import current_app


class Store(Protocol):
    def put(self, key: str, value: dict, ttl: int) -> None: ...
    def get(self, key: str) -> dict | None: ...
    def consume(self, key: str, keep: int | None = None,
                where: dict[str, str] | None = None) -> tuple[dict | None, bool]: ...
    def add(self, key: str, value: dict, ttl: int) -> bool: ...
    def replace(self, key: str, value: dict, ttl: int) -> bool: ...
    def delete(self, key: str) -> None: ...
    def incr(self, key: str, ttl: int) -> int: ...


def create_store(app) -> Store:
    """Redis when REDIS_URL is set, else the SQL table in the application database."""
    url = app.config.get("REDIS_URL")
    if url:
        import redis

        from .redis import RedisStore

        from ..config import redis_options

        return RedisStore(redis.Redis.from_url(url, **redis_options(app.config)), prefix=app.config.get("IDP_STORE_PREFIX", "idp:"))
    from ..extensions import db
    from .sql import SqlStore

    with app.app_context():
        engine = db.engine
    return SqlStore(engine)


def init_app(app) -> None:
    app.extensions["idp_store"] = create_store(app)


def store() -> Store:
    return current_app.extensions["idp_store"]
