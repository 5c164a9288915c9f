"""gunicorn's gthread worker, keeping the connections spread over the workers.

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
on two workers gets 62 % of the requests, and runs near its limit at 80 % of the node's capacity while the other
has room. (Measured with ``bench/spread.py``: with the rule above alone, 16 connections ended up 9/7, 7/9, 6/10
and 7/9.) So the workers also share how many connections each holds, on a small board of shared memory the
master makes before it forks (``Board``; a worker is on it while it accepts connections, from its first turn of
the loop to the start of its shutdown):

* a worker that holds more connections than another one leaves new connections to the others; it looks every
  ``CROWDED_LOOK_EVERY`` (50 ms) and takes one still waiting then, in case the others stopped accepting;
* a worker holding more than its share (the total over the workers, rounded up) answers one request with
  ``Connection: close``, at most once every ``SHED_EVERY`` (50 ms): the client opens a new connection, which a
  worker with fewer takes. Nothing is cut off: the response is whole, and says the connection ends.

A response goes out in one write where gunicorn would make two: gunicorn sends the status line and headers, then
the body, each with its own ``sendall`` (with ``TCP_NODELAY``, two TCP segments, two system calls and two wake-ups
of the client). ``OneWrite`` holds the headers until the first body bytes and sends them together: one packet
instead of two for a small response, and about 4 % less CPU per request in one interleaved pass of six rounds
(bench/analysis.md, "One write per response").

A connection that ends is closed gracefully (gunicorn sends its FIN and waits up to 2 s for the client's, so
that unread bytes do not turn into a reset) on a thread of its own, not on the worker's event loop, which
gunicorn's gthread blocks for that wait.

With ``reuse_port`` the kernel chooses each connection's worker, so only the handing back applies. Used by
``app/gunicorn_conf.py`` (``worker_class``) and by ``make bench``.
"""

from __future__ import annotations

import mmap
import os
import queue
import select
import socket
import threading
import time

from gunicorn.workers import gthread

# A worker with no free thread still accepts a waiting connection after this long, so that when every worker is
# busy (the node is saturated) a new connection waits a few milliseconds for its first request, not for a moment
# when some worker happens to have a free thread, which under keep-alive traffic may not come for a long time.
# GUNICORN_ACCEPT_WHEN_BUSY_AFTER (seconds) overrides it.
ACCEPT_WHEN_BUSY_AFTER = 0.005
#: A worker holding more connections than another looks this often for a connection that nobody took (seconds).
CROWDED_LOOK_EVERY = 0.05
#: A worker with more than its share of the connections hands one back at most this often (seconds).
SHED_EVERY = 0.05
#: How long a worker trusts its list of the live workers on the board before looking again (seconds).
LIVE_FOR = 1.0

_PROC = os.path.isdir("/proc/self")


def _worker_of(pid: int, master: int) -> bool:
    """``pid`` is a running (not a zombie) child of ``master``: a worker of this server, not a process that reused
    a dead worker's pid. Without /proc (macOS): whether the pid exists."""
    if not _PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
    except OSError:
        return False
    return state != b"Z" and int(ppid) == master


class Board:
    """How many connections each worker holds, in memory the master maps before forking and its workers share.

    One slot per worker: its pid (0 while it is not accepting), its connections, and when the master reserved it
    (ms). The master reserves a slot for each worker it creates (``reserve``, single-threaded, before the fork);
    the worker writes its pid when it starts accepting and its count whenever it changes, and gives the slot back
    when it stops. A slot whose worker died, however it died, is free again: readers skip slots whose pid is no
    longer a running child of the master.
    """

    FIELDS = 3  # pid, connections, reserved at (ms, CLOCK_MONOTONIC, the same clock in every process)
    SLOTS = 256
    PENDING_FOR_MS = 300_000  # a reserved slot whose worker never claimed it is free again after this

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
                continue  # reserved for a worker that has not started accepting yet
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
        c[slot * f + 1], c[slot * f + 2] = 0, 0
        c[slot * f] = 0  # last: until then the slot is still this worker's, so the master cannot hand it out

    def live(self, but: int, master: int | None = None) -> list[int]:
        """The slots of the other workers that are accepting (called in a worker: ``master`` is its parent)."""
        c, f, master = self.cells, self.FIELDS, master or os.getppid()
        return [i for i in range(self.slots) if i != but and c[i * f] > 0 and _worker_of(c[i * f], master)]

    def connections(self, slots: list[int]) -> list[int]:
        return [self.cells[i * self.FIELDS + 1] for i in slots]


