"""WebAuthn Level 3 ceremonies (§7.1 registration, §7.2 authentication) on top of py_webauthn.

py_webauthn does the cryptography and the full verification; this module adds
what it leaves to the relying party, and turns every refusal into a
``PasskeyError`` with a stable code and a sentence a customer can read:

* Challenges are single-use and short-lived (``IDP_PASSKEY_CHALLENGE_TTL``,
  default 300 s). They live in the shared store (never in process memory) under
  the challenge itself, together with the browser id of the Flask session that
  asked for them, so any app node can finish a ceremony another node began,
  and only the browser that began it.
* RP ID = hostname of ``IDP_ISSUER``; expected origin = its scheme://host[:port].
* Discoverable credentials (resident key required), user verification required,
  attestation "none".
* The origin, RP ID, user verification and challenge are checked here first, so
  each gets its own error code; py_webauthn then checks everything again.
* A sign count that does not increase (when either side is non-zero) is refused
  and logged, after the signature has been verified (so the warning means a
  possibly cloned authenticator, not a malformed request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_attestation_object,
    parse_authenticator_data,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from ..crypto import random_token, same
from ..store import store

log = logging.getLogger(__name__)
PREFIX = "passkey:challenge:"
_B64URL = re.compile(r"[A-Za-z0-9_-]{16,1400}")
TRANSPORTS = {"usb", "nfc", "ble", "internal", "hybrid", "smart-card"}

# A few well-known passkey providers (community list "passkey-authenticator-aaguids"), for a default name.
KNOWN_AAGUIDS = {
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "adce0002-35bc-c60a-648b-0b25f1f05503": "Chrome on Mac",
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",
    "dd4ec289-e01d-41c9-bb89-70fa845d4bf2": "iCloud Keychain",
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "9ddd1817-af5a-4672-a2b9-3e3dd95000a9": "Windows Hello",
    "6028b017-b1d4-4c02-b4b3-afcdafc96bb2": "Windows Hello",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
    "531126d6-e717-415c-9320-3d9aa6981239": "Dashlane",
    "53414d53-554e-4700-0000-000000000000": "Samsung Pass",
}


class PasskeyError(Exception):
    """A refused ceremony: ``code`` for programs, ``message`` (English msgid) for people."""

    def __init__(self, code: str, message: str, status: int = 400, **extra):
        super().__init__(code)
        self.code, self.message, self.status, self.extra = code, message, status, extra


def N_(message: str) -> str:
    """Mark for extraction; translated where shown (views)."""
    return message


@dataclass
class NewCredential:
    credential_id: str
    public_key: bytes
    sign_count: int
    transports: list[str]
    aaguid: str
    backup_eligible: bool
    backup_state: bool


@dataclass
class Assertion:
    credential_id: str
    user_handle: bytes | None
    new_sign_count: int
    backup_state: bool


# -- relying party --------------------------------------------------------------------------------------------------

def rp_id() -> str:
    return urlsplit(current_app.config["IDP_ISSUER"]).hostname


def expected_origin() -> str:
    """scheme://host[:port] of the issuer (a path in the issuer is not part of the origin)."""
    parts = urlsplit(current_app.config["IDP_ISSUER"])
    host = parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def rp_name() -> str:
    return current_app.config.get("IDP_CONTROLLER_NAME") or rp_id()


def default_name(aaguid: str | None) -> str:
    return KNOWN_AAGUIDS.get((aaguid or "").lower(), "Passkey")


# -- challenges -----------------------------------------------------------------------------------------------------

def _ttl() -> int:
    return int(current_app.config.get("IDP_PASSKEY_CHALLENGE_TTL", 300))


def browser_id() -> str:
    """The random id of this browser's Flask session (the same one interactions are bound to)."""
    if "bid" not in session:
        session["bid"] = random_token(16)
    return session["bid"]


def _remember(challenge: bytes, state: dict) -> None:
    store().put(PREFIX + bytes_to_base64url(challenge), {**state, "bid": browser_id()}, _ttl())


def _take(challenge_b64: str, kind: str) -> tuple[bytes, dict]:
    """Use up a challenge: exactly once, in the browser that asked for it, for the ceremony it was made for."""
    if not isinstance(challenge_b64, str) or not _B64URL.fullmatch(challenge_b64):
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again."))
    state, first_use = store().consume(PREFIX + challenge_b64)
    if state is None or not same(state.get("bid", ""), session.get("bid", "")) or state.get("kind") != kind:
        raise PasskeyError("challenge_expired", N_("This passkey request has expired. Try again."))
    if not first_use:
        raise PasskeyError("challenge_replayed", N_("This passkey response was already used. Try again."))
    return base64url_to_bytes(challenge_b64), state


def cancel(challenge_b64: str, kind: str) -> None:
    """The customer cancelled (or the browser gave up): the challenge is spent."""
    _take(challenge_b64, kind)


# -- parsing helpers ------------------------------------------------------------------------------------------------

def _b64(value) -> bytes:
    if not isinstance(value, str) or len(value) > 65536:
        raise ValueError("not base64url")
    return base64url_to_bytes(value)


def _client_data(credential) -> dict:
    try:
        data = json.loads(_b64(credential["response"]["clientDataJSON"]))
        if not isinstance(data, dict):
            raise ValueError("client data is not an object")
        return data
    except (KeyError, TypeError, ValueError) as exc:
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again.")) from exc


def _credential_id(credential) -> str:
    cid = credential.get("rawId") or credential.get("id") if isinstance(credential, dict) else None
    if not isinstance(cid, str) or not _B64URL.fullmatch(cid) or credential.get("id", cid) != cid:
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again."))
    return cid


