"""gunicorn's gthread worker, accepting a connection only while one of its threads is free.

gunicorn's workers share one listening socket, and a gthread worker accepts every connection it can (up to
``worker_connections``, 1000) and keeps the kept-alive ones for good. Connections that arrive together (a load
balancer's pool of keep-alive upstream connections, a load test) therefore often pile up on one or two workers:
measured on 2 cores with 4 workers × 2 threads and 16 connections, all of them landed on one worker in some runs,
which then served every request on one core (one interpreter lock) while the other workers idled, and throughput
halved. This worker stops accepting while all of its threads are busy, so a worker that is already serving
``threads`` requests leaves new connections to the others (when every worker is busy, one takes it after
``ACCEPT_WHEN_BUSY_AFTER``, 5 ms).

Kept-alive connections stay with the worker that accepted them, so the spread must also last. A load balancer
keeps a pool of connections and sends its requests over all of them alike: a worker holding 10 of 16 connections
on two workers gets 62 % of the requests, and saturates at 80 % of the node's capacity while the other idles.
(Measured: with the rule above alone, 16 connections opened at once ended up 9/7 or 10/6, and one worker's queue
set the node's p99.) So the workers also share how many connections each holds, on a small board of shared
memory the master makes before it forks (``Board``):

* a worker that holds more connections than another one leaves new connections to the others (for the same
  ``ACCEPT_WHEN_BUSY_AFTER``, after which it takes one anyway);
* a worker holding more than its share (the total over the workers, rounded up) answers one request with
  ``Connection: close``, at most once every ``SHED_EVERY`` (50 ms): the client opens a new connection, which a
  worker with fewer takes. Nothing is cut off: the response is whole, and says the connection ends.

Used by ``app/gunicorn_conf.py`` (``worker_class``) and by ``make bench``.
"""

from __future__ import annotations

import mmap
import os
import select
import time

from gunicorn.workers import gthread

# A worker with no free thread still accepts a waiting connection after this long, so that when every worker is
# busy (the node is saturated) a new connection waits a few milliseconds for its first request, not for a moment
# when some worker happens to have a free thread, which under keep-alive traffic may not come for a long time.
# GUNICORN_ACCEPT_WHEN_BUSY_AFTER (seconds) overrides it.
ACCEPT_WHEN_BUSY_AFTER = 0.005


#: A worker with more than its share of the connections hands one back at most this often (seconds).
SHED_EVERY = 0.05
#: How long a worker trusts its list of the live workers on the board before looking again (seconds).
LIVE_FOR = 1.0


