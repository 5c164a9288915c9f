"""The signing key ring in the database (app/keys_db.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jws
from joserfc.jwk import KeySet

from app.keys import ALGS, BaseKeyRing, KeyRing, KeyRingError
from app.keys_db import DatabaseKeyRing, SigningKey, SigningKeyRing, encryption_key

PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
SLOTS = sorted((alg, state) for alg in ALGS for state in ("current", "next"))


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def enc_key() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def engine(make_app):
    """The test database's engine (through an app on the default files ring: the table starts empty)."""
    from app.extensions import db

    app = make_app()
    with app.app_context():
        return db.engine


def rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(SigningKey.__table__)).mappings()]


def by_state(ring, alg: str, state: str) -> list[str]:
    return [k["kid"] for k in ring.list() if k["alg"] == alg and k["state"] == state]


def kids(jwks: dict) -> list[str]:
    return [k["kid"] for k in jwks["keys"]]


def test_both_stores_share_one_state_machine():
    # The rules live once, in BaseKeyRing; the stores add storage only.
    for cls in (KeyRing, DatabaseKeyRing):
        assert issubclass(cls, BaseKeyRing)
        for name in ("ensure", "rotate", "retire", "signing_key", "public_jwks", "public_jwks_json",
                     "verification_keys", "list", "reload_if_changed", "_published"):
            assert name not in vars(cls) or name == "reload_if_changed" and cls is DatabaseKeyRing, (cls, name)


def test_concurrent_ensure_from_several_nodes_creates_one_set(database_url, engine, enc_key):
    key = base64.urlsafe_b64decode(enc_key + "=")
    # Each "node" has its own engine (own connections), as separate hosts would.
    engines = [sa.create_engine(database_url, **({"connect_args": {"timeout": 30}}
                                                  if database_url.startswith("sqlite") else {}))
               for _ in range(6)]
    rings = [DatabaseKeyRing(e, key) for e in engines]
    barrier = threading.Barrier(len(rings))
    errors = []

    def start(ring):
        try:
            barrier.wait(timeout=30)
            ring.ensure()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        stored = rows(engine)
        assert sorted((r["alg"], r["state"]) for r in stored) == SLOTS
        for alg in ALGS:
            assert len({r.signing_key(alg).kid for r in rings}) == 1  # every node signs with the same key
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(SigningKeyRing.__table__)).scalar() == 1
    finally:
        for e in engines:
            e.dispose()


def test_private_keys_are_encrypted_at_rest(engine, enc_key):
    ring = DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key}))
    ring.ensure()
    stored = rows(engine)
    assert len(stored) == 4
    aes = AESGCM(base64.urlsafe_b64decode(enc_key + "="))
    for r in stored:
        text = r["private_jwk"]
        public = ring._keys[r["kid"]].as_dict(private=False)
        private = ring._keys[r["kid"]].as_dict(private=True)
        # Not a JWK, and none of its members (private or public) appear in the row.
        assert '"d"' not in text and '"kty"' not in text
        with pytest.raises(ValueError):
            json.loads(text)
        for member in ("d", "x", "n"):
            if member in private:
                assert private[member] not in text
        # With the key (and the kid/alg as associated data) it is the private JWK.
        raw = base64.urlsafe_b64decode(text[3:] + "=" * (-len(text[3:]) % 4))
        plain = json.loads(aes.decrypt(raw[:12], raw[12:], f"signing_keys:{r['kid']}:{r['alg']}".encode()))
        assert plain["d"] == private["d"] and plain["kid"] == r["kid"] == public["kid"]
        assert not PRIVATE & set(r)
    # Two encryptions of one key differ (fresh nonce): equal rows reveal nothing.
    assert len({r["private_jwk"] for r in stored}) == 4