def _check_client_data(data: dict, ceremony_type: str) -> None:
    if data.get("type") != ceremony_type:
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again."))
    if data.get("origin") != expected_origin() or data.get("crossOrigin") is True:
        raise PasskeyError("wrong_origin", N_("This passkey response was made for another website."))


def _check_flags(auth_data) -> None:
    if auth_data.rp_id_hash != hashlib.sha256(rp_id().encode()).digest():
        raise PasskeyError("wrong_rp_id", N_("This passkey belongs to another website."))
    if not auth_data.flags.up:
        raise PasskeyError("user_presence_required", N_("Your authenticator did not confirm you were present."))
    if not auth_data.flags.uv:
        raise PasskeyError("user_verification_required",
                           N_("Your passkey must check it is you (with a PIN, fingerprint or face). Try again."))


def _invalid(exc: Exception) -> PasskeyError:
    log.info("passkey response refused by verification: %s", type(exc).__name__)
    return PasskeyError("invalid_response", N_("This passkey response could not be verified. Try again."))


# -- registration ---------------------------------------------------------------------------------------------------

def registration_options(*, user_handle: bytes, user_name: str, display_name: str,
                         exclude: list[str], state: dict) -> dict:
    options = generate_registration_options(
        rp_id=rp_id(), rp_name=rp_name(), user_id=user_handle, user_name=user_name,
        user_display_name=display_name or user_name, timeout=_ttl() * 1000,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, require_resident_key=True,
            user_verification=UserVerificationRequirement.REQUIRED),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in exclude],
    )
    _remember(options.challenge, {**state, "kind": "register"})
    return json.loads(options_to_json(options))


def finish_registration(credential) -> tuple[NewCredential, dict]:
    """Verify navigator.credentials.create()'s response; returns the credential and the ceremony's state."""
    if not isinstance(credential, dict):
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again."))
    data = _client_data(credential)
    challenge, state = _take(data.get("challenge"), "register")
    _check_client_data(data, "webauthn.create")
    cid = _credential_id(credential)
    try:
        att = parse_attestation_object(_b64(credential["response"]["attestationObject"]))
    except (KeyError, TypeError, ValueError, WebAuthnException) as exc:
        raise _invalid(exc) from exc
    _check_flags(att.auth_data)
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp_id(),
            expected_origin=expected_origin(), require_user_verification=True)
    except (WebAuthnException, KeyError, TypeError, ValueError) as exc:
        raise _invalid(exc) from exc
    if bytes_to_base64url(verified.credential_id) != cid:
        raise _invalid(ValueError("credential id mismatch"))
    transports = credential.get("response", {}).get("transports") or []
    flags = att.auth_data.flags
    return NewCredential(
        credential_id=cid, public_key=verified.credential_public_key, sign_count=verified.sign_count,
        transports=[t for t in transports if isinstance(t, str) and t in TRANSPORTS][:6],
        aaguid=verified.aaguid, backup_eligible=bool(flags.be), backup_state=bool(flags.bs),
    ), state


# -- authentication -------------------------------------------------------------------------------------------------

def authentication_options(state: dict) -> dict:
    """Username-less: an empty allowCredentials lets the authenticator offer its discoverable credentials."""
    options = generate_authentication_options(
        rp_id=rp_id(), timeout=_ttl() * 1000, allow_credentials=[],
        user_verification=UserVerificationRequirement.REQUIRED)
    _remember(options.challenge, {**state, "kind": "login"})
    return json.loads(options_to_json(options))


def begin_assertion(credential) -> tuple[str, bytes, dict]:
    """First half of §7.2: use up the challenge and check origin; returns (credential id, challenge, state)."""
    if not isinstance(credential, dict):
        raise PasskeyError("invalid_response", N_("The passkey response could not be read. Try again."))
    data = _client_data(credential)
    challenge, state = _take(data.get("challenge"), "login")
    _check_client_data(data, "webauthn.get")
    return _credential_id(credential), challenge, state


def finish_assertion(credential: dict, challenge: bytes, *, public_key: bytes, stored_sign_count: int,
                     log_ref: str) -> Assertion:
    """Second half: flags, signature (py_webauthn), then the sign counter (WebAuthn §6.1.1)."""
    try:
        auth_data = parse_authenticator_data(_b64(credential["response"]["authenticatorData"]))
    except (KeyError, TypeError, ValueError, WebAuthnException) as exc:
        raise _invalid(exc) from exc
    _check_flags(auth_data)
    try:
        # Counter checked below, after the signature, so a warning is only ever logged for an authentic response.
        verified = verify_authentication_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp_id(),
            expected_origin=expected_origin(), credential_public_key=public_key,
            credential_current_sign_count=0, require_user_verification=True)
    except (WebAuthnException, KeyError, TypeError, ValueError) as exc:
        raise _invalid(exc) from exc
    new = verified.new_sign_count
    if (new > 0 or stored_sign_count > 0) and new <= stored_sign_count:
        log.warning("passkey sign-count regression refused credential=%s stored=%d received=%d (possible clone)",
                    log_ref, stored_sign_count, new)
        raise PasskeyError("sign_count_regression",
                           N_("This passkey could not be trusted. Use another passkey or your password."))
    handle = credential.get("response", {}).get("userHandle")
    try:
        user_handle = _b64(handle) if handle else None
    except ValueError as exc:
        raise _invalid(exc) from exc
    return Assertion(credential_id=_credential_id(credential), user_handle=user_handle, new_sign_count=new,
                     backup_state=bool(auth_data.flags.bs))
