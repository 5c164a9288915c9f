"""The real server for black-box tests: migrated database, key ring, gunicorn on a free localhost port.

    with LiveServer() as server:                # or the ``live_server`` fixture factory
        client = server.run_cli("clients", "create", "--name", "App", ..., "--json")
        requests.get(server.url + "/.well-known/openid-configuration")

Everything runs as separate processes with the same environment (``DATABASE_URL``,
``IDP_KEYS_DIR``, ``IDP_ISSUER=http://localhost:PORT``, a random ``SECRET_KEY``),
exactly as an operator would: ``flask --app wsgi db upgrade`` first, then
``gunicorn -w 2 -b 127.0.0.1:PORT wsgi:app``. The issuer is http://localhost, so the
server runs in development mode.

Several nodes of one deployment (tests/test_two_nodes.py) share what an operator would share:

    shared = dict(database_url=url, keys_dir=keys, secret_key=secret, issuer=f"http://localhost:{port_a}",
                  env={"REDIS_URL": redis}, gunicorn_config="python:app.gunicorn_conf")
    a = LiveServer(port=port_a, **shared).start()
    b = LiveServer(migrate=False, **shared).start()   # the migration ran once, from one place
    a.kill()                                          # SIGKILL, as a crashed machine
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
                 env: dict[str, str] | None = None, startup_timeout: float = 30.0,
                 keys_dir: str | os.PathLike | None = None, secret_key: str | None = None,
                 issuer: str | None = None, gunicorn_config: str | None = None, migrate: bool = True,
                 server: str = "gunicorn"):
        """Every keyword is optional; the defaults give one self-contained server.

        ``keys_dir``, ``secret_key``, ``issuer`` and ``database_url`` let several servers form one deployment
        (a shared ``keys_dir`` is left in place by ``stop``). ``url`` is always this node's own address;
        ``issuer`` (default: ``url``) is the public issuer string, which nodes behind one load balancer share.
        ``gunicorn_config`` (e.g. ``"python:app.gunicorn_conf"``) is passed as ``-c``; the test's ``-w``/``-b``
        and log flags still win. ``migrate=False`` skips ``db upgrade`` (another node ran it).
        ``server="granian"`` serves with ``python -m app.serve`` (its production defaults) instead of gunicorn.
        """
        self.port = port or free_port()
        self.url = f"http://localhost:{self.port}"
        self.issuer = (issuer or self.url).rstrip("/")
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.gunicorn_config = gunicorn_config
        self.server = server
        self.migrate = migrate
        self._tmp = Path(tempfile.mkdtemp(prefix="idp-live-"))
        if keys_dir is None:
            self.keys_dir = self._tmp / "keys"
            self.keys_dir.mkdir()
        else:
            self.keys_dir = Path(keys_dir)
        self.database_url = database_url or "sqlite:///" + str(self._tmp / "idp.sqlite3")
        self.log_path = self._tmp / "gunicorn.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "IDP_KEYS_DIR": str(self.keys_dir),
            "IDP_ISSUER": self.issuer,
            "SECRET_KEY": secret_key or secrets.token_urlsafe(48),
            "FLASK_APP": "wsgi",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> "LiveServer":
        try:
            if self.migrate:
                self._flask("db", "upgrade")
            self._log = open(self.log_path, "ab")
            env = self.env
            if self.server == "granian":
                cmd = [str(VENV_BIN / "python"), "-m", "app.serve"]
                env = {**env, "GRANIAN_HOST": "127.0.0.1", "GRANIAN_PORT": str(self.port),
                       "GRANIAN_WORKERS": str(self.workers)}
            else:
                config = ["-c", self.gunicorn_config] if self.gunicorn_config else []
                cmd = [str(VENV_BIN / "gunicorn"), *config, "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
                       "--access-logfile", "-", "--error-logfile", "-", *_gunicorn_extra_args(), "wsgi:app"]
            self._proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
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
                raise ServerError(f"{self.server} exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/.well-known/openid-configuration", timeout=2) as resp:
                    if resp.status == 200 and json.load(resp).get("issuer") == self.issuer:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise ServerError(f"server did not answer within {self.startup_timeout}s ({last}):\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The gunicorn master's pid (its workers share its process group)."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the master and every worker at once (a crashed machine: no graceful shutdown, no cleanup).

        The temporary folder and the log stay until ``stop``; ``start`` may be called again afterwards.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

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
            try:
                return json.loads(out.strip().splitlines()[-1])  # one JSON line (after any other output)
            except ValueError:
                return json.loads(out)  # a pretty-printed document (e.g. ``keys list --json``)
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