def test_wrong_or_malformed_encryption_key_is_a_clear_error(make_app, engine, enc_key):
    from app.config import ConfigError

    DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key})).ensure()
    other = encryption_key({"IDP_KEY_ENCRYPTION_KEY": secrets.token_urlsafe(32)})
    with pytest.raises(KeyRingError, match="cannot decrypt key .* IDP_KEY_ENCRYPTION_KEY is not the key"):
        DatabaseKeyRing(engine, other).list()
    # An app given the wrong key refuses to start rather than sign with keys of its own.
    with pytest.raises(KeyRingError, match="cannot decrypt"):
        make_app(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=secrets.token_urlsafe(32))
    assert len(rows(engine)) == 4

    for bad in ("too-short", secrets.token_urlsafe(16), secrets.token_urlsafe(32) + "!!"):
        with pytest.raises(ConfigError, match="base64url encoding of 32 random bytes"):
            make_app(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=bad)
    prod = {"IDP_ISSUER": "https://id.example", "SECRET_KEY": secrets.token_urlsafe(40), "IDP_KEYS_STORE": "database"}
    with pytest.raises(ConfigError, match="IDP_KEY_ENCRYPTION_KEY must be set"):
        make_app(**prod)
    with pytest.raises(ConfigError, match="IDP_KEYS_STORE must be"):
        make_app(IDP_KEYS_STORE="redis")
    # Production with the right key starts and uses the stored keys.
    app = make_app(**prod, IDP_KEY_ENCRYPTION_KEY=enc_key)
    assert {r["kid"] for r in app.extensions["idp_keys"].list()} == {r["kid"] for r in rows(engine)}

    # A ciphertext moved to another row does not decrypt either (kid and alg are bound to it).
    with engine.begin() as conn:
        t = SigningKey.__table__
        a, b = conn.execute(sa.select(t.c.kid, t.c.private_jwk).where(t.c.alg == "ES256")).all()
        conn.execute(sa.update(t).where(t.c.kid == a.kid).values(private_jwk=b.private_jwk))
    with pytest.raises(KeyRingError, match=f"cannot decrypt key {a.kid}"):
        DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key})).list()


def test_changing_the_encryption_key_re_encrypts_every_row_and_keeps_the_keys(make_app, engine, enc_key):
    old, new = encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key}), secrets.token_urlsafe(32)
    new_key = encryption_key({"IDP_KEY_ENCRYPTION_KEY": new})
    first = DatabaseKeyRing(engine, old)
    first.ensure()
    signing = {alg: first.signing_key(alg).kid for alg in ALGS}
    stored = {r["kid"]: r["private_jwk"] for r in rows(engine)}

    # A node that has the new key as the key and the old one as a fallback starts on the same keys; `keys rekey`
    # re-writes every row (a fresh ciphertext under the new key) and commits once.
    app = make_app(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=new, IDP_KEY_ENCRYPTION_KEY_FALLBACKS=enc_key)
    ring = app.extensions["idp_keys"]
    assert {alg: ring.signing_key(alg).kid for alg in ALGS} == signing
    clock = FakeClock()
    watcher = DatabaseKeyRing(engine, old, fallback_keys=[new_key], refresh_interval=1, clock=clock)
    watcher.list()
    res = app.test_cli_runner().invoke(args=["keys", "rekey"])
    assert res.exit_code == 0, res.output
    assert {line.removeprefix("re-encrypted ") for line in res.output.splitlines()} == set(stored)
    after = {r["kid"]: r["private_jwk"] for r in rows(engine)}
    assert after.keys() == stored.keys() and all(after[k] != stored[k] for k in stored)
    aes = AESGCM(new_key)
    for r in rows(engine):
        raw = base64.urlsafe_b64decode(r["private_jwk"][3:] + "=" * (-len(r["private_jwk"][3:]) % 4))
        assert json.loads(aes.decrypt(raw[:12], raw[12:], f"signing_keys:{r['kid']}:{r['alg']}".encode()))["kid"] == r["kid"]
    # Other nodes see a new generation, reload, and still sign with the same keys.
    clock.t += 1
    assert watcher.reload_if_changed() is True
    assert {alg: watcher.signing_key(alg).kid for alg in ALGS} == signing
    res = app.test_cli_runner().invoke(args=["keys", "rekey"])
    assert res.exit_code == 0 and "every key is already encrypted" in res.output
    clock.t += 1
    assert watcher.reload_if_changed() is False  # nothing re-written: no new generation

    # A node still on step 1 (old key, new one as the fallback) reads the re-encrypted rows afresh.
    assert {alg: DatabaseKeyRing(engine, old, fallback_keys=[new_key]).signing_key(alg).kid for alg in ALGS} == signing
    # The new key alone opens the ring; the old key alone no longer does.
    assert {alg: DatabaseKeyRing(engine, new_key).signing_key(alg).kid for alg in ALGS} == signing
    with pytest.raises(KeyRingError, match="cannot decrypt key .* IDP_KEY_ENCRYPTION_KEY is not the key"):
        DatabaseKeyRing(engine, old).list()


