"""The signing key ring in the database (``IDP_KEYS_STORE=database``), shared by every node.

The state machine (states, rotation rules, the published JWKS and its cache)
is ``app.keys.BaseKeyRing``; this module only stores it:

- ``signing_keys``: one row per key, the same fields as a keyring.json entry
  plus the private JWK encrypted with AES-256-GCM under ``IDP_KEY_ENCRYPTION_KEY``
  (``app.keys.KeyCipher``, as in the files store: a fresh 96-bit nonce per key; the
  kid and alg are the associated data, so a ciphertext moved to another row does
  not decrypt). ``slot`` ("RS256:current",
  "ES256:next", NULL when retired) is unique: the database itself refuses two
  current or two next keys of one algorithm.
- ``signing_key_ring``: one row (id 1) whose ``generation`` grows with every
  change. Writers start their transaction by incrementing it, which locks the
  row (PostgreSQL) or the database (SQLite) until they commit: concurrent
  ``ensure()``/``rotate()`` from several nodes run one after the other, each
  seeing what the previous one stored, so exactly one set of keys is created.
  A writer that changes nothing rolls back, so readers are not made to reload.

Each process reads ``generation`` (one primary-key lookup) at most once per
``IDP_KEYS_REFRESH_SECONDS`` when it signs or serves the JWKS, and reloads the
keys when it changed: a rotation committed at time T is used by every node
from T + IDP_KEYS_REFRESH_SECONDS at the latest (plus one query's time).

Every read and write is a short transaction of its own on the engine, never
the request's ``db.session``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask
from sqlalchemy.dialects import postgresql, sqlite

from .extensions import db
from .keys import (ENTRY_FIELDS, NEW_KEY_HINT, BaseKeyRing, KeyCipher, KeyRingError, configured_encryption_key,
                   configured_fallback_keys, validate_entries)

log = logging.getLogger(__name__)


class SigningKey(db.Model):
    __tablename__ = "signing_keys"

    kid = sa.Column(sa.String(128), primary_key=True)  # RFC 7638 thumbprint
    alg = sa.Column(sa.String(8), nullable=False)
    state = sa.Column(sa.String(8), nullable=False)
    slot = sa.Column(sa.String(16), nullable=True, unique=True)  # "<alg>:<state>"; NULL when retired
    created_at = sa.Column(sa.BigInteger, nullable=False)  # epoch seconds
    retired_at = sa.Column(sa.BigInteger, nullable=True)
    publish_until = sa.Column(sa.BigInteger, nullable=True)
    private_jwk = sa.Column(sa.Text, nullable=False)  # AES-256-GCM, never plain

    __table_args__ = (
        sa.CheckConstraint("state IN ('current', 'next', 'retired')", name="state"),
    )


class SigningKeyRing(db.Model):
    """One row: the version marker other nodes poll."""

    __tablename__ = "signing_key_ring"

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    generation = sa.Column(sa.BigInteger, nullable=False)


_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


# -- the encryption key ----------------------------------------------------------

def encryption_key(cfg) -> bytes:
    """The 32-byte AES key from IDP_KEY_ENCRYPTION_KEY; in development mode a derived one if unset."""
    from .config import ConfigError

    key = configured_encryption_key(cfg)
    if key is not None:
        return key
    if not cfg.get("IDP_DEV_MODE"):
        raise ConfigError(f"IDP_KEY_ENCRYPTION_KEY must be set when IDP_KEYS_STORE=database ({NEW_KEY_HINT})")
    log.warning("IDP_KEY_ENCRYPTION_KEY is unset: signing keys in the database are encrypted under a key "
                "derived from SECRET_KEY (development mode only)")
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"idp signing key encryption (development)").derive(
        str(cfg.get("SECRET_KEY") or "").encode())


def _order(e) -> tuple:
    """Storage order (in Python: database collations differ): oldest first, then alg, state, kid."""
    return e["created_at"], e["alg"], e["state"], e["kid"]


# -- the ring --------------------------------------------------------------------

class DatabaseKeyRing(BaseKeyRing):
    """The keys in ``signing_keys`` of ``engine``; private JWKs encrypted under ``key`` (32 bytes)."""

    def __init__(self, engine: sa.Engine, key: bytes, *, fallback_keys: Sequence[bytes] = (),
                 refresh_interval: float = 5.0, clock=time.monotonic):
        if engine.dialect.name not in _INSERTS:
            raise NotImplementedError(f"DatabaseKeyRing supports sqlite and postgresql, not {engine.dialect.name}")
        self._cipher = KeyCipher(key, fallback_keys)  # ValueError unless 32 bytes
        super().__init__(refresh_interval=refresh_interval, clock=clock)
        self.engine = engine
        self._insert = _INSERTS[engine.dialect.name]
        self._t = SigningKey.__table__
        self._ring_t = SigningKeyRing.__table__
        self._conn = None          # the connection of the write in progress
        self._tx_generation = None
        self.ensure_on_first_use = False

    def _where(self) -> str:
        return f"the database ({self._t.name})"

    # -- storage ----------------------------------------------------------------

    def _peek_version(self):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(self._ring_t.c.generation).where(self._ring_t.c.id == 1)).scalar()

    def _fetch(self):
        if self._conn is not None:
            return self._fetch_on(self._conn)
        with self.engine.connect() as conn:
            return self._fetch_on(conn)

    def _fetch_on(self, conn):
        # The marker first: a write committed between the two reads is at worst loaded twice, never missed.
        version = conn.execute(sa.select(self._ring_t.c.generation).where(self._ring_t.c.id == 1)).scalar()
        t = self._t
        rows = sorted(conn.execute(sa.select(t)).mappings().all(), key=_order)
        entries = [{f: row[f] for f in ENTRY_FIELDS} for row in rows]
        validate_entries(entries, self._where())
        keys = {}
        for e, row in zip(entries, rows):
            # A kid is the thumbprint of its key: a key already decrypted cannot have changed.
            keys[e["kid"]] = self._keys.get(e["kid"]) or self._cipher.decrypt(
                e, row["private_jwk"], f"key {e['kid']} in the database")
        return entries, keys, version

    @contextmanager
    def _storing(self):
        with self.engine.connect() as conn:
            tx = conn.begin()
            try:
                inserted = self._lock_ring(conn)
                self._conn = conn
                yield
                if self._dirty:
                    tx.commit()
                    self._version = self._tx_generation
                else:
                    tx.rollback()
                    self._version = None if inserted else self._tx_generation - 1
            except BaseException:
                tx.rollback()
                raise
            finally:
                self._conn = None

    def _lock_ring(self, conn) -> bool:
        """Increment the generation as the transaction's first statement: the write lock. True if the row is new."""
        r = self._ring_t
        bump = sa.update(r).where(r.c.id == 1).values(generation=r.c.generation + 1)
        inserted = False
        if conn.execute(bump).rowcount != 1:
            # First write ever (or the row was deleted): create it; a concurrent creator makes us wait for it.
            res = conn.execute(self._insert(r).values(id=1, generation=0).on_conflict_do_nothing(
                index_elements=[r.c.id]))
            inserted = res.rowcount == 1
            conn.execute(bump)
        self._tx_generation = conn.execute(sa.select(r.c.generation).where(r.c.id == 1)).scalar_one()
        return inserted

    @staticmethod
    def _slot(e: dict) -> str | None:
        return None if e["state"] == "retired" else f"{e['alg']}:{e['state']}"

    def _persist(self, before: list[dict]) -> None:
        conn, t = self._conn, self._t
        validate_entries(self._entries, self._where())
        old = {e["kid"]: e for e in before}
        new = {e["kid"]: e for e in self._entries}
        removed = [k for k in old if k not in new]
        if removed:
            conn.execute(sa.delete(t).where(t.c.kid.in_(removed)))
        # Keys leaving a slot first: ``slot`` is unique statement by statement.
        changed = sorted((e for k, e in new.items() if k in old and e != old[k]), key=lambda e: e["state"] != "retired")
        for e in changed:
            conn.execute(sa.update(t).where(t.c.kid == e["kid"]).values(
                state=e["state"], slot=self._slot(e), retired_at=e["retired_at"], publish_until=e["publish_until"]))
        added = [e for k, e in new.items() if k not in old]
        if added:
            conn.execute(sa.insert(t), [
                {**{f: e[f] for f in ENTRY_FIELDS}, "slot": self._slot(e),
                 "private_jwk": self._cipher.encrypt(e, self._keys[e["kid"]].as_dict(private=True))}
                for e in added])
        self._entries.sort(key=_order)  # the order every node loads: one JWKS document everywhere

    def _rekey(self) -> list[str]:
        conn, t = self._conn, self._t
        done = []
        for row in conn.execute(sa.select(t.c.kid, t.c.alg, t.c.private_jwk)).all():
            entry = {"kid": row.kid, "alg": row.alg}
            if not self._cipher.is_current(entry, row.private_jwk):
                conn.execute(sa.update(t).where(t.c.kid == row.kid).values(
                    private_jwk=self._cipher.encrypt(entry, self._keys[row.kid].as_dict(private=True))))
                done.append(row.kid)
        self._dirty = bool(done)  # commit (and a new generation) only if a row changed
        return sorted(done)

    def reload_if_changed(self) -> bool:
        if self.ensure_on_first_use:
            with self._lock:
                if self.ensure_on_first_use:
                    self.ensure()  # the table exists by now (flask db upgrade), or this fails loudly
                    self.ensure_on_first_use = False
                    self._cipher.warn_if_fallback_used()
                    return True
        return super().reload_if_changed()

    # -- migration from a directory ---------------------------------------------

    def import_ring(self, source: BaseKeyRing, *, retire_after: int, force: bool = False,
                    now: int | None = None) -> dict:
        """Copy every key of ``source`` (states and times kept) into this ring.

        Refused if this ring already holds keys, unless ``force``: then its current and
        next keys whose places the imported keys take are retired, published for
        ``retire_after`` seconds like after a rotation, so nothing they signed breaks.
        """
        entries, keys = source._snapshot()
        if not entries:
            raise KeyRingError(f"no keys to import in {source._where()}")
        now = int(time.time()) if now is None else now
        retired = []
        with self._writing():
            present = {e["kid"] for e in self._entries}
            again = [e["kid"] for e in entries if e["kid"] in present]
            if again:
                raise KeyRingError(f"key {again[0]} is already in the database (imported before?)")
            if self._entries and not force:
                raise KeyRingError(f"{self._where()} already holds {len(self._entries)} keys; "
                                   "--force retires its current and next keys and imports anyway")
            taken = {(e["alg"], e["state"]) for e in entries if e["state"] != "retired"}
            for e in self._entries:
                if (e["alg"], e["state"]) in taken:
                    e.update(state="retired", retired_at=now, publish_until=now + retire_after)
                    retired.append(e["kid"])
            self._entries.extend(entries)
            self._keys.update(keys)
            validate_entries(self._entries, f"import from {source._where()}")
            self._dirty = True
        return {"imported": entries, "retired": retired}


