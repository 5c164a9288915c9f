"""Unbound extension singletons, bound to the app in ``create_app``."""

import time

from flask_babel import Babel
from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from .http import client_ip

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
babel = Babel()
limiter = Limiter(key_func=client_ip, default_limits=[])


def rate_limit_headers(response):
    """A 429 says when to retry (RFC 6585 §4: ``Retry-After``) and which limit it hit (``X-RateLimit-*``).

    Only on a 429: reading the limit's window costs two Redis round trips, and Flask-Limiter's own headers, on every
    response of a limited endpoint, tripled the Redis work of each token request (one counter increment).
    """
    if response.status_code != 429:
        return response
    limit = limiter.current_limit
    if limit is None or not limit.breached:
        return response  # a 429 of the app's own, not a limit's
    try:
        reset_at = int(limit.reset_at)
    except Exception:  # noqa: BLE001 - the limit's store failed after refusing the request: no reset time to give
        return response
    response.headers["Retry-After"] = str(max(1, reset_at - int(time.time())))
    response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
    response.headers["X-RateLimit-Remaining"] = "0"
    response.headers["X-RateLimit-Reset"] = str(reset_at)
    return response


def commit_keeping_loaded() -> None:
    """Commit, keeping what this request loaded and wrote readable without another SELECT.

    By default a commit expires every object of the Session, so the next attribute read reloads its row: a
    SELECT, and outside a transaction a BEGIN before it and a ROLLBACK when the request ends. After a sign-in
    the request still reads the customer's ``sub`` and the new session's ``auth_time``, which it has just
    written itself. The Session lives for one request, so nothing kept can outlive it.
    """
    session = db.session()
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True


def without_transaction() -> None:
    """Run this request's statements in autocommit mode until its first commit, if none ran yet.

    For a request that only reads (userinfo, introspection) or whose only write is one row (a code exchange),
    a transaction adds nothing but two round trips to PostgreSQL: psycopg sends BEGIN before the first
    statement, and COMMIT or ROLLBACK (when the connection goes back to the pool) after the last. Each
    statement is then its own transaction. Where a statement already ran, the request keeps its transaction.
    A commit gives the connection back to the pool, with its usual isolation level: what follows a commit runs in
    a transaction again (a first-party app's consent record after the autocommit reads of an authorization).
    """
    session = db.session()  # this request's Session (the scoped_session proxy lacks in_transaction)
    if not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
