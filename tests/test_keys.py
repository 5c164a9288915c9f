"""The signing key ring (app/keys.py) on real files: staged rotation, JWKS, CLI."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import time
from contextlib import contextmanager, suppress

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask
from joserfc import jws
from joserfc.jwk import KeySet

from app.config import ConfigError
from app.keys import ALGS, KeyRing, KeyRingError, init_app, keys_cli

PRIVATE = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture
def enc_key() -> str:
    return secrets.token_urlsafe(32)


def aes_key(enc_key: str) -> bytes:
    return base64.urlsafe_b64decode(enc_key + "=")


@pytest.fixture
def ring(tmp_path):
    r = KeyRing(tmp_path / "keys")
    r.ensure()
    return r


def kids(jwks: dict) -> list[str]:
    return [k["kid"] for k in jwks["keys"]]


def by_state(ring: KeyRing, alg: str, state: str) -> list[str]:
    return [k["kid"] for k in ring.list() if k["alg"] == alg and k["state"] == state]


def test_ensure_creates_current_and_next_per_alg_and_is_idempotent(ring, tmp_path):
    rows = ring.list()
    assert sorted((r["alg"], r["state"]) for r in rows) == sorted(
        (alg, state) for alg in ALGS for state in ("current", "next"))
    before = os.stat(tmp_path / "keys" / "keyring.json")
    ring.ensure()
    KeyRing(tmp_path / "keys").ensure()
    after = os.stat(tmp_path / "keys" / "keyring.json")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even rewritten
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == sorted(
        ["keyring.json"] + [r["kid"] + ".json" for r in rows])


def test_private_files_are_0600_and_hold_private_jwks(ring, tmp_path):
    for row in ring.list():
        path = tmp_path / "keys" / f"{row['kid']}.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        jwk = json.loads(path.read_text())
        assert jwk["kid"] == row["kid"] and jwk["alg"] == row["alg"] and "d" in jwk
    doc = json.loads((tmp_path / "keys" / "keyring.json").read_text())
    assert not any(PRIVATE & set(entry) for entry in doc["keys"])


def test_jwks_is_public_unique_and_includes_next_keys(ring):
    jwks = ring.public_jwks()
    assert len(jwks["keys"]) == 4
    assert len(set(kids(jwks))) == 4
    for k in jwks["keys"]:
        assert not PRIVATE & set(k), k
        assert k["kty"] in ("RSA", "EC") and k["use"] == "sig" and k["alg"] in ALGS
    for alg in ALGS:
        assert set(by_state(ring, alg, "next")) <= set(kids(jwks))
    assert json.loads(ring.public_jwks_json()) == jwks
    # Served from cache: the very same bytes object until the ring changes.
    assert ring.public_jwks_json() is ring.public_jwks_json()
    assert {k.kid for k in ring.verification_keys()} == set(kids(jwks))


def test_rotate_promotes_published_next_and_keeps_old_current_published(ring, tmp_path):
    before = ring.public_jwks()
    old = {alg: by_state(ring, alg, "current")[0] for alg in ALGS}
    nxt = {alg: by_state(ring, alg, "next")[0] for alg in ALGS}
    cached = ring.public_jwks_json()

    now = int(time.time())
    done = ring.rotate(retire_after=3600, now=now)

    assert {d["alg"] for d in done} == set(ALGS)
    after = ring.public_jwks()
    assert ring.public_jwks_json() is not cached
    for alg in ALGS:
        new_current = by_state(ring, alg, "current")
        assert new_current == [nxt[alg]]
        assert nxt[alg] in kids(before)          # published before it signs
        assert old[alg] in kids(after)           # still published after it stops signing
        assert by_state(ring, alg, "retired") == [old[alg]]
        assert ring.signing_key(alg).kid == nxt[alg]
        assert len(by_state(ring, alg, "next")) == 1
    row = next(r for r in ring.list() if r["kid"] == old["RS256"])
    assert row["publish_until"] == now + 3600
    assert len(after["keys"]) == 6

    # Before publish_until nothing goes; after it, the retired keys and their files do.
    assert ring.retire(now=now + 3599) == []
    removed = ring.retire(now=now + 3600)
    assert sorted(removed) == sorted(old.values())
    final = ring.public_jwks()
    for kid in old.values():
        assert kid not in kids(final)
        assert not (tmp_path / "keys" / f"{kid}.json").exists()
    assert len(final["keys"]) == 4


def test_expired_retired_key_drops_out_of_jwks_by_time(ring):
    old = by_state(ring, "ES256", "current")[0]
    # Epochs are whole seconds: publish_until = floor(t) + 2 lies within (t + 1, t + 2].
    ring.rotate("ES256", retire_after=2)
    assert old in kids(ring.public_jwks())
    time.sleep(2.1)
    # Not yet removed from disk, but no longer published (the cache expires by itself).
    assert old in [r["kid"] for r in ring.list()]
    assert old not in kids(ring.public_jwks())
    assert ring.retire() == [old]
    assert old not in [r["kid"] for r in ring.list()]


def test_retire_refuses_current_and_next_but_removes_retired_kid_early(ring, tmp_path):
    for state in ("current", "next"):
        kid = by_state(ring, "RS256", state)[0]
        with pytest.raises(KeyRingError, match="only retired keys"):
            ring.retire(kid)
        assert (tmp_path / "keys" / f"{kid}.json").exists()
    with pytest.raises(KeyRingError, match="no key"):
        ring.retire("no-such-kid")
    old = by_state(ring, "RS256", "current")[0]
    ring.rotate("RS256", retire_after=3600)
    assert by_state(ring, "ES256", "retired") == []      # only the asked alg rotated
    assert ring.retire() == []
    assert ring.retire(old) == [old]
    assert old not in kids(ring.public_jwks())
    assert not (tmp_path / "keys" / f"{old}.json").exists()


@pytest.mark.parametrize("alg", list(ALGS))
def test_signed_jws_verifies_against_published_jwks(ring, alg):
    key = ring.signing_key(alg)
    token = jws.serialize_compact({"alg": alg, "kid": key.kid}, b'{"sub":"x"}', key)
    assert jws.extract_compact(token.encode()).headers()["kid"] == key.kid
    published = KeySet.import_key_set(ring.public_jwks())
    assert jws.deserialize_compact(token, published, algorithms=[alg]).payload == b'{"sub":"x"}'
    assert jws.deserialize_compact(token, ring.verification_keys(), algorithms=[alg]).payload == b'{"sub":"x"}'


def test_signing_key_errors_are_clear(tmp_path):
    with pytest.raises(KeyRingError, match="unsupported"):
        KeyRing(tmp_path).signing_key("HS256")
    with pytest.raises(KeyRingError, match="no current RS256 key"):
        KeyRing(tmp_path / "missing").signing_key("RS256")


def test_tampered_ring_is_refused_and_a_bad_edit_keeps_the_loaded_keys(ring, tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    good = path.read_text()
    live = KeyRing(tmp_path / "keys", stat_interval=0)
    kid = live.signing_key("RS256").kid

    path.write_text(good.replace(kid, "../../etc/passwd"))
    with pytest.raises(KeyRingError, match="invalid or duplicate kid"):
        KeyRing(tmp_path / "keys").ensure()
    # A worker already running logs the error and goes on signing with what it had.
    assert live.signing_key("RS256").kid == kid

    doc = json.loads(good)
    es = next(e for e in doc["keys"] if e["alg"] == "ES256")
    (tmp_path / "keys" / f"{es['kid']}.json").write_text(json.dumps({"kty": "oct", "k": "c2VjcmV0", "kid": es["kid"]}))
    path.write_text(good)
    with pytest.raises(KeyRingError, match="not a private ES256 JWK"):
        KeyRing(tmp_path / "keys").ensure()


def test_second_instance_sees_rotation_after_stat_interval(ring, tmp_path):
    other = KeyRing(tmp_path / "keys")
    other.ensure()
    old_jwks = other.public_jwks_json()
    assert other.signing_key("RS256").kid == ring.signing_key("RS256").kid
    time.sleep(1.1)
    other.reload_if_changed()  # consumes this interval's stat: nothing changed yet

    ring.rotate(retire_after=3600)
    time.sleep(1.1)
    assert other.signing_key("RS256").kid == ring.signing_key("RS256").kid
    assert other.signing_key("ES256").kid == ring.signing_key("ES256").kid
    assert other.public_jwks_json() != old_jwks
    assert other.public_jwks() == ring.public_jwks()


@pytest.fixture(params=["development", "encrypted"])
def cli_app(request, tmp_path, enc_key):
    app = Flask(__name__)
    app.config["IDP_KEYS_DIR"] = str(tmp_path / "keys")
    app.config["IDP_ID_TOKEN_TTL"] = 1200
    app.config["IDP_ACCESS_TOKEN_TTL"] = 600
    if request.param == "development":
        app.config["IDP_DEV_MODE"] = True     # plaintext key files, as before
    else:
        app.config["IDP_KEY_ENCRYPTION_KEY"] = enc_key
    init_app(app)
    app.cli.add_command(keys_cli)
    return app


def test_cli_list_rotate_retire(cli_app, tmp_path):
    runner = cli_app.test_cli_runner()
    ring = cli_app.extensions["idp_keys"]

    res = runner.invoke(args=["keys", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"current", "next"}

    res = runner.invoke(args=["keys", "list"])
    assert res.exit_code == 0 and all(r["kid"] in res.output for r in rows)

    before = int(time.time())
    res = runner.invoke(args=["keys", "rotate", "--alg", "ES256"])
    assert res.exit_code == 0, res.output
    rows = json.loads(runner.invoke(args=["keys", "list", "--json"]).output)
    retired = [r for r in rows if r["state"] == "retired"]
    assert [r["alg"] for r in retired] == ["ES256"]
    # max(1200, 600) + 300 s margin
    assert before + 1500 <= retired[0]["publish_until"] <= int(time.time()) + 1500

    res = runner.invoke(args=["keys", "rotate", "--alg", "HS256"])
    assert res.exit_code != 0

    current = next(r["kid"] for r in rows if r["state"] == "current")
    res = runner.invoke(args=["keys", "retire", "--kid", current])
    assert res.exit_code != 0 and "only retired keys" in res.output

    res = runner.invoke(args=["keys", "retire"])
    assert res.exit_code == 0 and "nothing to remove" in res.output

    res = runner.invoke(args=["keys", "retire", "--kid", retired[0]["kid"]])
    assert res.exit_code == 0 and retired[0]["kid"] in res.output
    assert retired[0]["kid"] not in [r["kid"] for r in ring.list()]

    res = runner.invoke(args=["keys", "rotate"])
    assert res.exit_code == 0 and "RS256" in res.output and "ES256" in res.output
    # Every key file the commands wrote is in the form the configuration asks for.
    encrypted = "IDP_KEY_ENCRYPTION_KEY" in cli_app.config
    for r in ring.list():
        doc = json.loads((tmp_path / "keys" / f"{r['kid']}.json").read_text())
        assert ("encrypted" in doc) is encrypted and ("d" in doc) is not encrypted


def test_concurrent_first_start_of_several_processes_creates_one_set(tmp_path):
    import subprocess
    import sys

    code = "import sys; from app.keys import KeyRing; KeyRing(sys.argv[1]).ensure()"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "keys")], cwd=root) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    rows = KeyRing(tmp_path / "keys").list()
    assert sorted((r["alg"], r["state"]) for r in rows) == sorted(
        (alg, state) for alg in ALGS for state in ("current", "next"))
    assert len([p for p in (tmp_path / "keys").iterdir()]) == 5  # no orphan or temp files


# -- private keys encrypted at rest (IDP_KEY_ENCRYPTION_KEY) ------------------------------------------------------


def test_encrypted_key_files_hold_no_private_member_and_still_sign(tmp_path, enc_key):
    ring = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key))
    ring.ensure()
    for row in ring.list():
        path = tmp_path / "keys" / f"{row['kid']}.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = path.read_text()
        doc = json.loads(text)
        assert set(doc) == {"kid", "alg", "encrypted"} and (doc["kid"], doc["alg"]) == (row["kid"], row["alg"])
        assert doc["encrypted"].startswith("v1.")
        private = ring._keys[row["kid"]].as_dict(private=True)
        for member in PRIVATE & set(private):
            assert private[member] not in text, member
        assert "PRIVATE KEY" not in text and "-----BEGIN" not in text
    assert len({json.loads((tmp_path / "keys" / f"{r['kid']}.json").read_text())["encrypted"]
                for r in ring.list()}) == 4

    # Another process with the same key reads the same keys: what one signs, the other verifies.
    other = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key))
    for alg in ALGS:
        key = other.signing_key(alg)
        assert key.kid == ring.signing_key(alg).kid
        token = jws.serialize_compact({"alg": alg, "kid": key.kid}, b"payload", key)
        assert jws.deserialize_compact(token, ring.verification_keys(), algorithms=[alg]).payload == b"payload"
        assert jws.deserialize_compact(token, KeySet.import_key_set(ring.public_jwks()),
                                       algorithms=[alg]).payload == b"payload"


def test_encrypted_key_files_need_the_right_key(tmp_path, enc_key):
    KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key)).ensure()
    with pytest.raises(KeyRingError, match=r"keys/[A-Za-z0-9_-]+\.json is encrypted: set IDP_KEY_ENCRYPTION_KEY"):
        KeyRing(tmp_path / "keys").ensure()
    with pytest.raises(KeyRingError, match=r"cannot decrypt .*keys/[A-Za-z0-9_-]+\.json: IDP_KEY_ENCRYPTION_KEY is not "
                                           r"the key it was encrypted with"):
        KeyRing(tmp_path / "keys", encryption_key=os.urandom(32)).ensure()
    # The envelope is bound to its key's kid and alg: a file copied over another's does not decrypt.
    rows = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key)).list()
    a, b = (r["kid"] for r in rows if r["alg"] == "ES256")
    (tmp_path / "keys" / f"{b}.json").write_bytes((tmp_path / "keys" / f"{a}.json").read_bytes())
    with pytest.raises(KeyRingError, match=f"cannot decrypt .*{b}\\.json"):
        KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key)).ensure()


def test_wrong_or_missing_key_stops_the_app_with_a_clear_error(make_app, tmp_path, enc_key):
    keys = str(tmp_path / "keys")
    make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=enc_key)
    with pytest.raises(KeyRingError, match="cannot decrypt .* IDP_KEY_ENCRYPTION_KEY is not the key"):
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=secrets.token_urlsafe(32))
    with pytest.raises(KeyRingError, match="is encrypted: set IDP_KEY_ENCRYPTION_KEY"):
        make_app(IDP_KEYS_DIR=keys)   # development mode, but the folder was encrypted
    with pytest.raises(ConfigError, match="base64url encoding of 32 random bytes"):
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY="too-short")


def test_changing_the_encryption_key_keeps_the_signing_keys(make_app, tmp_path, enc_key):
    """The README's three steps: the new key as a fallback, then as the key with the old one as the fallback and
    `keys rekey`, then alone. The same signing keys throughout."""
    folder = tmp_path / "keys"
    keys, new = str(folder), secrets.token_urlsafe(32)
    signing = make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=enc_key).extensions["idp_keys"].signing_key("RS256").kid
    before = {p.name: p.read_bytes() for p in folder.glob("*.json")}

    def encrypted_under(key: str) -> set[str]:
        """The kids whose files decrypt under ``key`` alone."""
        aes, found = AESGCM(aes_key(key)), set()
        for path in folder.glob("*.json"):
            doc = json.loads(path.read_text())
            if "encrypted" not in doc:
                continue
            raw = base64.urlsafe_b64decode(doc["encrypted"][3:] + "=" * (-len(doc["encrypted"][3:]) % 4))
            with suppress(InvalidTag):
                aes.decrypt(raw[:12], raw[12:], f"signing_keys:{doc['kid']}:{doc['alg']}".encode())
                found.add(doc["kid"])
        return found

    # 1. The new key as a fallback: it starts, writes nothing, signs with the same key.
    step1 = make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=enc_key, IDP_KEY_ENCRYPTION_KEY_FALLBACKS=new)
    assert step1.extensions["idp_keys"].signing_key("RS256").kid == signing
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == before

    # 2. The new key encrypts; the old one (and an unrelated one, in a list) only decrypts. A rotation now writes
    # its new key under the new key, which a node still on step 1 reads.
    with warnings_of("app.keys") as warnings:
        step2 = make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=new,
                         IDP_KEY_ENCRYPTION_KEY_FALLBACKS=f"{secrets.token_urlsafe(32)} , {enc_key}")
    assert any("4 signing keys are encrypted under a key of IDP_KEY_ENCRYPTION_KEY_FALLBACKS" in w
               and "flask keys rekey" in w for w in warnings), warnings
    ring = step2.extensions["idp_keys"]
    assert ring.signing_key("RS256").kid == signing
    runner = step2.test_cli_runner()
    assert runner.invoke(args=["keys", "rotate", "--alg", "ES256"]).exit_code == 0
    made = next(r["kid"] for r in ring.list() if r["alg"] == "ES256" and r["state"] == "next")
    assert encrypted_under(new) == {made}
    assert made in {r["kid"] for r in KeyRing(folder, encryption_key=aes_key(enc_key),
                                                fallback_keys=[aes_key(new)]).list()}
    old_kids = {r["kid"] for r in ring.list()} - {made}
    res = runner.invoke(args=["keys", "rekey"])
    assert res.exit_code == 0, res.output
    assert {line.removeprefix("re-encrypted ") for line in res.output.splitlines()} == old_kids
    assert encrypted_under(new) == {r["kid"] for r in ring.list()} and not encrypted_under(enc_key)
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in folder.glob("*.json") if p.name != "keyring.json")
    res = runner.invoke(args=["keys", "rekey"])
    assert res.exit_code == 0 and "every key is already encrypted" in res.output

    with warnings_of("app.keys") as warnings:  # rekeyed: the fallback opens nothing any more
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=new, IDP_KEY_ENCRYPTION_KEY_FALLBACKS=enc_key)
    assert not any("IDP_KEY_ENCRYPTION_KEY_FALLBACKS" in w for w in warnings), warnings

    # 3. The new key alone; the old key alone no longer opens the folder.
    step3 = make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=new)
    assert step3.extensions["idp_keys"].signing_key("RS256").kid == signing
    assert {r["kid"] for r in step3.extensions["idp_keys"].list()} == {r["kid"] for r in ring.list()}
    with pytest.raises(KeyRingError, match="cannot decrypt .* IDP_KEY_ENCRYPTION_KEY is not the key"):
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=enc_key)


def test_malformed_fallback_keys_are_refused(make_app, tmp_path, enc_key):
    keys = str(tmp_path / "keys")
    with pytest.raises(ConfigError, match="each of IDP_KEY_ENCRYPTION_KEY_FALLBACKS must be the base64url encoding"):
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY=enc_key, IDP_KEY_ENCRYPTION_KEY_FALLBACKS="short")
    with pytest.raises(ConfigError, match="IDP_KEY_ENCRYPTION_KEY_FALLBACKS needs IDP_KEY_ENCRYPTION_KEY"):
        make_app(IDP_KEYS_DIR=keys, IDP_KEY_ENCRYPTION_KEY_FALLBACKS=enc_key)


def test_rekey_without_an_encryption_key_is_a_clear_error(tmp_path):
    ring = KeyRing(tmp_path / "keys")  # development: plaintext files
    ring.ensure()
    with pytest.raises(KeyRingError, match="IDP_KEY_ENCRYPTION_KEY is not set"):
        ring.rekey()


@contextmanager
def warnings_of(logger: str):
    """The warnings ``logger`` emits, as formatted (before the app's log masking on the root handlers)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(logger).removeHandler(handler)


def test_plaintext_ring_is_encrypted_at_start_once_a_key_is_set(tmp_path, enc_key):
    plain = KeyRing(tmp_path / "keys")
    plain.ensure()
    plain.rotate("RS256", retire_after=3600)          # a retired key is encrypted too
    before = {r["kid"]: r for r in plain.list()}
    private = {kid: plain._keys[kid].as_dict(private=True) for kid in before}
    signing = {alg: plain.signing_key(alg).kid for alg in ALGS}

    with warnings_of("app.keys") as warnings:
        ring = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key))
        ring.ensure()
    assert len(warnings) == 5 and all(sum(kid in w for w in warnings) == 1 for kid in before), warnings
    assert not any(value in w for w in warnings for jwk in private.values() for m, value in jwk.items() if m in PRIVATE)

    assert {r["kid"]: r for r in ring.list()} == before                  # same keys, same states
    for kid in before:
        path = tmp_path / "keys" / f"{kid}.json"
        doc = json.loads(path.read_text())
        assert set(doc) == {"kid", "alg", "encrypted"} and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert ring._keys[kid].as_dict(private=True) == private[kid]
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == sorted(
        ["keyring.json"] + [kid + ".json" for kid in before])       # no temp files left
    for alg in ALGS:
        key = ring.signing_key(alg)
        assert key.kid == signing[alg]
        token = jws.serialize_compact({"alg": alg, "kid": key.kid}, b"x", key)
        assert jws.deserialize_compact(token, plain.verification_keys(), algorithms=[alg]).payload == b"x"

    # Done once: the next start has nothing to re-write.
    with warnings_of("app.keys") as warnings:
        KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key)).ensure()
    assert warnings == []