def database_ring(app: Flask) -> DatabaseKeyRing:
    """A database ring on the app's engine, configured from its settings (raises ConfigError)."""
    key = encryption_key(app.config)
    with app.app_context():
        engine = db.engine
    return DatabaseKeyRing(engine, key, fallback_keys=configured_fallback_keys(app.config),
                           refresh_interval=float(app.config.get("IDP_KEYS_REFRESH_SECONDS", 5)))


def init_database_ring(app: Flask) -> DatabaseKeyRing:
    ring = database_ring(app)
    inspector = sa.inspect(ring.engine)
    if not all(inspector.has_table(t) for t in (SigningKey.__tablename__, SigningKeyRing.__tablename__)):
        # `flask db upgrade` itself starts the app: create the keys when first needed instead.
        log.warning("table %s is missing (run `flask db upgrade`); signing keys will be created on first use",
                    SigningKey.__tablename__)
        ring.ensure_on_first_use = True
    else:
        try:
            ring.ensure()  # also refuses to start if IDP_KEY_ENCRYPTION_KEY cannot decrypt the stored keys
        except sa.exc.DBAPIError as error:
            from .errors import is_outage

            if not is_outage(error):
                raise
            # The database is unreachable, or another transaction holds the ring past IDP_DB_LOCK_TIMEOUT (a
            # migration, a rotation): start anyway and try again at the first use, where a failure is that
            # request's 503. A worker that fails to start would make gunicorn stop the whole server.
            log.warning("signing key ring not loaded at start (%s); trying again at first use",
                        str(error.orig).split("\n")[0])
            ring.ensure_on_first_use = True
            return ring
        ring._cipher.warn_if_fallback_used()
    return ring

