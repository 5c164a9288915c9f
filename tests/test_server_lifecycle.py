"""The production servers' lifecycle, as a rolling deploy and a crash see it, on both supported servers:
gunicorn with app/gunicorn_conf.py and granian with app/serve.py (``python -m app.serve``).

- SIGTERM to the server's main process (what systemd, Docker and Kubernetes send) while a request is in
  flight: the request is answered in full, then every process exits, with status 0.
- A worker that dies (SIGKILL, an out-of-memory kill) is replaced, and the server keeps answering.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time

import pytest
import requests

from tests.support.procnet import established as _accepted
from tests.support.server import LiveServer

SERVERS = [pytest.param(dict(gunicorn_config="python:app.gunicorn_conf"), id="gunicorn"),
           pytest.param(dict(server="granian"), id="granian")]


def _children(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    status, _, body, _ = _response(sock, b"", head_only=False)
    return status, body


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_finishes_the_request_in_flight_then_exits(kind):
    with LiveServer(workers=1, **kind) as server:
        app = server.run_cli("clients", "create", "--name", "Batch", "--grant-type", "client_credentials", "--json")
        workers = _children(server.pid)
        assert workers, "the server runs its requests in worker processes"
        body = b"grant_type=client_credentials"
        basic = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode()).decode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        try:
            # A request whose body is still arriving: the server has it, and cannot have answered it yet.
            sock.sendall(b"POST /token HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic " + basic.encode()
                         + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
            time.sleep(1.0)
            os.kill(server.pid, signal.SIGTERM)  # the main process only, as an orchestrator does
            time.sleep(1.5)
            assert server.running(), "the server waits for the request in flight before it exits"
            sock.sendall(body[10:])
            status, payload = _read_response(sock)
        finally:
            sock.close()
        assert status == 200, payload
        token = json.loads(payload)
        assert token["token_type"] == "Bearer" and token["access_token"].count(".") == 2
        proc = server._proc
        proc.wait(timeout=30)
        assert proc.returncode == 0, server.log_tail()
        assert not any(_alive(pid) for pid in workers), "no worker outlives the server"


@pytest.mark.parametrize("kind", SERVERS)
def test_a_worker_that_dies_is_replaced(kind):
    with LiveServer(workers=2, **kind) as server:
        app = server.run_cli("clients", "create", "--name", "Batch", "--grant-type", "client_credentials", "--json")
        before = _children(server.pid)
        assert len(before) == 2, before
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: not _alive(victim) and len(_children(server.pid) - {victim}) == 2, 30,
              "a new worker in place of the killed one")
        after = _children(server.pid)
        assert victim not in after and len(after - before) == 1
        for _ in range(6):  # fresh connections: whichever worker takes them, the answer is a token
            r = requests.post(server.url + "/token", data={"grant_type": "client_credentials"},
                              auth=(app["client_id"], app["client_secret"]), timeout=20)
            assert r.status_code == 200, r.text
        assert server.running()


def test_one_worker_per_core_at_least_two_and_the_cap_wins(tmp_path):
    from app.config import available_cores
    from app.gunicorn_conf import default_workers

    assert [default_workers(cores, cap=8) for cores in (1, 2, 4, 16)] == [2, 2, 4, 8]
    assert default_workers(4, cap=1) == 1  # an operator's GUNICORN_MAX_WORKERS=1 is obeyed
    # A container's CPU limit (cgroup v2 cpu.max: quota and period in µs) lowers the count, rounded up.
    affinity = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("50000 100000\n")
    assert available_cores(str(limit)) == 1
    limit.write_text(f"{100000 * affinity + 1} 100000\n")
    assert available_cores(str(limit)) == affinity  # never more than the affinity allows
    limit.write_text("max 100000\n")
    assert available_cores(str(limit)) == affinity
    assert available_cores(str(tmp_path / "absent")) == affinity


def test_connections_that_arrive_together_are_shared_between_the_workers():
    """app/gunicorn_worker.py: a worker with no free thread leaves new connections to the others. Eight connections
    opened at once, before any sends a request (each holds a thread while the worker waits for its request), end
    up two per worker (two threads each), not piled on whichever worker woke first; then each is served."""
    # The fallback for a saturated node (a busy worker takes a connection after 5 ms anyway) is put out of reach,
    # so that a slow scheduler cannot blur what is tested: the rule itself.
    env = {"GUNICORN_PRELOAD": "true", "GUNICORN_ACCEPT_WHEN_BUSY_AFTER": "30"}
    with LiveServer(workers=4, gunicorn_config="python:app.gunicorn_conf", env=env) as server:
        _wait(lambda: len(_children(server.pid)) == 4, 30, "four workers")
        workers = sorted(_children(server.pid))
        time.sleep(1.0)  # preloaded: every worker is in its accept loop by now
        for _ in range(3):  # plain gthread may share them out evenly once by chance, hardly three times
            socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(8)]
            try:
                for sock in socks:
                    sock.settimeout(20)
                    sock.connect(("127.0.0.1", server.port))
                _wait(lambda: sum(_accepted(w, server.port) for w in workers) == 8, 10, "eight connections accepted")
                held = [_accepted(w, server.port) for w in workers]
                assert held == [2, 2, 2, 2], held
                for sock in socks:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert [_read_response(sock)[0] for sock in socks] == [200] * 8
            finally:
                for sock in socks:
                    sock.close()
            _wait(lambda: sum(_accepted(w, server.port) for w in workers) == 0, 10, "the connections closed")


def test_a_worker_holding_more_than_its_share_of_kept_alive_connections_hands_them_back():
    """app/gunicorn_worker.py: kept-alive connections stay where they were accepted, so the spread must last too.
    While one of two workers is stopped, eight clients connect and all land on the other; once it runs again and
    the clients send their requests over and over, the crowded worker answers one now and then with "Connection:
    close" and each new connection goes to the other, until each worker holds four; every request is answered in
    full. (Plain gthread keeps all eight on one worker for good.)"""
    import http.client

    env = {"GUNICORN_PRELOAD": "true"}
    with LiveServer(workers=2, gunicorn_config="python:app.gunicorn_conf", env=env) as server:
        _wait(lambda: len(_children(server.pid)) == 2, 30, "two workers")
        time.sleep(1.0)  # preloaded: both workers are in their accept loops by now
        first, second = sorted(_children(server.pid))

        def held() -> list[int]:
            return [_accepted(first, server.port), _accepted(second, server.port)]

        clients = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=20) for _ in range(8)]
        os.kill(second, signal.SIGSTOP)
        try:
            for client in clients:
                client.connect()  # no request yet: nothing to answer, so nothing handed back meanwhile
            _wait(lambda: held() == [8, 0], 20, "eight connections on the running worker")
        finally:
            os.kill(second, signal.SIGCONT)
        statuses, closed = [], 0
        try:
            deadline = time.monotonic() + 20
            while held() != [4, 4] and time.monotonic() < deadline:
                for client in clients:  # one request at a time: no worker is ever busy, only crowded
                    client.request("GET", "/healthz")  # reconnects by itself after a "Connection: close"
                    response = client.getresponse()
                    response.read()
                    statuses.append(response.status)
                    closed += (response.getheader("Connection") or "").lower() == "close"
            assert held() == [4, 4], held()
            # Four hand-backs, each reconnection taken by the worker with fewer (a stray one is tolerated).
            assert set(statuses) == {200} and 4 <= closed <= 6, (set(statuses), closed)
            for _ in range(5):  # the spread holds: nothing more is handed back
                for client in clients:
                    client.request("GET", "/healthz")
                    response = client.getresponse()
                    response.read()
                    assert response.status == 200 and response.getheader("Connection", "").lower() != "close"
            assert held() == [4, 4], held()
        finally:
            for client in clients:
                client.close()


def test_a_client_slow_to_close_does_not_hold_up_the_worker():
    """A connection that ends ("Connection: close") is closed gracefully: the server sends its FIN and waits up to
    2 s for the client's. Plain gthread waits on its event loop, so one client that keeps its socket open stalls
    every other connection of that worker; app/gunicorn_worker.py waits on a thread of its own."""
    with LiveServer(workers=1, gunicorn_config="python:app.gunicorn_conf") as server:
        lingering = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        try:
            lingering.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert _read_response(lingering)[0] == 200
            assert lingering.recv(1) == b""  # the server's FIN came at once; this client does not answer it
            started = time.monotonic()
            other = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            try:
                other.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _read_response(other)[0] == 200
            finally:
                other.close()
            # Not a speed bound: plain gthread answers only after its 2 s wait for the lingering client.
            assert time.monotonic() - started < 1.5
        finally:
            lingering.close()


def test_the_connection_board_counts_running_workers_only():
    """The board of connection counts (app/gunicorn_worker.py) skips a slot whose worker died, or whose pid now
    belongs to a process that is not one of the master's workers, and gives that slot to the next worker."""
    import subprocess
    import sys

    from app.gunicorn_worker import Board

    board = Board(slots=4)
    first, second, mine = board.reserve(), board.reserve(), board.reserve()
    assert (first, second, mine) == (0, 1, 2)  # reserved before their workers start: not handed out twice
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a child: stands for a worker
    try:
        board.claim(first, worker.pid)
        board.publish(first, 5)
        board.claim(second, 1)  # init: alive, but not a child of this "master": a pid reused after a worker died
        board.publish(second, 7)
        assert board.live(but=mine, master=os.getpid()) == [first]
        assert board.connections([first]) == [5]
        assert board.reserve() == second  # a stale slot is given out again
        assert board.reserve() == 3
        assert board.reserve() is None  # full: that worker runs without balancing
    finally:
        worker.kill()
        worker.wait()
    assert board.live(but=mine, master=os.getpid()) == []
    assert board.reserve() == first  # the dead worker's slot is free again
    board.release(mine)
    assert board.connections([mine]) == [0]