def test_a_plaintext_key_planted_in_an_encrypted_ring_is_refused(tmp_path, enc_key):
    """Whoever can write to the folder but lacks IDP_KEY_ENCRYPTION_KEY cannot choose the signing key."""
    ring = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key), stat_interval=0)
    ring.ensure()
    honest = ring.signing_key("RS256").kid
    planted = KeyRing(tmp_path / "planted")
    planted.ensure()
    evil = planted.signing_key("RS256")
    # The attacker writes their own key in plaintext and names it the current RS256 key.
    (tmp_path / "keys" / f"{evil.kid}.json").write_text(json.dumps(evil.as_dict(private=True)))
    doc = json.loads((tmp_path / "keys" / "keyring.json").read_text())
    for e in doc["keys"]:
        if e["alg"] == "RS256" and e["state"] == "current":
            e["kid"] = evil.kid
    (tmp_path / "keys" / "keyring.json").write_text(json.dumps(doc))

    assert ring.signing_key("RS256").kid == honest          # a running process keeps the keys it had
    assert evil.kid not in {k["kid"] for k in ring.public_jwks()["keys"]}
    with pytest.raises(KeyRingError, match="mixes encrypted key files with plaintext ones"):
        KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key)).ensure()   # and a new one will not start
    assert "encrypted" not in json.loads((tmp_path / "keys" / f"{evil.kid}.json").read_text())  # nor encrypt it


