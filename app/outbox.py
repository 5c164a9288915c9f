"""A durable outbox for outbound HTTP deliveries (back-channel logout tokens).

Rows are written in the same transaction as the change that causes them (or
right after it, by a signal receiver), so a crash never loses a delivery.
Workers claim due rows with a lease (an atomic conditional UPDATE, safe with
several processes on SQLite and PostgreSQL), deliver outside any request, and
retry with exponential backoff (5 s, 10 s, 20 s … capped at 1 h; given up after
10 attempts with ``failed_at`` and ``last_error``).

Who delivers (``IDP_OUTBOX_WORKER``): ``thread`` — one daemon poller per process,
woken by each enqueue and polling every few seconds; ``off`` — ``flask outbox work``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from typing import Callable

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, mapped_column

from . import observability
from .extensions import db


class OutboxMessage(db.Model):
    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    target: Mapped[str] = mapped_column(sa.String(2048))
    payload: Mapped[str] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    locked_until: Mapped[int | None] = mapped_column(sa.BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    failed_at: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_error: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[int] = mapped_column(sa.BigInteger, default=lambda: int(time.time()))


# -- logic ---------------------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

BASE_DELAY = 5.0          # seconds before the first retry; doubles each time (IDP_OUTBOX_BASE_DELAY overrides)
MAX_DELAY = 3600          # backoff cap
MAX_ATTEMPTS = 10         # then the row is given up (failed_at, last_error)
POLL_INTERVAL = 5.0       # while rows are pending (retries, leases of crashed workers) the poller looks this often

#: kind -> callable(row) -> str: the payload to send now (e.g. a re-signed logout token). Registered by senders.
_preparers: dict[str, Callable[[OutboxMessage], str]] = {}
#: kind -> form field name carrying the payload
_fields: dict[str, str] = {}


def register_kind(kind: str, field: str, prepare: Callable[[OutboxMessage], str] | None = None) -> None:
    _fields[kind] = field
    if prepare is not None:
        _preparers[kind] = prepare


def enqueue(kind: str, target: str, payload: str, *, commit: bool = True) -> OutboxMessage:
    """Add a delivery (durable once committed) and wake this process's poller."""
    row = OutboxMessage(kind=kind, target=target, payload=payload, attempts=0,
                        next_attempt_at=int(time.time()), created_at=int(time.time()))
    db.session.add(row)
    if commit:
        db.session.commit()
        wake()
    return row