def test_the_served_app_keeps_its_start_up_objects_out_of_the_collectors_way(tmp_path):
    """wsgi.py freezes what start-up built, so a full garbage collection in a worker does not walk it all."""
    import subprocess
    import sys

    from tests.support.server import ROOT

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/idp.sqlite3", "IDP_KEYS_DIR": str(tmp_path / "keys"),
           "IDP_ISSUER": "http://localhost:5000", "SECRET_KEY": "s" * 48}
    out = subprocess.run(
        [sys.executable, "-c", "import gc, wsgi; print(gc.get_freeze_count(), len(gc.get_objects(2)))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    frozen, old = map(int, out.stdout.split()[-2:])
    assert frozen > 50_000 and old < frozen // 100, (frozen, old)


def test_one_write_holds_a_responses_headers_until_its_body():
    """app/gunicorn_worker.py OneWrite, on a real socket pair that keeps each write a message of its own
    (SOCK_SEQPACKET): gunicorn's headers and first body bytes go out in one write; later writes go straight through;
    flush sends headers left alone (a response without a body); a shutdown sends them before the end."""
    from app.gunicorn_worker import OneWrite

    def pending(sock) -> bytes:  # one message: what one write sent
        try:
            return sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""

    server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        one = OneWrite(server)
        one.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        assert pending(client) == b""  # held
        one.sendall(b"he")
        assert pending(client) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe"  # one write, one read
        one.sendall(b"llo")
        assert pending(client) == b"llo"
        one.flush()
        assert pending(client) == b""

        head = OneWrite(server)
        head.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert pending(client) == b""
        head.flush()
        assert pending(client) == b"HTTP/1.1 204 No Content\r\n\r\n"
        head.send(b"x")  # the socket's own methods are not delayed
        assert pending(client) == b"x"

        failed = OneWrite(server)  # a response that fails after its headers: gunicorn shuts the connection down
        failed.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        failed.shutdown(socket.SHUT_WR)
        assert pending(client) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        assert pending(client) == b""  # then the end
        assert client.recv(10) == b""
    finally:
        server.close()
        client.close()


def _response(sock: socket.socket, buffered: bytes, head_only: bool) -> tuple[int, dict, bytes, bytes]:
    """(status, headers, body, bytes already read past it) of one response read from ``sock``."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the headers were complete: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = 0 if head_only else int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length], rest[length:]


def test_responses_of_every_shape_arrive_whole_over_one_kept_alive_connection():
    """The production worker writes each response's headers with its body: JSON, a page, a redirect, a static file
    (sent with sendfile), a HEAD and a 404 follow one another on one connection, each whole and framed right."""
    from pathlib import Path

    css = (Path(__file__).resolve().parent.parent / "app" / "static" / "style.css").read_bytes()
    asks = [("GET", "/.well-known/openid-configuration"), ("HEAD", "/.well-known/openid-configuration"),
            ("GET", "/static/style.css"), ("GET", "/account/apps"), ("GET", "/login"), ("GET", "/no-such-page"),
            ("GET", "/healthz")]
    with LiveServer(workers=2, gunicorn_config="python:app.gunicorn_conf") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            got, buffered = [], b""
            for method, path in asks:
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                status, headers, body, buffered = _response(sock, buffered, head_only=method == "HEAD")
                got.append((method, path, status, headers, body))
            assert buffered == b""
    by = {(m, p): (s, h, b) for m, p, s, h, b in got}
    status, headers, body = by[("GET", "/.well-known/openid-configuration")]
    assert status == 200 and json.loads(body)["issuer"] == server.issuer
    status, headers, body = by[("HEAD", "/.well-known/openid-configuration")]
    assert status == 200 and body == b"" and int(headers["content-length"]) > 100
    status, headers, body = by[("GET", "/static/style.css")]
    assert status == 200 and body == css
    status, headers, body = by[("GET", "/account/apps")]
    assert status in (302, 303) and headers["location"]
    status, headers, body = by[("GET", "/login")]
    assert status == 200 and b"<form" in body
    assert by[("GET", "/no-such-page")][0] == 404
    assert by[("GET", "/healthz")][0] == 200
