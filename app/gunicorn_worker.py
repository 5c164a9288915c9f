"""gunicorn's gthread worker, accepting a connection only while one of its threads is free.

gunicorn's workers share one listening socket, and a gthread worker accepts every connection it can (up to
``worker_connections``, 1000) and keeps the kept-alive ones for good. Connections that arrive together (a load
balancer's pool of keep-alive upstream connections, a load test) therefore often pile up on one or two workers:
measured on 2 cores with 4 workers × 2 threads and 16 connections, all of them landed on one worker in some runs,
which then served every request on one core (one interpreter lock) while the other workers idled, and throughput
halved. This worker stops accepting while all of its threads are busy, so a worker that is already serving
``threads`` requests leaves new connections to the others (when every worker is busy, one takes it after
``ACCEPT_WHEN_BUSY_AFTER``).
Kept-alive connections are not affected: a request arriving on one is served by its worker, as before.

Used by ``app/gunicorn_conf.py`` (``worker_class``) and by ``make bench``.
"""

from __future__ import annotations

import time

from gunicorn.workers import gthread

# A worker with no free thread still accepts a waiting connection after this long, so that when every worker is
# busy (the node is saturated) a new connection waits a few milliseconds for its first request, not for a moment
# when some worker happens to have a free thread, which under keep-alive traffic may not come for a long time.
ACCEPT_WHEN_BUSY_AFTER = 0.005  # seconds


class ThreadWorker(gthread.ThreadWorker):
    """gthread, accepting new connections only with a free thread (or after a short wait, see above)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = 0  # connections handed to the thread pool and not finished (main thread only)
        self._busy_since = 0.0

    def _may_accept(self) -> bool:
        return (self.in_flight < self.cfg.threads
                or time.monotonic() - self._busy_since >= ACCEPT_WHEN_BUSY_AFTER)

    def set_accept_enabled(self, enabled):
        # run() calls this after every event while accepting is off, so the listener comes back as soon as a
        # request finishes (or the wait is over).
        super().set_accept_enabled(enabled and self._may_accept())

    def enqueue_req(self, conn):
        self.in_flight += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs):
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def accept(self, listener):
        super().accept(listener)
        if self.in_flight >= self.cfg.threads:
            self._busy_since = time.monotonic()
            self.set_accept_enabled(False)