def backoff(attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: base, 2×base, 4×base, … capped at an hour."""
    base = float(current_app.config.get("IDP_OUTBOX_BASE_DELAY", BASE_DELAY))
    return min(base * (2 ** max(attempts - 1, 0)), MAX_DELAY)


def _lease() -> int:
    # Longer than one delivery can take, so a live worker never loses its claim; a crashed one frees it soon.
    return int(current_app.config["IDP_BACKCHANNEL_TIMEOUT"]) * 2 + 30


def _pending():
    return sa.and_(OutboxMessage.delivered_at.is_(None), OutboxMessage.failed_at.is_(None))


def _claim(row_id: int, now: int) -> bool:
    """Take a lease on one row; exactly one of several concurrent workers succeeds (atomic UPDATE)."""
    result = db.session.execute(
        sa.update(OutboxMessage)
        .where(OutboxMessage.id == row_id, _pending(), OutboxMessage.next_attempt_at <= now,
               sa.or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now))
        .values(locked_until=now + _lease())
    )
    db.session.commit()
    return result.rowcount == 1


def deliver_due(limit: int = 20) -> int:
    """Deliver up to ``limit`` due rows (inside an app context). Returns how many were attempted."""
    now = int(time.time())
    ids = db.session.execute(
        sa.select(OutboxMessage.id)
        .where(_pending(), OutboxMessage.next_attempt_at <= now,
               sa.or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now))
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)
    ).scalars().all()
    db.session.rollback()  # end the read transaction before the per-row ones
    done = 0
    for row_id in ids:
        if not _claim(row_id, now):
            continue  # another worker has it
        row = db.session.get(OutboxMessage, row_id)
        if row is not None:  # deleted meanwhile (e.g. with its app)
            _attempt(row)
            done += 1
    return done


def _attempt(row: OutboxMessage) -> None:
    from .netguard import Refused, post_form

    cfg = current_app.config
    permanent = False
    error = None
    try:
        prepare = _preparers.get(row.kind)
        payload = prepare(row) if prepare else row.payload
        if payload != row.payload:
            row.payload = payload
        status = post_form(row.target, {_fields.get(row.kind, "payload"): payload},
                           timeout=cfg["IDP_BACKCHANNEL_TIMEOUT"], dev_mode=cfg["IDP_DEV_MODE"])
        if status not in (200, 204):  # Back-Channel Logout 1.0 §2.8: 200 (some frameworks answer 204)
            error = f"HTTP {status}"
    except Refused as exc:
        permanent, error = True, f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 - network errors of every kind are retried
        error = f"{type(exc).__name__}: {exc}"
    now = int(time.time())
    row.attempts = (row.attempts or 0) + 1
    row.locked_until = None
    if error is None:
        row.delivered_at, row.last_error = now, None
        row.payload = ""  # the token names the customer (sub): keep no personal data once it is sent
    else:
        row.last_error = error[:512]
        if permanent or row.attempts >= MAX_ATTEMPTS:
            row.failed_at = now
            row.payload = ""  # given up: the token is of no further use
            log.warning("outbox %s #%s to %s given up after %s attempts: %s", row.kind, row.id,
                        _origin(row.target), row.attempts, row.last_error)
        else:
            # Whole seconds, at least one ahead, so a round always makes progress.
            row.next_attempt_at = max(now + 1, math.ceil(time.time() + backoff(row.attempts)))
            log.info("outbox %s #%s to %s failed (%s), retry in %.0fs", row.kind, row.id,
                     _origin(row.target), row.last_error, backoff(row.attempts))
    observability.count_delivery(row.kind, "delivered" if error is None else "failed" if row.failed_at else "retry")
    db.session.commit()


def _origin(url: str) -> str:
    # Logs name where, never what (the payload is a token).
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def seconds_until_next() -> float | None:
    """When the next pending row becomes due (None: nothing pending)."""
    nxt = db.session.execute(
        sa.select(sa.func.min(sa.case(
            (OutboxMessage.locked_until > OutboxMessage.next_attempt_at, OutboxMessage.locked_until),
            else_=OutboxMessage.next_attempt_at)))
        .where(_pending())).scalar()
    db.session.rollback()
    return None if nxt is None else max(0.0, nxt - time.time())


# -- the in-process poller (IDP_OUTBOX_WORKER=thread) ---------------------------------------------------------------

_wake = threading.Event()
_lock = threading.Lock()
_thread: threading.Thread | None = None
_thread_pid: int | None = None
_apps: "weakref.WeakSet" = weakref.WeakSet()
_idle: "weakref.WeakSet" = weakref.WeakSet()   # apps with nothing pending: polled again after their next enqueue
_wakes = 0                                      # counts wake() calls, so a round never marks idle over a fresh row


def wake() -> None:
    """Called after an enqueue commit: make sure this process's poller runs and looks now."""
    try:
        app = current_app._get_current_object()
    except RuntimeError:
        return
    global _wakes
    if app.config.get("IDP_OUTBOX_WORKER") == "thread":
        _wakes += 1
        _idle.discard(app)
        ensure_worker(app)
        _wake.set()


def ensure_worker(app) -> None:
    """Start (once per process, again after a fork) the daemon poller and register ``app`` with it."""
    global _thread, _thread_pid
    if app.config.get("IDP_OUTBOX_WORKER") != "thread":
        return
    if app not in _apps:
        with _lock:
            _apps.add(app)
        _wake.set()  # a new app (a restart) first delivers what earlier processes left behind
    if _thread is not None and _thread_pid == os.getpid() and _thread.is_alive():
        return
    with _lock:
        if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
            _thread_pid = os.getpid()
            _thread = threading.Thread(target=_run, name="outbox-poller", daemon=True)
            _thread.start()


def _run() -> None:
    timeout = 0.0
    while True:
        _wake.wait(timeout)
        _wake.clear()
        seen = _wakes
        soonest = POLL_INTERVAL
        for app in list(_apps):
            if app in _idle:
                continue
            try:
                with app.app_context():
                    try:
                        while deliver_due() > 0:
                            pass
                        wait = seconds_until_next()
                    finally:
                        db.session.remove()
            except Exception:  # noqa: BLE001 - the poller survives database and network errors
                log.exception("outbox poller: delivery round failed; will retry")
                continue
            if wait is None and seen == _wakes:
                # Nothing pending: look again only after this process enqueues (or restarts). Not polling idle
                # apps keeps idle processes off the database.
                _idle.add(app)
            elif wait is not None:
                soonest = min(soonest, wait)
        timeout = max(soonest, 0.05)


def work(once: bool = False, limit: int = 20) -> int:
    """The ``flask outbox work`` loop (inside an app context): deliver until interrupted, or one round."""
    total = 0
    while True:
        n = deliver_due(limit)
        total += n
        if once and n < limit:
            return total
        if n == 0:
            wait = seconds_until_next()
            db.session.remove()
            time.sleep(min(POLL_INTERVAL, wait if wait is not None else POLL_INTERVAL) or 0.05)


def init_app(app) -> None:
    """Start the poller lazily: at the first request of each process (after a fork), or at the first enqueue."""
    if app.config.get("IDP_OUTBOX_WORKER", "thread") != "thread":
        return

    @app.before_request
    def _start_outbox_worker():
        if app not in _apps or _thread is None or _thread_pid != os.getpid():
            ensure_worker(app)
