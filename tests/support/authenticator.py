"""A software WebAuthn authenticator (with its "client", the browser part) built on fido2's data classes.

It answers the server's options with the same JSON a browser's
``PublicKeyCredential.toJSON()`` produces (WebAuthn Level 3 §5.1), signing with
real P-256 keys, so the server's real verification runs. Every knob a test
needs to provoke a refusal is a keyword: origin, RP ID, flags (UP/UV/BE/BS),
the signature counter, the credential to use.

    auth = SoftAuthenticator()
    reg = auth.create(options)                 # navigator.credentials.create()
    assertion = auth.get(options)              # navigator.credentials.get(), discoverable
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorAssertionResponse,
    AuthenticatorAttestationResponse,
    AuthenticatorData,
    AuthenticationResponse,
    CollectedClientData,
    RegistrationResponse,
)

F = AuthenticatorData.FLAG


@dataclass
class StoredCredential:
    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    counter: int = 0

    @property
    def id(self) -> str:
        return websafe_encode(self.credential_id)


@dataclass
class SoftAuthenticator:
    origin: str = "http://localhost"
    rp_id: str = "localhost"
    backup_eligible: bool = False      # a synced passkey sets BE (and BS)
    aaguid: bytes = bytes(16)
    counter_step: int = 1              # 0 = an authenticator without a counter (like most synced passkeys)
    credentials: dict[str, StoredCredential] = field(default_factory=dict)

    def _flags(self, *, up: bool, uv: bool) -> F:
        flags = F(0)
        if up:
            flags |= F.UP
        if uv:
            flags |= F.UV
        if self.backup_eligible:
            flags |= F.BE | F.BS
        return flags

    def create(self, options: dict, *, origin: str | None = None, rp_id: str | None = None, up: bool = True,
               uv: bool = True, challenge: str | None = None) -> dict:
        """A registration response (attestation "none") to PublicKeyCredentialCreationOptionsJSON."""
        rp = rp_id or options["rp"]["id"]
        key = ec.generate_private_key(ec.SECP256R1())
        cred = StoredCredential(os.urandom(32), key, rp, websafe_decode(options["user"]["id"]))
        cred.counter = self.counter_step and 1
        self.credentials[cred.id] = cred
        attested = AttestedCredentialData.create(self.aaguid, cred.credential_id,
                                                 ES256.from_cryptography_key(key.public_key()))
        auth_data = AuthenticatorData.create(hashlib.sha256(rp.encode()).digest(), self._flags(up=up, uv=uv) | F.AT,
                                             cred.counter, attested)
        client_data = CollectedClientData.create("webauthn.create", challenge or options["challenge"],
                                                 origin or self.origin)
        response = RegistrationResponse(
            raw_id=cred.credential_id,
            response=AuthenticatorAttestationResponse(
                client_data=client_data, attestation_object=AttestationObject.create("none", auth_data, {})),
            authenticator_attachment="platform",
        )
        out = dict(response)
        out["response"] = dict(out["response"]) | {"transports": ["internal", "hybrid"]}
        return out

    def get(self, options: dict, *, credential_id: str | None = None, origin: str | None = None,
            rp_id: str | None = None, up: bool = True, uv: bool = True, counter: int | None = None,
            challenge: str | None = None) -> dict:
        """An assertion for ``credential_id`` (default: the newest discoverable credential for the RP)."""
        rp = rp_id or options.get("rpId") or self.rp_id
        cred = self.credentials[credential_id] if credential_id else list(self.credentials.values())[-1]
        if counter is None:
            cred.counter += self.counter_step
            counter = cred.counter
        auth_data = AuthenticatorData.create(hashlib.sha256(rp.encode()).digest(), self._flags(up=up, uv=uv), counter)
        client_data = CollectedClientData.create("webauthn.get", challenge or options["challenge"],
                                                 origin or self.origin)
        signature = cred.private_key.sign(bytes(auth_data) + client_data.hash, ec.ECDSA(hashes.SHA256()))
        response = AuthenticationResponse(
            raw_id=cred.credential_id,
            response=AuthenticatorAssertionResponse(client_data=client_data, authenticator_data=auth_data,
                                                    signature=signature, user_handle=cred.user_handle),
            authenticator_attachment="platform",
        )
        out = dict(response)
        out["response"] = dict(out["response"])
        return out
