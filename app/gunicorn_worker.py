"""gunicorn's gthread worker, accepting a connection only while one of its threads is free.

gunicorn's workers share one listening socket, and a gthread worker accepts every connection it can (up to
``worker_connections``, 1000) and keeps the kept-alive ones for good. Connections that arrive together (a load
balancer's pool of keep-alive upstream connections, a load test) therefore often pile up on one or two workers:
measured on 2 cores with 4 workers × 2 threads and 16 connections, all of them landed on one worker in some runs,
which then served every request on one core (one interpreter lock) while the other workers idled, and throughput
halved. This worker stops accepting while all of its threads are busy, so a worker that is already serving
``threads`` requests leaves new connections to the others (when every worker is busy, one takes it after
``ACCEPT_WHEN_BUSY_AFTER``, 5 ms).
Kept-alive connections are not affected: a request arriving on one is served by its worker, as before.

Used by ``app/gunicorn_conf.py`` (``worker_class``) and by ``make bench``.
"""

from __future__ import annotations

import os
import time

from gunicorn.workers import gthread

# A worker with no free thread still accepts a waiting connection after this long, so that when every worker is
# busy (the node is saturated) a new connection waits a few milliseconds for its first request, not for a moment
# when some worker happens to have a free thread, which under keep-alive traffic may not come for a long time.
# GUNICORN_ACCEPT_WHEN_BUSY_AFTER (seconds) overrides it.
ACCEPT_WHEN_BUSY_AFTER = 0.005


def _accept_when_busy_after() -> float:
    raw = os.environ.get("GUNICORN_ACCEPT_WHEN_BUSY_AFTER", "").strip()
    return float(raw) if raw else ACCEPT_WHEN_BUSY_AFTER


class ThreadWorker(gthread.ThreadWorker):
    """gthread, accepting new connections only with a free thread (or after a short wait, see above)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = 0  # connections handed to the thread pool and not finished (main thread only)
        self._busy_since = 0.0
        self._busy_wait = _accept_when_busy_after()

    def _busy(self) -> bool:
        return self.in_flight >= self.cfg.threads

    def _may_accept(self) -> bool:
        return not self._busy() or time.monotonic() - self._busy_since >= self._busy_wait

    def set_accept_enabled(self, enabled):
        # run() calls this at each turn of its loop while accepting is off (and the connection limit allows it), so
        # the listener comes back as soon as a request finishes or the wait is over.
        super().set_accept_enabled(enabled and self._may_accept())

    def enqueue_req(self, conn):
        # Every way a request reaches the pool (a new connection, a kept-alive or pending one, read-ahead) counts;
        # once every thread is taken, the listener is left to the other workers.
        super().enqueue_req(conn)
        self.in_flight += 1  # after the submit: finish_request runs on this thread, later
        if self._busy() and self._accepting:
            self._busy_since = time.monotonic()
            super().set_accept_enabled(False)

    def finish_request(self, conn, fs):
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout):
        # Closed for being busy: wake up when the wait is over, not at the loop's usual one-second tick.
        if not self._accepting and self._busy() and self.nr_conns < self.worker_connections:
            timeout = min(timeout, max(0.001, self._busy_since + self._busy_wait - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