def test_rotation_on_one_node_is_used_by_another_within_the_refresh_interval(engine, enc_key):
    key = encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key})
    a = DatabaseKeyRing(engine, key)
    a.ensure()
    clock = FakeClock()
    b = DatabaseKeyRing(engine, key, refresh_interval=5, clock=clock)
    old = {alg: b.signing_key(alg).kid for alg in ALGS}
    old_jwks = b.public_jwks_json()
    assert old == {alg: a.signing_key(alg).kid for alg in ALGS}

    done = a.rotate(retire_after=3600)
    new = {d["alg"]: d["current"] for d in done}
    # Within the interval B has not looked yet (no query at all) ...
    clock.t += 4.9
    assert {alg: b.signing_key(alg).kid for alg in ALGS} == old
    assert b.public_jwks_json() is old_jwks
    # ... and once the interval has passed, its next use sees the rotation.
    clock.t += 0.1
    assert {alg: b.signing_key(alg).kid for alg in ALGS} == new
    assert b.public_jwks() == a.public_jwks()
    assert b.list() == a.list()
    # Nothing changed since: B keeps its cached document.
    cached = b.public_jwks_json()
    clock.t += 5
    assert b.reload_if_changed() is False and b.public_jwks_json() is cached


def test_writes_that_change_nothing_do_not_make_others_reload(engine, enc_key):
    key = encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key})
    DatabaseKeyRing(engine, key).ensure()
    clock = FakeClock()
    b = DatabaseKeyRing(engine, key, refresh_interval=1, clock=clock)
    b.list()
    for _ in range(3):
        DatabaseKeyRing(engine, key).ensure()  # every node's start
        assert DatabaseKeyRing(engine, key).retire() == []
    clock.t += 1
    assert b.reload_if_changed() is False


def test_jwks_publishes_next_current_and_retired_keys_and_never_private_members(engine, enc_key):
    ring = DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key}), refresh_interval=0)
    ring.ensure()
    first_next = {alg: by_state(ring, alg, "next")[0] for alg in ALGS}
    old = {alg: by_state(ring, alg, "current")[0] for alg in ALGS}
    assert set(first_next.values()) <= set(kids(ring.public_jwks()))
    now = int(time.time())
    ring.rotate(retire_after=3600, now=now)
    jwks = ring.public_jwks()
    assert len(jwks["keys"]) == 6 and len(set(kids(jwks))) == 6
    for alg in ALGS:
        for state in ("current", "next", "retired"):
            assert set(by_state(ring, alg, state)) <= set(kids(jwks)), (alg, state)
        assert by_state(ring, alg, "current") == [first_next[alg]]
        assert by_state(ring, alg, "retired") == [old[alg]]
    for k in jwks["keys"]:
        assert not PRIVATE & set(k), k
        assert k["use"] == "sig" and k["alg"] in ALGS
    assert b'"d"' not in ring.public_jwks_json()
    assert {k.kid for k in ring.verification_keys()} == set(kids(jwks))
    assert ring.public_jwks_json() is ring.public_jwks_json()  # cached bytes

    # The rules are the same as on files: only retired keys go, and only when their time is up.
    with pytest.raises(KeyRingError, match="only retired keys"):
        ring.retire(first_next["RS256"])
    assert ring.retire(now=now + 3599) == []
    assert sorted(ring.retire(now=now + 3600)) == sorted(old.values())
    assert len(ring.public_jwks()["keys"]) == 4 and len(rows(engine)) == 4