def _accept_when_busy_after() -> float:
    raw = os.environ.get("GUNICORN_ACCEPT_WHEN_BUSY_AFTER", "").strip()
    return float(raw) if raw else ACCEPT_WHEN_BUSY_AFTER


class _Closer:
    """One thread that finishes closing ended connections (waits for the client's FIN, then closes), off the worker's
    event loop, which has sent ours already (a daemon: a worker that exits does not wait for a client)."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="graceful-close", daemon=True).start()

    def close(self, conn) -> None:
        self._queue.put(conn)

    def _run(self) -> None:
        while True:
            conn = self._queue.get()
            try:
                conn.close(graceful=True)
            except Exception:  # noqa: BLE001 - a socket that fails to close is gone either way
                pass


class OneWrite:
    """A connection's socket while one response is written: gunicorn's first ``sendall`` of a response (its status
    line and headers) is held and sent with the second (the first body bytes, or the first chunk's size line), in one
    system call and one TCP segment. What follows goes straight through. ``flush`` sends what is still held: the
    headers of a response without a body (a HEAD, a 204, a 304, an empty body), which go out after gunicorn has
    logged the request. ``sendfile`` and ``shutdown`` send what is held first, so that a file's bytes, or the FIN of
    a response that failed after its headers, come after the headers as they did. ``send`` (gunicorn's "100 Continue",
    before the response) is not delayed.

    The first ``sendall`` is the headers because this app sends no 103 Early Hints and never takes the socket over
    (``environ["gunicorn.socket"]``); either would need this revisited."""

    __slots__ = ("_sock", "_held", "_writes")

    def __init__(self, sock):
        self._sock = sock
        self._held = b""
        self._writes = 0

    def sendall(self, data) -> None:
        self._writes += 1
        if self._writes == 1:
            self._held = bytes(data)
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._sock.sendall(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._sock.sendall(held)

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self._sock.sendfile(*args, **kwargs)

    def shutdown(self, how) -> None:
        self.flush()  # gunicorn closes a response that failed after its headers: they still go out before the FIN
        self._sock.shutdown(how)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class ThreadWorker(gthread.ThreadWorker):
    """gthread, accepting new connections only with a free thread and no more connections than another worker (or
    after a short wait), and handing back connections it holds beyond its share (see above)."""

    _board: Board | None = None  # made by the master (check_config), inherited by every worker it forks
    _slot: int | None = None  # this worker's slot on the board; None: no balancing (the board full, or stopping)
    _on_board = False  # the slot is claimed (the worker is accepting): the count is published
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
        self._look_again_at = 0.0  # while not accepting: when the main loop should look again
        self._busy_wait = _accept_when_busy_after()
        self._others: list[int] = []
        self._others_until = 0.0
        self._last_shed = 0.0
        self._shed_lock = threading.Lock()
        self._listeners = None  # a poll object on the listening sockets (any fd number, unlike select)
        self._closer = None

    # -- the board -------------------------------------------------------------------------------------------------

    @property
    def nr_conns(self) -> int:
        return self._nr_conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:  # gthread counts its connections here (main thread): publish the count
        self._nr_conns = value
        if self._on_board:
            self._board.publish(self._slot, value)

    def _join_board(self) -> None:
        if self._slot is not None and not self._on_board:
            self._board.claim(self._slot, os.getpid())
            self._board.publish(self._slot, self._nr_conns)
            self._on_board = True

    def _leave_board(self) -> None:
        """Stopping (or stopped): off the board, so the others neither wait for it nor count it in their share."""
        if self._on_board:
            self._on_board = False
            self._board.release(self._slot)
        self._slot = None

    def run(self):
        # Joins the board once the app is loaded and the loop starts (a worker still importing the app would count
        # as an idle worker the others leave new connections to); leaves it when it stops accepting for good.
        self._closer = _Closer()
        self._listeners = select.poll()
        for listener in self.sockets:
            self._listeners.register(listener, select.POLLIN)
        self._join_board()
        try:
            super().run()
        finally:
            self._leave_board()

    def _other_connections(self) -> list[int]:
        if not self._on_board:
            return []
        now = time.monotonic()
        if now >= self._others_until:
            self._others, self._others_until = self._board.live(but=self._slot), now + LIVE_FOR
        return self._board.connections(self._others)

    # -- accepting -------------------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self.in_flight >= self.cfg.threads

    def _crowded(self) -> bool:
        """Another worker holds fewer connections: new ones should go there (the kernel decides with reuse_port)."""
        if self.cfg.reuse_port:
            return False
        others = self._other_connections()
        return bool(others) and self._nr_conns > min(others)

    def _eligible(self) -> bool:
        return not self._busy() and not self._crowded()

    def _close_unless_eligible(self) -> None:
        """Leave the listener to the other workers while busy or crowded, and say when to look again."""
        if self._accepting and not self._eligible():
            self._look_again_at = time.monotonic() + (self._busy_wait if self._busy() else CROWDED_LOOK_EVERY)
            super().set_accept_enabled(False)

    def _may_accept(self) -> bool:
        if self._eligible():
            return True
        now = time.monotonic()
        if now < self._look_again_at:
            return False
        if self._busy():
            return True  # every worker may be busy (a saturated node): a new connection waits no longer
        # Crowded but idle: take a connection only if one is still waiting, that no worker with fewer took (they
        # may have stopped accepting, or be stuck).
        if self._listeners.poll(0):
            return True
        self._look_again_at = now + CROWDED_LOOK_EVERY
        return False

    def set_accept_enabled(self, enabled):
        if not enabled and not self.alive:
            self._leave_board()  # the graceful shutdown begins (SIGTERM, SIGHUP, max_requests)
        # run() calls this at each turn of its loop while accepting is off (and the connection limit allows it), so
        # the listener comes back as soon as a request finishes or the wait is over.
        super().set_accept_enabled(enabled and self._may_accept())

    def accept(self, listener):
        super().accept(listener)  # may have lost the race for the connection to another worker: nothing accepted
        self._close_unless_eligible()

    def enqueue_req(self, conn):
        # Every way a request reaches the pool (a new connection, a kept-alive or pending one, read-ahead) counts;
        # once every thread is taken, the listener is left to the other workers.
        super().enqueue_req(conn)
        self.in_flight += 1  # after the submit: finish_request runs on this thread, later
        self._close_unless_eligible()

    def finish_request(self, conn, fs):
        self.in_flight -= 1
        if not fs.cancelled() and fs.exception() is None and fs.result() is False:
            # The connection ends here: gthread would close it gracefully on this (the event loop's) thread and
            # block every other connection of the worker until the client's FIN, for up to 2 s. Our FIN goes now;
            # the wait for the client's, on the closer's thread.
            self.nr_conns -= 1
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._closer.close(conn)
            return
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout):
        # Closed for being busy or crowded: look again when the wait is over, not at the loop's one-second tick.
        # (Not while stopping: then the loop only drains the connections it has.)
        if self.alive and not self._accepting and self.nr_conns < self.worker_connections:
            timeout = min(timeout, max(0.001, self._look_again_at - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    # -- one write per response -------------------------------------------------------------------------------------

    def handle_request(self, req, conn):
        # gunicorn writes the response through conn.sock (wsgi.create hands it to its Response). A request that fails
        # after its headers is closed by gunicorn through the wrapper (shutdown sends them first); one that fails
        # before them raises past the flush, with nothing held, and gunicorn writes its error response on the real
        # socket (conn.sock again by then).
        sock = conn.sock
        conn.sock = one = OneWrite(sock)
        try:
            keepalive = super().handle_request(req, conn)
        finally:
            conn.sock = sock
        one.flush()
        return keepalive

    # -- handing back ----------------------------------------------------------------------------------------------

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi

        def balanced(environ, start_response):
            if self._should_shed():
                # gunicorn's Response: "Connection: close" on this (whole) response; the client reconnects.
                start_response.__self__.force_close()
            return app(environ, start_response)

        self.wsgi = balanced

    def _should_shed(self) -> bool:
        """More connections than this worker's share, and none handed back in the last SHED_EVERY (request threads)."""
        others = self._other_connections()
        if not others or time.monotonic() - self._last_shed < SHED_EVERY:
            return False
        share = -(-(self._nr_conns + sum(others)) // (len(others) + 1))  # the total over the workers, rounded up
        if self._nr_conns <= share:
            return False
        with self._shed_lock:  # one hand-back per SHED_EVERY, whichever thread gets here first
            now = time.monotonic()
            if now - self._last_shed < SHED_EVERY:
                return False
            self._last_shed = now
            return True
