"""The provider's signing key ring: RFC 7517 JWK sets with staged rotation.

Each algorithm (RS256, ES256) has one ``current`` key (signs), one ``next``
key (published, not signing yet) and any number of ``retired`` keys
(published until ``publish_until``, then removed by ``retire``). ``rotate``
promotes next -> current -> retired, node-oidc-provider's recipe: relying
parties that cache our JWKS already know a key before it signs, and can still
verify what a key signed after it stops signing. Kids are RFC 7638 thumbprints.

``BaseKeyRing`` is that state machine, written once: the states and their
rules, the published JWKS and its cache, and picking up other processes'
changes. Subclasses only store it:

- ``KeyRing`` (``IDP_KEYS_STORE=files``, the default): a directory,
  ``IDP_KEYS_DIR``, local or on a volume shared by every node::

      keyring.json   the keys and their state; no secrets (mode 0644)
      <kid>.json     one private key per file (mode 0600): {"kid", "alg", "encrypted"},
                     or in development mode without IDP_KEY_ENCRYPTION_KEY the
                     private JWK (RFC 7517) itself

  Several processes (gunicorn workers, the ``flask keys`` CLI) share the
  directory: writers hold an exclusive flock on it, readers a shared one, files
  are replaced atomically, and each process re-reads keyring.json when its stat
  changes (checked at most once per ``stat_interval`` seconds). With a key set,
  ``ensure`` (at start) re-writes plaintext key files encrypted.

- ``DatabaseKeyRing`` (``IDP_KEYS_STORE=database``, in ``app/keys_db.py``): a
  table shared by every node.

Both stores encrypt private keys at rest the same way (``KeyCipher``): AES-256-GCM
under ``IDP_KEY_ENCRYPTION_KEY`` (required outside development mode), a fresh
nonce per key, its kid and alg as associated data.
"""

from __future__ import annotations

import base64
import binascii
import copy
import fcntl
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone

import click
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask, current_app
from flask.cli import AppGroup
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

log = logging.getLogger(__name__)

ALGS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}  # alg -> (kty, crv)
STATES = ("current", "next", "retired")
RING_FILE = "keyring.json"
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # also makes "<kid>.json" a safe file name
ENTRY_FIELDS = ("kid", "alg", "state", "created_at", "retired_at", "publish_until")


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


def validate_entries(entries: list[dict], source: str) -> None:
    """Refuse bad kids, unknown algs or states, and two current (or next) keys of one alg."""
    seen, slots = set(), set()
    for e in entries:
        kid, alg, state = e.get("kid"), e.get("alg"), e.get("state")
        if not isinstance(kid, str) or not _KID.match(kid) or kid in seen:
            raise KeyRingError(f"{source}: invalid or duplicate kid {kid!r}")
        if alg not in ALGS or state not in STATES:
            raise KeyRingError(f"{source}: key {kid} has alg {alg!r}, state {state!r}")
        if state != "retired" and (alg, state) in slots:
            raise KeyRingError(f"{source}: more than one {state} {alg} key")
        seen.add(kid)
        slots.add((alg, state))


def import_private_jwk(entry: dict, jwk, source: str):
    """The joserfc key of ``jwk`` if it is the private ``entry['alg']`` JWK with ``entry['kid']``."""
    kty, crv = ALGS[entry["alg"]]
    if not isinstance(jwk, dict) or "d" not in jwk or \
            (jwk.get("kty"), jwk.get("crv"), jwk.get("kid"), jwk.get("alg")) != (kty, crv, entry["kid"], entry["alg"]):
        raise KeyRingError(f"{source} is not a private {entry['alg']} JWK with that kid")
    return import_key(jwk)


# -- private keys encrypted at rest (both stores) -------------------------------

CIPHER_PREFIX = "v1."  # "v1." + base64url(nonce || ciphertext || tag)
NEW_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _decode_encryption_key(raw: str, name: str) -> bytes:
    from .config import ConfigError

    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{name} must be the base64url encoding of 32 random bytes ({NEW_KEY_HINT})")
    return key


