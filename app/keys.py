"""The provider's signing key ring: RFC 7517 JWK sets with staged rotation.

Layout of ``IDP_KEYS_DIR``::

    keyring.json   the keys and their state; no secrets (mode 0644)
    <kid>.json     one private JWK (RFC 7517) per key (mode 0600)

Each algorithm (RS256, ES256) has one ``current`` key (signs), one ``next``
key (published, not signing yet) and any number of ``retired`` keys
(published until ``publish_until``, then removed by ``retire``). ``rotate``
promotes next -> current -> retired, node-oidc-provider's recipe: relying
parties that cache our JWKS already know a key before it signs, and can still
verify what a key signed after it stops signing. Kids are RFC 7638 thumbprints.

Several processes (gunicorn workers, the ``flask keys`` CLI) share the
directory: writers hold an exclusive flock on it, readers a shared one, files
are replaced atomically, and each process re-reads keyring.json when its stat
changes (checked at most once per ``stat_interval`` seconds).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager, suppress
from datetime import datetime, timezone

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

log = logging.getLogger(__name__)

ALGS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}  # alg -> (kty, crv)
STATES = ("current", "next", "retired")
RING_FILE = "keyring.json"
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # also makes "<kid>.json" a safe file name


class KeyRingError(RuntimeError):
    """The key ring is missing, inconsistent, or the operation is not allowed."""


def _generate(alg: str):
    params = {"alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True, auto_kid=True)
    return ECKey.generate_key("P-256", parameters=params, private=True, auto_kid=True)


def _check_alg(alg: str) -> str:
    if alg not in ALGS:
        raise KeyRingError(f"unsupported algorithm {alg!r} (expected one of {', '.join(ALGS)})")
    return alg


class KeyRing:
    """The keys in one directory; safe to share between the threads of a process."""

    def __init__(self, directory: str | os.PathLike, *, stat_interval: float = 1.0):
        self.directory = os.fspath(directory)
        self.stat_interval = stat_interval
        self._lock = threading.RLock()
        self._entries: list[dict] = []   # keyring.json "keys", in file order
        self._keys: dict = {}            # kid -> private joserfc key
        self._sig = None                 # (inode, mtime_ns, size) of the keyring.json we loaded
        self._next_stat = 0.0
        self._dirty = False
        self._published_cache = None     # (jwks bytes, KeySet, valid until epoch)

    # -- files ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @contextmanager
    def _flock(self, exclusive: bool):
        # Lock the directory itself: keyring.json is replaced (new inode) on every write.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes, mode: int) -> None:
        # The mode is set at creation, so private material is never readable by others,
        # even for an instant. The temp name ends in .json so the .gitignore covers a leftover.
        tmp = self._path(f".{secrets.token_hex(8)}.tmp.json")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(name))
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # make the rename durable
        finally:
            os.close(dfd)

    def _load(self) -> None:
        """Read keyring.json and every private key it lists (caller holds a flock)."""
        try:
            with open(self._path(RING_FILE), "rb") as f:
                st = os.fstat(f.fileno())
                entries = json.load(f)["keys"]
        except FileNotFoundError:
            entries, st = [], None
        seen, slots = set(), set()
        for e in entries:
            kid, alg, state = e.get("kid"), e.get("alg"), e.get("state")
            if not isinstance(kid, str) or not _KID.match(kid) or kid in seen:
                raise KeyRingError(f"{RING_FILE}: invalid or duplicate kid {kid!r}")
            if alg not in ALGS or state not in STATES:
                raise KeyRingError(f"{RING_FILE}: key {kid} has alg {alg!r}, state {state!r}")
            if state != "retired" and (alg, state) in slots:
                raise KeyRingError(f"{RING_FILE}: more than one {state} {alg} key")
            seen.add(kid)
            slots.add((alg, state))
        keys = {e["kid"]: self._read_key(e) for e in entries}
        # Assign only once everything parsed: a failed load leaves the previous state intact.
        self._entries, self._keys = entries, keys
        self._sig = st and (st.st_ino, st.st_mtime_ns, st.st_size)
        self._published_cache = None

    def _read_key(self, e: dict):
        with open(self._path(e["kid"] + ".json"), "rb") as f:
            jwk = json.load(f)
        kty, crv = ALGS[e["alg"]]
        if (jwk.get("kty"), jwk.get("crv"), jwk.get("kid"), jwk.get("alg")) != (kty, crv, e["kid"], e["alg"]) \
                or "d" not in jwk:
            raise KeyRingError(f"{e['kid']}.json is not a private {e['alg']} JWK with that kid")
        return import_key(jwk)

    def _save(self) -> None:
        body = json.dumps({"keys": self._entries}, indent=2) + "\n"
        self._write(RING_FILE, body.encode(), 0o644)
        st = os.stat(self._path(RING_FILE))
        self._sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        self._published_cache = None

    @contextmanager
    def _writing(self):
        """Read-modify-write under the exclusive lock, starting from what is on disk."""
        with self._lock:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with self._flock(exclusive=True):
                self._load()
                self._dirty = False
                try:
                    yield
                except BaseException:
                    self._load()  # drop half-done in-memory changes
                    raise
                # Skip unchanged writes: a read-only mounted ring still starts, and other
                # processes are not made to reload for nothing.
                if self._dirty:
                    self._save()

    def _add(self, alg: str, state: str, now: int) -> dict:
        key = _generate(alg)
        # Private file first: keyring.json never names a key whose file is missing.
        self._write(key.kid + ".json", json.dumps(key.as_dict(private=True)).encode(), 0o600)
        entry = {"kid": key.kid, "alg": alg, "state": state, "created_at": now,
                 "retired_at": None, "publish_until": None}
        self._entries.append(entry)
        self._keys[key.kid] = key
        self._dirty = True
        return entry

    def _one(self, alg: str, state: str) -> dict | None:
        return next((e for e in self._entries if e["alg"] == alg and e["state"] == state), None)

    # -- public API -----------------------------------------------------------

    def ensure(self, now: int | None = None) -> None:
        """Create the directory and, per algorithm, any missing current or next key. Idempotent."""
        now = int(time.time()) if now is None else now
        with self._writing():
            for alg in ALGS:
                for state in ("current", "next"):
                    if self._one(alg, state) is None:
                        self._add(alg, state, now)

    def reload_if_changed(self) -> bool:
        """Pick up changes made by other processes; stats keyring.json at most once per interval."""
        t = time.monotonic()
        if t < self._next_stat:
            return False
        with self._lock:
            if t < self._next_stat:
                return False
            self._next_stat = t + self.stat_interval
            try:
                st = os.stat(self._path(RING_FILE))
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                sig = None
            if sig == self._sig:
                return False
            try:
                with self._flock(exclusive=False):
                    self._load()
            except Exception:  # noqa: BLE001 - a bad edit must not stop token issuance
                if not self._entries:
                    raise
                log.exception("key ring %s unreadable; keeping the keys loaded before", self.directory)
                return False
            return True

    def signing_key(self, alg: str):
        """The private joserfc key of the current ``alg`` key; ``.kid`` and ``.alg`` are set."""
        _check_alg(alg)
        self.reload_if_changed()
        with self._lock:
            e = self._one(alg, "current")
            if e is None:
                raise KeyRingError(f"no current {alg} key in {self.directory} (KeyRing.ensure() creates one)")
            return self._keys[e["kid"]]

    def _published(self):
        now = time.time()
        cache = self._published_cache
        if cache is None or now >= cache[2]:
            # Current keys first, for clients that naively take the first key of the set.
            order = {"current": 0, "next": 1, "retired": 2}
            jwks, valid_until = [], math.inf
            for e in sorted(self._entries, key=lambda e: order[e["state"]]):
                if e["state"] == "retired":
                    if e.get("publish_until") is None or e["publish_until"] <= now:
                        continue
                    valid_until = min(valid_until, e["publish_until"])  # rebuild when it lapses
                jwk = self._keys[e["kid"]].as_dict(private=False)
                if PRIVATE_MEMBERS & jwk.keys():
                    raise KeyRingError(f"public form of {e['kid']} holds private members")
                jwk.setdefault("use", "sig")
                jwks.append(jwk)
            doc = {"keys": jwks}
            cache = (json.dumps(doc, separators=(",", ":")).encode(), KeySet.import_key_set(doc), valid_until)
            self._published_cache = cache
        return cache

    def public_jwks_json(self) -> bytes:
        """The JWKS document, serialised once per change of the ring."""
        self.reload_if_changed()
        with self._lock:
            return self._published()[0]

    def public_jwks(self) -> dict:
        """A fresh copy of the published JWK set: public members of next, current and unexpired retired keys."""
        return json.loads(self.public_jwks_json())

    def verification_keys(self) -> KeySet:
        """The published public keys as a joserfc KeySet (to verify our own tokens)."""
        self.reload_if_changed()
        with self._lock:
            return self._published()[1]

    def rotate(self, alg: str | None = None, *, retire_after: int, now: int | None = None) -> list[dict]:
        """current -> retired (published ``retire_after`` s more), next -> current, new next."""
        if retire_after < 0:
            raise ValueError("retire_after must be >= 0")
        algs = [_check_alg(alg)] if alg else list(ALGS)
        now = int(time.time()) if now is None else now
        done = []
        with self._writing():
            for a in algs:
                cur, nxt = self._one(a, "current"), self._one(a, "next")
                if cur is None or nxt is None:
                    raise KeyRingError(f"no current and next {a} keys to rotate (KeyRing.ensure() creates them)")
                cur.update(state="retired", retired_at=now, publish_until=now + retire_after)
                nxt["state"] = "current"
                new = self._add(a, "next", now)
                done.append({"alg": a, "retired": cur["kid"], "current": nxt["kid"], "next": new["kid"]})
        return done

    def retire(self, kid: str | None = None, now: int | None = None) -> list[str]:
        """Remove retired keys past publish_until, or the retired key ``kid`` at once; returns removed kids."""
        now = int(time.time()) if now is None else now
        with self._writing():
            if kid is not None:
                e = next((e for e in self._entries if e["kid"] == kid), None)
                if e is None:
                    raise KeyRingError(f"no key with kid {kid!r}")
                if e["state"] != "retired":
                    raise KeyRingError(f"key {kid} is {e['state']}; only retired keys can be removed (rotate first)")
                gone = [kid]
            else:
                gone = [e["kid"] for e in self._entries
                        if e["state"] == "retired" and (e.get("publish_until") or 0) <= now]
            if gone:
                self._entries = [e for e in self._entries if e["kid"] not in gone]
                for k in gone:
                    self._keys.pop(k, None)
                self._dirty = True
        # keyring.json no longer names them, so no reader will look for these files.
        for k in gone:
            with suppress(FileNotFoundError):
                os.unlink(self._path(k + ".json"))
        return gone

    def list(self) -> list[dict]:
        """kid, alg, state, created_at and publish_until of every key, in file order."""
        self.reload_if_changed()
        with self._lock:
            return [{k: e.get(k) for k in ("kid", "alg", "state", "created_at", "publish_until")}
                    for e in self._entries]


def init_app(app: Flask) -> KeyRing:
    ring = KeyRing(app.config["IDP_KEYS_DIR"])
    ring.ensure()
    app.extensions["idp_keys"] = ring
    return ring


def keyring() -> KeyRing:
    return current_app.extensions["idp_keys"]


# -- flask keys … ---------------------------------------------------------------

keys_cli = AppGroup("keys", help="Manage the signing key ring (staged rotation: next -> current -> retired).")


def _ts(epoch: int | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(as_json: bool) -> None:
    """Show every key with its state."""
    rows = keyring().list()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'KID':<45} {'ALG':<6} {'STATE':<8} {'CREATED':<21} PUBLISHED UNTIL")
    for r in rows:
        until = _ts(r["publish_until"]) if r["state"] == "retired" else "(published)"
        click.echo(f"{r['kid']:<45} {r['alg']:<6} {r['state']:<8} {_ts(r['created_at']):<21} {until}")


@keys_cli.command("rotate")
@click.option("--alg", type=click.Choice(list(ALGS)), help="Rotate only this algorithm (default: all).")
def rotate_keys(alg: str | None) -> None:
    """Retire the current key, make the next key current, create a new next key."""
    cfg = current_app.config
    # A retired key stays published until every token it signed has expired, plus clock-skew margin.
    retire_after = max(int(cfg.get("IDP_ID_TOKEN_TTL", 3600)), int(cfg.get("IDP_ACCESS_TOKEN_TTL", 600))) + 300
    try:
        done = keyring().rotate(alg, retire_after=retire_after)
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from exc
    for d in done:
        click.echo(f"{d['alg']}: current {d['current']}, next {d['next']}, "
                   f"retired {d['retired']} (published {retire_after} s more)")


@keys_cli.command("retire")
@click.option("--kid", help="Remove this retired key now, even if still published.")
def retire_keys(kid: str | None) -> None:
    """Remove retired keys whose publication period has ended."""
    try:
        gone = keyring().retire(kid)
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(f"removed {k}" for k in gone) if gone else "nothing to remove")