def test_the_database_refuses_two_current_keys_of_one_alg(engine, enc_key):
    ring = DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key}))
    ring.ensure()
    t = SigningKey.__table__
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(sa.insert(t).values(kid="x" * 43, alg="RS256", state="current", slot="RS256:current",
                                             created_at=0, private_jwk="v1.AAAA"))


@pytest.mark.parametrize("alg", list(ALGS))
def test_token_signed_on_one_node_verifies_with_another_nodes_jwks(make_app, enc_key, alg):
    from joserfc import jwt

    cfg = {"IDP_KEYS_STORE": "database", "IDP_KEY_ENCRYPTION_KEY": enc_key, "IDP_KEYS_REFRESH_SECONDS": 0}
    node_a, node_b = make_app(**cfg), make_app(**cfg)  # two apps, two engines, one table
    ring_a, ring_b = node_a.extensions["idp_keys"], node_b.extensions["idp_keys"]
    assert ring_a is not ring_b and len(ring_a.list()) == 4

    def sign(ring):
        key = ring.signing_key(alg)
        return jwt.encode({"alg": alg, "kid": key.kid}, {"sub": "ada", "iss": "http://localhost"}, key)

    before = sign(ring_a)
    ring_a.rotate(alg, retire_after=3600)
    after = sign(ring_a)
    assert jws.extract_compact(before.encode()).headers()["kid"] != jws.extract_compact(after.encode()).headers()["kid"]
    # Node B's published JWKS (what relying parties fetch from it) verifies both.
    res = node_b.test_client().get("/jwks.json")
    assert res.status_code == 200 and not PRIVATE & {m for k in res.get_json()["keys"] for m in k}
    published = KeySet.import_key_set(res.get_json())
    for token in (before, after):
        assert jwt.decode(token, published, algorithms=[alg]).claims["sub"] == "ada"
        assert jwt.decode(token, ring_b.verification_keys(), algorithms=[alg]).claims["sub"] == "ada"
    assert ring_b.signing_key(alg).kid == ring_a.signing_key(alg).kid


