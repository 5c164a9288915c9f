"""A real HTTP listener on 127.0.0.1 (a relying party's back-channel logout endpoint) that records POSTs.

It answers ``status`` (200 by default); ``fail(n, status=500)`` makes the next
``n`` requests fail first. ``wait_for(count, timeout)`` polls with a deadline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class Hit:
    path: str
    headers: dict
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)


class Listener:
    def __init__(self, status: int = 200):
        self.status = status
        self.hits: list[Hit] = []        # every request, failed ones included
        self.attempts = 0
        self._fail_left = 0
        self._fail_status = 500
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.attempts += 1
                    owner.hits.append(Hit(self.path, dict(self.headers.items()), body))
                    if owner._fail_left > 0:
                        owner._fail_left -= 1
                        status = owner._fail_status
                    else:
                        status = owner.status
                self.send_response(status)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-listener", daemon=True)

    def url(self, path: str = "/bcl") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail(self, times: int, status: int = 500) -> None:
        with self._lock:
            self._fail_left, self._fail_status = times, status

    def wait_for(self, count: int = 1, timeout: float = 15.0, poll=None) -> list[Hit]:
        """Wait (polling, with a deadline) until ``count`` requests arrived; ``poll()`` runs on each turn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if poll is not None:
                poll()
            with self._lock:
                if len(self.hits) >= count:
                    return list(self.hits)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} request(s) within {timeout}s, got {len(self.hits)}")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