def _worker_of(pid: int, master: int) -> bool:
    """``pid`` is a running (not a zombie) child of ``master``: a worker of this server, not a process that reused
    a dead worker's pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        return state != b"Z" and int(ppid) == master
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


class Board:
    """How many connections each worker holds, in memory the master maps before forking and its workers share.

    One slot per worker: its pid (0 until the worker has started), its connections, and when the master reserved
    it (ms). The master reserves a slot for each worker it creates (``reserve``, single-threaded, before the fork);
    the worker writes its pid when it starts and its count whenever it changes. A slot whose worker died, however it
    died, is free again: readers skip slots whose pid is no longer a running child of the master.
    """

    FIELDS = 3  # pid, connections, reserved at (ms, CLOCK_MONOTONIC, the same clock in every process)
    SLOTS = 256
    PENDING_FOR_MS = 30_000  # a reserved slot whose worker never started is free again after this

    def __init__(self, slots: int = SLOTS):
        self.slots = slots
        self._map = mmap.mmap(-1, slots * self.FIELDS * 8)  # anonymous and MAP_SHARED: forked workers see one board
        self.cells = memoryview(self._map).cast("q")

    def reserve(self) -> int | None:
        """A free slot for a worker about to be forked (in the master), or None if the board is full."""
        now, c, f, master = int(time.monotonic() * 1000), self.cells, self.FIELDS, os.getpid()
        for i in range(self.slots):
            pid, reserved = c[i * f], c[i * f + 2]
            if pid > 0 and _worker_of(pid, master):
                continue
            if pid == 0 and reserved and now - reserved < self.PENDING_FOR_MS:
                continue  # reserved for a worker that is starting
            c[i * f], c[i * f + 1], c[i * f + 2] = 0, 0, now
            return i
        return None

    def claim(self, slot: int, pid: int) -> None:
        self.cells[slot * self.FIELDS + 1] = 0
        self.cells[slot * self.FIELDS] = pid

    def publish(self, slot: int, connections: int) -> None:
        self.cells[slot * self.FIELDS + 1] = connections

    def release(self, slot: int) -> None:
        c, f = self.cells, self.FIELDS
        c[slot * f], c[slot * f + 1], c[slot * f + 2] = 0, 0, 0

    def live(self, but: int, master: int | None = None) -> list[int]:
        """The slots of the other workers that are running (called in a worker: ``master`` is its parent)."""
        c, f, master = self.cells, self.FIELDS, master or os.getppid()
        return [i for i in range(self.slots) if i != but and c[i * f] > 0 and _worker_of(c[i * f], master)]

    def connections(self, slots: list[int]) -> list[int]:
        return [self.cells[i * self.FIELDS + 1] for i in slots]


def _accept_when_busy_after() -> float:
    raw = os.environ.get("GUNICORN_ACCEPT_WHEN_BUSY_AFTER", "").strip()
    return float(raw) if raw else ACCEPT_WHEN_BUSY_AFTER


class ThreadWorker(gthread.ThreadWorker):
    """gthread, accepting new connections only with a free thread and no more connections than another worker (or
    after a short wait), and handing back connections it holds beyond its share (see above)."""

    _board: Board | None = None  # made by the master (check_config), inherited by every worker it forks
    _slot: int | None = None  # this worker's slot on the board; None: the board is full, no balancing
    _nr_conns = 0

    @classmethod
    def check_config(cls, cfg, log):
        super().check_config(cfg, log)  # in the master, once at start, before any worker exists
        if cls._board is None:
            cls._board = Board()

    def __init__(self, *args, **kwargs):  # in the master, just before the fork
        self._slot = self._board.reserve() if self._board is not None else None
        super().__init__(*args, **kwargs)
        self.in_flight = 0  # connections handed to the thread pool and not finished (main thread only)
        self._closed_since = 0.0
        self._busy_wait = _accept_when_busy_after()
        self._others: list[int] = []
        self._others_until = 0.0
        self._last_shed = 0.0

    @property
    def nr_conns(self) -> int:
        return self._nr_conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:  # gthread counts its connections here (main thread): publish the count
        self._nr_conns = value
        if self._slot is not None and self._board is not None:
            self._board.publish(self._slot, value)

    def init_process(self):  # in the worker; returns when the worker stops
        if self._slot is not None:
            self._board.claim(self._slot, os.getpid())
        try:
            super().init_process()
        finally:
            if self._slot is not None:
                self._board.release(self._slot)

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi

        def balanced(environ, start_response):
            if self._should_shed():
                # gunicorn's Response: "Connection: close" on this (whole) response; the client reconnects.
                start_response.__self__.force_close()
            return app(environ, start_response)

        self.wsgi = balanced

    def _other_connections(self) -> list[int]:
        if self._slot is None:
            return []
        now = time.monotonic()
        if now >= self._others_until:
            self._others, self._others_until = self._board.live(but=self._slot), now + LIVE_FOR
        return self._board.connections(self._others)

    def _crowded(self) -> bool:
        """Another worker holds fewer connections: new ones should go there."""
        others = self._other_connections()
        return bool(others) and self._nr_conns > min(others)

    def _should_shed(self) -> bool:
        """More connections than this worker's share, and none handed back in the last SHED_EVERY (request threads)."""
        others = self._other_connections()
        if not others or time.monotonic() - self._last_shed < SHED_EVERY:
            return False
        share = -(-(self._nr_conns + sum(others)) // (len(others) + 1))  # the total over the workers, rounded up
        if self._nr_conns <= share:
            return False
        self._last_shed = time.monotonic()
        return True

    def _busy(self) -> bool:
        return self.in_flight >= self.cfg.threads

    def _eligible(self) -> bool:
        return not self._busy() and not self._crowded()

    def _may_accept(self) -> bool:
        if self._eligible():
            return True
        now = time.monotonic()
        if now - self._closed_since < self._busy_wait:
            return False
        if self._busy():
            return True  # every worker may be busy (a saturated node): a new connection waits no longer
        # Crowded but idle: take a connection only if one is still waiting, that no worker with fewer took.
        if select.select(self.sockets, [], [], 0)[0]:
            return True
        self._closed_since = now  # look again after another wait
        return False

    def set_accept_enabled(self, enabled):
        # run() calls this at each turn of its loop while accepting is off (and the connection limit allows it), so
        # the listener comes back as soon as a request finishes or the wait is over.
        super().set_accept_enabled(enabled and self._may_accept())

    def enqueue_req(self, conn):
        # Every way a request reaches the pool (a new connection, a kept-alive or pending one, read-ahead) counts;
        # once every thread is taken, the listener is left to the other workers.
        super().enqueue_req(conn)
        self.in_flight += 1  # after the submit: finish_request runs on this thread, later
        if self._accepting and not self._eligible():
            self._closed_since = time.monotonic()
            super().set_accept_enabled(False)

    def finish_request(self, conn, fs):
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout):
        # Closed for being busy or crowded: look again when the wait is over, not at the loop's one-second tick.
        if not self._accepting and self.nr_conns < self.worker_connections:
            timeout = min(timeout, max(0.001, self._closed_since + self._busy_wait - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