def test_cli_list_rotate_retire_on_the_database(make_app, enc_key, engine):
    app = make_app(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=enc_key, IDP_ID_TOKEN_TTL=1200,
                   IDP_ACCESS_TOKEN_TTL=600)
    runner = app.test_cli_runner()
    res = runner.invoke(args=["keys", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert sorted((r["alg"], r["state"]) for r in listed) == SLOTS
    assert {r["kid"] for r in listed} == {r["kid"] for r in rows(engine)}

    before = int(time.time())
    res = runner.invoke(args=["keys", "rotate", "--alg", "ES256"])
    assert res.exit_code == 0, res.output
    stored = {r["kid"]: r for r in rows(engine)}
    retired = [r for r in stored.values() if r["state"] == "retired"]
    assert [r["alg"] for r in retired] == ["ES256"] and retired[0]["slot"] is None
    assert before + 1500 <= retired[0]["publish_until"] <= int(time.time()) + 1500

    current = next(r["kid"] for r in stored.values() if r["state"] == "current")
    res = runner.invoke(args=["keys", "retire", "--kid", current])
    assert res.exit_code != 0 and "only retired keys" in res.output
    res = runner.invoke(args=["keys", "retire"])
    assert res.exit_code == 0 and "nothing to remove" in res.output
    res = runner.invoke(args=["keys", "retire", "--kid", retired[0]["kid"]])
    assert res.exit_code == 0 and retired[0]["kid"] in res.output
    assert retired[0]["kid"] not in {r["kid"] for r in rows(engine)}


def test_import_files_copies_a_directory_ring(make_app, tmp_path, enc_key, engine):
    files = KeyRing(tmp_path / "ring")
    files.ensure()
    files.rotate("RS256", retire_after=3600)   # a retired key, to be copied with its publish_until
    # Still on the files store (the documented order): the command writes the ring the nodes will use.
    app = make_app(IDP_KEYS_DIR=str(tmp_path / "ring"), IDP_KEY_ENCRYPTION_KEY=enc_key)
    runner = app.test_cli_runner()
    res = runner.invoke(args=["keys", "import-files"])
    assert res.exit_code == 0, res.output
    assert res.output.count("imported ") == 5

    db_ring = DatabaseKeyRing(engine, encryption_key({"IDP_KEY_ENCRYPTION_KEY": enc_key}))
    assert sorted(db_ring.list(), key=lambda r: r["kid"]) == sorted(files.list(), key=lambda r: r["kid"])
    assert sorted(db_ring.public_jwks()["keys"], key=lambda k: k["kid"]) == \
        sorted(files.public_jwks()["keys"], key=lambda k: k["kid"])
    for alg in ALGS:
        key = files.signing_key(alg)
        token = jws.serialize_compact({"alg": alg, "kid": key.kid}, b"x", key)
        assert db_ring.signing_key(alg).kid == key.kid
        assert jws.deserialize_compact(token, db_ring.verification_keys(), algorithms=[alg]).payload == b"x"

    # Once only: a second import is refused, and changes nothing.
    res = runner.invoke(args=["keys", "import-files"])
    assert res.exit_code != 0 and "already in the database" in res.output
    res = runner.invoke(args=["keys", "import-files", "--from", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "no keyring.json" in res.output
    assert len(rows(engine)) == 5


def test_import_files_into_a_database_that_already_has_keys_needs_force(make_app, tmp_path, enc_key, engine):
    files = KeyRing(tmp_path / "ring")
    files.ensure()
    # A node already started on the database store and created keys of its own.
    app = make_app(IDP_KEYS_STORE="database", IDP_KEY_ENCRYPTION_KEY=enc_key, IDP_KEYS_REFRESH_SECONDS=0)
    ring = app.extensions["idp_keys"]
    own = {alg: ring.signing_key(alg).kid for alg in ALGS}
    runner = app.test_cli_runner()
    res = runner.invoke(args=["keys", "import-files", "--from", str(tmp_path / "ring")])
    assert res.exit_code != 0 and "--force" in res.output
    assert len(rows(engine)) == 4

    res = runner.invoke(args=["keys", "import-files", "--from", str(tmp_path / "ring"), "--force"])
    assert res.exit_code == 0, res.output
    for alg in ALGS:
        assert ring.signing_key(alg).kid == files.signing_key(alg).kid
        assert own[alg] in by_state(ring, alg, "retired")     # still published: what it signed verifies
        assert own[alg] in kids(ring.public_jwks())
    assert len(rows(engine)) == 8


def test_database_store_starts_before_the_table_exists(tmp_path, keys_dir, enc_key):
    """`flask db upgrade` starts the app too: on a new database the keys are created on first use."""
    import flask_migrate

    from app import create_app
    from app.extensions import db

    url = f"sqlite:///{tmp_path}/fresh.sqlite3"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "IDP_KEYS_DIR": keys_dir, "TESTING": True,
                      "IDP_KEYS_STORE": "database", "IDP_KEY_ENCRYPTION_KEY": enc_key})
    try:
        with app.app_context():
            flask_migrate.upgrade()
        ring = app.extensions["idp_keys"]
        assert ring.signing_key("RS256").kid in kids(ring.public_jwks())
        assert sorted((r["alg"], r["state"]) for r in ring.list()) == SLOTS
    finally:
        with app.app_context():
            db.engine.dispose()
