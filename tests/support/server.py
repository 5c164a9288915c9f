"""The real server for black-box tests: migrated database, key ring, gunicorn on a free localhost port.

    with LiveServer() as server:                # or the ``live_server`` fixture factory
        client = server.run_cli("clients", "create", "--name", "App", ..., "--json")
        requests.get(server.url + "/.well-known/openid-configuration")

Everything runs as separate processes with the same environment (``DATABASE_URL``,
``IDP_KEYS_DIR``, ``IDP_ISSUER=http://localhost:PORT``, a random ``SECRET_KEY``),
exactly as an operator would: ``flask --app wsgi db upgrade`` first, then
``gunicorn -w 2 -b 127.0.0.1:PORT wsgi:app``. The issuer is http://localhost, so the
server runs in development mode.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_HERE_BIN = Path(sys.executable).parent
VENV_BIN = _HERE_BIN if (_HERE_BIN / "gunicorn").exists() else ROOT / ".venv" / "bin"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _gunicorn_extra_args() -> tuple[str, ...]:
    """Newer gunicorn opens a control socket at a fixed path in $HOME; concurrent test servers must not share it."""
    help_text = subprocess.run([str(VENV_BIN / "gunicorn"), "--help"], capture_output=True, text=True).stdout
    return ("--no-control-socket",) if "--no-control-socket" in help_text else ()


class ServerError(RuntimeError):
    """The server (or one of its commands) did not start or failed."""


class LiveServer:
    """One running instance of the provider; a context manager that cleans up after itself."""

    def __init__(self, *, database_url: str | None = None, port: int | None = None, workers: int = 2,
                 env: dict[str, str] | None = None, startup_timeout: float = 30.0):
        self.port = port or free_port()
        self.url = f"http://localhost:{self.port}"
        self.workers = workers
        self.startup_timeout = startup_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="idp-live-"))
        self.keys_dir = self._tmp / "keys"
        self.keys_dir.mkdir()
        self.database_url = database_url or "sqlite:///" + str(self._tmp / "idp.sqlite3")
        self.log_path = self._tmp / "gunicorn.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "IDP_KEYS_DIR": str(self.keys_dir),
            "IDP_ISSUER": self.url,
            "SECRET_KEY": secrets.token_urlsafe(48),
            "FLASK_APP": "wsgi",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> "LiveServer":
        try:
            self._flask("db", "upgrade")
            self._log = open(self.log_path, "wb")
            self._proc = subprocess.Popen(
                [str(VENV_BIN / "gunicorn"), "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
                 "--access-logfile", "-", "--error-logfile", "-", *_gunicorn_extra_args(), "wsgi:app"],
                cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: object = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"gunicorn exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/.well-known/openid-configuration", timeout=2) as resp:
                    if resp.status == 200 and json.load(resp).get("issuer") == self.url:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise ServerError(f"server did not answer within {self.startup_timeout}s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # gunicorn runs in its own session (process group): end the master and its workers, nothing else.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands ---------------------------------------------------------------------------------------------------

    def _flask(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(VENV_BIN / "flask"), "--app", "wsgi", *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ServerError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run_cli(self, *args: str):
        """Run ``flask --app wsgi ARGS`` against this server's database and keys.

        Returns the parsed JSON output when ``--json`` is among the arguments, else the stdout text.
        Raises ServerError (with the output) when the command fails.
        """
        out = self._flask(*args).stdout
        if "--json" in args:
            return json.loads(out.strip().splitlines()[-1])
        return out

    def log_tail(self, lines: int = 60) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def live_server():
    """Fixture factory: ``server = live_server(**kwargs)`` starts one; every server is stopped after the test."""
    started: list[LiveServer] = []

    def factory(**kwargs) -> LiveServer:
        server = LiveServer(**kwargs).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