def test_production_mode_refuses_the_files_store_without_an_encryption_key(make_app, tmp_path, enc_key):
    prod = {"IDP_ISSUER": "https://id.example.com", "SECRET_KEY": secrets.token_urlsafe(40),
            "IDP_KEYS_DIR": str(tmp_path / "keys")}
    with pytest.raises(ConfigError, match="IDP_KEY_ENCRYPTION_KEY must be set when IDP_KEYS_STORE=files"):
        make_app(**prod)
    assert not (tmp_path / "keys").exists()                           # refused before writing any key
    app = make_app(**prod, IDP_KEY_ENCRYPTION_KEY=enc_key)
    ring = app.extensions["idp_keys"]
    for r in ring.list():
        assert "encrypted" in json.loads((tmp_path / "keys" / f"{r['kid']}.json").read_text())
    # Development mode still runs without a key, on plaintext files as before.
    dev = make_app(IDP_KEYS_DIR=str(tmp_path / "dev-keys"))
    for r in dev.extensions["idp_keys"].list():
        assert "d" in json.loads((tmp_path / "dev-keys" / f"{r['kid']}.json").read_text())


def test_rotation_across_two_processes_with_encryption(tmp_path, enc_key):
    a = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key), stat_interval=0)
    b = KeyRing(tmp_path / "keys", encryption_key=aes_key(enc_key), stat_interval=0)
    a.ensure()
    b.ensure()
    assert b.public_jwks() == a.public_jwks()
    old = {alg: a.signing_key(alg).kid for alg in ALGS}

    done = b.rotate(retire_after=3600)
    for d in done:
        assert a.signing_key(d["alg"]).kid == d["current"] == b.signing_key(d["alg"]).kid
        token = jws.serialize_compact({"alg": d["alg"], "kid": d["current"]}, b"x", a.signing_key(d["alg"]))
        assert jws.deserialize_compact(token, b.verification_keys(), algorithms=[d["alg"]]).payload == b"x"
        assert "encrypted" in json.loads((tmp_path / "keys" / f"{d['next']}.json").read_text())
    assert a.public_jwks() == b.public_jwks() and set(old.values()) <= set(kids(a.public_jwks()))
    assert sorted(a.retire(old["ES256"])) == [old["ES256"]]
    assert old["ES256"] not in kids(b.public_jwks())
    assert not (tmp_path / "keys" / f"{old['ES256']}.json").exists()