def configured_encryption_key(cfg) -> bytes | None:
    """The 32 bytes IDP_KEY_ENCRYPTION_KEY holds (base64url), None if unset; ConfigError if malformed."""
    raw = (cfg.get("IDP_KEY_ENCRYPTION_KEY") or "").strip()
    return _decode_encryption_key(raw, "IDP_KEY_ENCRYPTION_KEY") if raw else None


def configured_fallback_keys(cfg) -> list[bytes]:
    """The keys IDP_KEY_ENCRYPTION_KEY_FALLBACKS lists (comma-separated base64url): they decrypt, never encrypt."""
    from .config import ConfigError

    raws = [r.strip() for r in (cfg.get("IDP_KEY_ENCRYPTION_KEY_FALLBACKS") or "").split(",") if r.strip()]
    if raws and not (cfg.get("IDP_KEY_ENCRYPTION_KEY") or "").strip():
        raise ConfigError("IDP_KEY_ENCRYPTION_KEY_FALLBACKS needs IDP_KEY_ENCRYPTION_KEY (the key that encrypts)")
    return [_decode_encryption_key(r, "each of IDP_KEY_ENCRYPTION_KEY_FALLBACKS") for r in raws]


class KeyCipher:
    """AES-256-GCM for private JWKs: a fresh 96-bit nonce each time, the kid and alg as associated data
    (a ciphertext moved to another key's place does not decrypt).

    ``key`` encrypts and decrypts; each of ``fallbacks`` only decrypts (a key being replaced: ``rekey`` re-writes
    what it encrypted under ``key``)."""

    def __init__(self, key: bytes, fallbacks: Sequence[bytes] = ()):
        if any(len(k) != 32 for k in (key, *fallbacks)):
            raise ValueError("the key encryption key must be 32 bytes (AES-256)")
        self._aes = AESGCM(key)
        self._fallbacks = [AESGCM(k) for k in fallbacks]
        self.opened_by_fallback: set[str] = set()  # kids decrypted only by a fallback key (``rekey`` clears it)

    @staticmethod
    def _aad(entry: dict) -> bytes:
        return f"signing_keys:{entry['kid']}:{entry['alg']}".encode()

    def encrypt(self, entry: dict, jwk: dict) -> str:
        nonce = os.urandom(12)
        ct = self._aes.encrypt(nonce, json.dumps(jwk).encode(), self._aad(entry))
        return CIPHER_PREFIX + base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")

    def decrypt(self, entry: dict, text, source: str):
        """The joserfc key ``text`` encrypts; KeyRingError naming ``source`` if it cannot be decrypted."""
        if not isinstance(text, str) or not text.startswith(CIPHER_PREFIX):
            raise KeyRingError(f"{source} is not encrypted in a known format")
        plain = self._open(entry, text, [self._aes])
        if plain is None and self._fallbacks:
            plain = self._open(entry, text, self._fallbacks)
            if plain is not None:
                self.opened_by_fallback.add(entry["kid"])
        if plain is None:
            raise KeyRingError(f"cannot decrypt {source}: IDP_KEY_ENCRYPTION_KEY is not the key it was "
                               "encrypted with (or it was altered)")
        return import_private_jwk(entry, json.loads(plain), source)

    def warn_if_fallback_used(self) -> None:
        """At start: say so if some keys are still encrypted under a former key (``flask keys rekey`` is due)."""
        if self.opened_by_fallback:
            log.warning("%d signing keys are encrypted under a key of IDP_KEY_ENCRYPTION_KEY_FALLBACKS, not under "
                        "IDP_KEY_ENCRYPTION_KEY: run `flask keys rekey` before removing the fallback",
                        len(self.opened_by_fallback))

    def is_current(self, entry: dict, text) -> bool:
        """Whether ``text`` is encrypted under ``key`` itself (not a fallback, not plaintext)."""
        return (isinstance(text, str) and text.startswith(CIPHER_PREFIX)
                and self._open(entry, text, [self._aes]) is not None)

    def _open(self, entry: dict, text: str, ciphers: list) -> bytes | None:
        blob = text[len(CIPHER_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except (ValueError, binascii.Error):
            return None
        for aes in ciphers:
            try:
                return aes.decrypt(raw[:12], raw[12:], self._aad(entry))
            except (InvalidTag, ValueError):
                continue
        return None


class BaseKeyRing:
    """Staged rotation over some storage; safe to share between the threads of a process.

    A subclass stores the ring: ``_peek_version`` (cheap: has anything changed?),
    ``_fetch`` (every entry and private JWK, and their version), ``_storing``
    (exclusive read-modify-write: lock, transaction), ``_persist`` (write what
    changed), and optionally ``_key_created`` / ``_removed``.
    """

    _cipher: KeyCipher | None = None  # how private keys are encrypted at rest (subclasses set it)

    def __init__(self, *, refresh_interval: float, clock=time.monotonic):
        self.refresh_interval = refresh_interval
        self._clock = clock              # monotonic seconds; tests inject one
        self._lock = threading.RLock()
        self._entries: list[dict] = []   # ENTRY_FIELDS of each key, in storage order
        self._keys: dict = {}            # kid -> private joserfc key
        self._version = None             # version marker of what we loaded
        self._next_check = 0.0
        self._dirty = False
        self._published_cache = None     # (jwks bytes, KeySet, valid until epoch)

    # -- storage (subclasses) ---------------------------------------------------

    def _where(self) -> str:
        """Where the ring lives, for messages."""
        raise NotImplementedError

    def _peek_version(self):
        """A cheap marker that changes whenever the stored ring changes (None: nothing stored)."""
        raise NotImplementedError

    def _fetch(self) -> tuple[list[dict], dict, object]:
        """Every entry (validated), kid -> private joserfc key, and the version they belong to."""
        raise NotImplementedError

    @contextmanager
    def _reading(self):
        """Held while ``_fetch`` runs outside a write (e.g. a shared lock)."""
        yield

    @contextmanager
    def _storing(self):
        """Exclusive access for a read-modify-write; ``_fetch`` and ``_persist`` run inside it."""
        raise NotImplementedError

    def _persist(self, before: list[dict]) -> None:
        """Store ``self._entries`` (and the keys of new entries); ``before`` is what was loaded."""
        raise NotImplementedError

    def _key_created(self, key) -> None:
        """A new private key exists (before any entry names it)."""

    def _removed(self, kids: list[str]) -> None:
        """Keys are gone from the stored ring (called after the write, outside the lock)."""

    def _upgrade(self) -> None:
        """Re-write stored keys kept in an older form (run by ``ensure``, inside the write)."""

    def _rekey(self) -> list[str]:
        """Re-write every private key not encrypted under the current encryption key; their kids (inside the write)."""
        raise NotImplementedError

    # -- the state machine ------------------------------------------------------

    def _load(self) -> None:
        entries, keys, version = self._fetch()
        # Assign only once everything parsed: a failed load leaves the previous state intact.
        self._entries, self._keys, self._version = entries, keys, version
        self._published_cache = None

    @contextmanager
    def _writing(self):
        """Read-modify-write under the storage's exclusive lock, starting from what is stored."""
        with self._lock:
            with self._storing():
                self._load()
                before, keys = copy.deepcopy(self._entries), dict(self._keys)
                self._dirty = False
                try:
                    yield
                    # Skip unchanged writes: a read-only ring still starts, and other
                    # processes are not made to reload for nothing.
                    if self._dirty:
                        self._persist(before)
                except BaseException:
                    # Drop half-done in-memory changes: nothing was stored.
                    self._entries, self._keys, self._version = before, keys, None
                    self._published_cache = None
                    raise
                self._published_cache = None

    def _add(self, alg: str, state: str, now: int) -> dict:
        key = _generate(alg)
        self._key_created(key)
        entry = {"kid": key.kid, "alg": alg, "state": state, "created_at": now,
                 "retired_at": None, "publish_until": None}
        self._entries.append(entry)
        self._keys[key.kid] = key
        self._dirty = True
        return entry

    def _one(self, alg: str, state: str) -> dict | None:
        return next((e for e in self._entries if e["alg"] == alg and e["state"] == state), None)

    def _snapshot(self) -> tuple[list[dict], dict]:
        """A copy of the entries and the private keys (to copy a ring elsewhere)."""
        self.reload_if_changed()
        with self._lock:
            return copy.deepcopy(self._entries), dict(self._keys)

    # -- public API -----------------------------------------------------------

    def ensure(self, now: int | None = None) -> None:
        """Create, per algorithm, any missing current or next key. Idempotent."""
        now = int(time.time()) if now is None else now
        with self._writing():
            self._upgrade()
            for alg in ALGS:
                for state in ("current", "next"):
                    if self._one(alg, state) is None:
                        self._add(alg, state, now)

    def rekey(self) -> list[str]:
        """Encrypt every private key under IDP_KEY_ENCRYPTION_KEY, after a change of that key (the old one listed in
        IDP_KEY_ENCRYPTION_KEY_FALLBACKS meanwhile); the kids re-written. Idempotent; the keys themselves stay."""
        with self._writing():
            done = self._rekey()
        if self._cipher is not None:
            self._cipher.opened_by_fallback.clear()
        return done

    def reload_if_changed(self) -> bool:
        """Pick up changes made by other processes; checks the version at most once per interval."""
        t = self._clock()
        if t < self._next_check:
            return False
        with self._lock:
            if t < self._next_check:
                return False
            self._next_check = t + self.refresh_interval
            try:
                if self._peek_version() == self._version:
                    return False
                with self._reading():
                    self._load()
            except Exception:  # noqa: BLE001 - a bad edit or a lost connection must not stop token issuance
                if not self._entries:
                    raise
                log.exception("key ring in %s unreadable; keeping the keys loaded before", self._where())
                return False
            return True

    def signing_key(self, alg: str):
        """The private joserfc key of the current ``alg`` key; ``.kid`` and ``.alg`` are set."""
        _check_alg(alg)
        self.reload_if_changed()
        with self._lock:
            e = self._one(alg, "current")
            if e is None:
                raise KeyRingError(f"no current {alg} key in {self._where()} (KeyRing.ensure() creates one)")
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
        if gone:
            self._removed(gone)
        return gone

    def list(self) -> list[dict]:
        """kid, alg, state, created_at and publish_until of every key, in storage order."""
        self.reload_if_changed()
        with self._lock:
            return [{k: e.get(k) for k in ("kid", "alg", "state", "created_at", "publish_until")}
                    for e in self._entries]


class KeyRing(BaseKeyRing):
    """The keys in one directory (``IDP_KEYS_STORE=files``).

    With ``encryption_key`` (32 bytes) each ``<kid>.json`` is ``{"kid", "alg", "encrypted"}``, the private
    JWK encrypted by ``KeyCipher``; ``ensure`` re-writes plaintext files found there that way. Without it
    the files are plaintext private JWKs (development), and an encrypted file is refused.
    """

    def __init__(self, directory: str | os.PathLike, *, encryption_key: bytes | None = None,
                 fallback_keys: Sequence[bytes] = (), stat_interval: float = 1.0, clock=time.monotonic):
        super().__init__(refresh_interval=stat_interval, clock=clock)
        self.directory = os.fspath(directory)
        self._cipher = KeyCipher(encryption_key, fallback_keys) if encryption_key is not None else None

    @property
    def stat_interval(self) -> float:
        return self.refresh_interval

    def _where(self) -> str:
        return self.directory

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

    @staticmethod
    def _sig(st):
        return st and (st.st_ino, st.st_mtime_ns, st.st_size)

    def _peek_version(self):
        try:
            return self._sig(os.stat(self._path(RING_FILE)))
        except FileNotFoundError:
            return None

    @contextmanager
    def _reading(self):
        with self._flock(exclusive=False):
            yield

    @contextmanager
    def _storing(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with self._flock(exclusive=True):
            yield

    def _fetch(self):
        """Read keyring.json and every private key it lists (caller holds a flock)."""
        try:
            with open(self._path(RING_FILE), "rb") as f:
                st = os.fstat(f.fileno())
                entries = json.load(f)["keys"]
        except FileNotFoundError:
            entries, st = [], None
        validate_entries(entries, RING_FILE)  # before a kid becomes a file name
        read = {e["kid"]: self._read_private(e) for e in entries}
        if self._cipher is not None and len({encrypted for _, encrypted in read.values()}) > 1:
            # Encryption also vouches for the keys: only a holder of IDP_KEY_ENCRYPTION_KEY can add one. A plaintext
            # file beside encrypted ones was not written by this app (it writes every key encrypted once a key is
            # set); believing it would let anyone who can write to the folder choose the signing key. Only a ring
            # that is plaintext throughout (written before encryption was turned on) is read, and ensure() encrypts it.
            plain = sorted(kid for kid, (_, encrypted) in read.items() if not encrypted)
            raise KeyRingError(f"{self.directory} mixes encrypted key files with plaintext ones ({', '.join(plain)}): "
                               "refused; remove the plaintext files and their entries in keyring.json")
        return entries, {kid: key for kid, (key, _) in read.items()}, self._sig(st)

    def _read_private(self, entry: dict):
        """The private key of ``entry`` from its file, and whether the file is encrypted."""
        path = self._path(entry["kid"] + ".json")
        with open(path, "rb") as f:
            doc = json.load(f)
        if isinstance(doc, dict) and "encrypted" in doc:
            if self._cipher is None:
                raise KeyRingError(f"{path} is encrypted: set IDP_KEY_ENCRYPTION_KEY to the key it was encrypted with")
            return self._cipher.decrypt(entry, doc["encrypted"], path), True
        # Plaintext: a development ring, or one written before encryption was turned on (ensure re-writes it).
        return import_private_jwk(entry, doc, path), False

    def _private_file(self, key) -> bytes:
        jwk = key.as_dict(private=True)
        if self._cipher is None:
            return json.dumps(jwk).encode()
        entry = {"kid": key.kid, "alg": key.alg}
        return json.dumps({**entry, "encrypted": self._cipher.encrypt(entry, jwk)}).encode()

    def _key_created(self, key) -> None:
        # Private file first: keyring.json never names a key whose file is missing.
        self._write(key.kid + ".json", self._private_file(key), 0o600)

    def _upgrade(self) -> None:
        # Encryption turned on for an existing ring: encrypt its plaintext files (under the exclusive flock).
        if self._cipher is None:
            return
        for e in self._entries:
            if not self._read_private(e)[1]:
                self._write(e["kid"] + ".json", self._private_file(self._keys[e["kid"]]), 0o600)
                log.warning("signing key %s was stored unencrypted; re-written encrypted under "
                            "IDP_KEY_ENCRYPTION_KEY", e["kid"])

    def _rekey(self) -> list[str]:
        if self._cipher is None:
            raise KeyRingError("IDP_KEY_ENCRYPTION_KEY is not set: there is no key to encrypt the key files under")
        done = []
        for e in self._entries:
            with open(self._path(e["kid"] + ".json"), "rb") as f:
                doc = json.load(f)
            if not self._cipher.is_current(e, doc.get("encrypted") if isinstance(doc, dict) else None):
                # The private file alone: keyring.json is unchanged, so other processes keep what they loaded.
                self._write(e["kid"] + ".json", self._private_file(self._keys[e["kid"]]), 0o600)
                done.append(e["kid"])
        return done

    def _persist(self, before: list[dict]) -> None:
        body = json.dumps({"keys": self._entries}, indent=2) + "\n"
        self._write(RING_FILE, body.encode(), 0o644)
        self._version = self._sig(os.stat(self._path(RING_FILE)))

    def _removed(self, kids: list[str]) -> None:
        # keyring.json no longer names them, so no reader will look for these files.
        for k in kids:
            with suppress(FileNotFoundError):
                os.unlink(self._path(k + ".json"))


def init_app(app: Flask) -> BaseKeyRing:
    """Open the ring ``IDP_KEYS_STORE`` names and create any missing keys."""
    store = app.config.get("IDP_KEYS_STORE") or "files"
    if store == "files":
        ring = KeyRing(app.config["IDP_KEYS_DIR"], encryption_key=file_encryption_key(app.config),
                       fallback_keys=configured_fallback_keys(app.config))
        ring.ensure()  # also encrypts plaintext key files when a key is set, or refuses a key that does not fit
        if ring._cipher is not None:
            ring._cipher.warn_if_fallback_used()
    elif store == "database":
        from .keys_db import init_database_ring

        ring = init_database_ring(app)
    else:
        from .config import ConfigError

        raise ConfigError(f"IDP_KEYS_STORE must be 'files' or 'database', not {store!r}")
    app.extensions["idp_keys"] = ring
    return ring


def file_encryption_key(cfg) -> bytes | None:
    """IDP_KEY_ENCRYPTION_KEY for IDP_KEYS_STORE=files: required outside development mode; None (plaintext
    files, as before) in development mode when unset."""
    from .config import ConfigError

    key = configured_encryption_key(cfg)
    if key is None and not cfg.get("IDP_DEV_MODE"):
        raise ConfigError(f"IDP_KEY_ENCRYPTION_KEY must be set when IDP_KEYS_STORE=files ({NEW_KEY_HINT})")
    return key


def keyring() -> BaseKeyRing:
    return current_app.extensions["idp_keys"]


def retire_after_seconds(cfg) -> int:
    """How long a retired key stays published: every token it signed has expired, plus clock-skew margin."""
    return max(int(cfg.get("IDP_ID_TOKEN_TTL", 3600)), int(cfg.get("IDP_ACCESS_TOKEN_TTL", 600))) + 300


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
    retire_after = retire_after_seconds(current_app.config)
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


@keys_cli.command("rekey")
def rekey_keys() -> None:
    """Encrypt every private key under IDP_KEY_ENCRYPTION_KEY (after changing it; the old key in
    IDP_KEY_ENCRYPTION_KEY_FALLBACKS until this has run)."""
    try:
        done = keyring().rekey()
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(f"re-encrypted {k}" for k in done) if done
               else "every key is already encrypted under IDP_KEY_ENCRYPTION_KEY")


@keys_cli.command("import-files")
@click.option("--from", "source", metavar="DIR", help="Key ring folder to copy (default: IDP_KEYS_DIR).")
@click.option("--force", is_flag=True,
              help="The database already holds keys: retire its current and next keys (published as after a "
                   "rotation) and make the imported ones current and next.")
def import_files(source: str | None, force: bool) -> None:
    """Copy a key ring folder into the database (once, to move a deployment to IDP_KEYS_STORE=database)."""
    from .keys_db import DatabaseKeyRing, database_ring

    source = source or current_app.config["IDP_KEYS_DIR"]
    if not os.path.isfile(os.path.join(source, RING_FILE)):
        raise click.ClickException(f"no {RING_FILE} in {source}")
    ring = keyring()
    if not isinstance(ring, DatabaseKeyRing):
        ring = database_ring(current_app)  # still on IDP_KEYS_STORE=files: the ring the nodes will switch to
    try:
        folder = KeyRing(source, encryption_key=configured_encryption_key(current_app.config),
                         fallback_keys=configured_fallback_keys(current_app.config))
        done = ring.import_ring(folder, retire_after=retire_after_seconds(current_app.config), force=force)
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from exc
    for e in done["imported"]:
        click.echo(f"imported {e['kid']} ({e['alg']}, {e['state']})")
    for kid in done["retired"]:
        click.echo(f"retired {kid} (was in the database)")
