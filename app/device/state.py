"""Device authorization state in the short-lived store (RFC 8628 §3.2-3.5).

Polling and approval may reach different nodes, so everything lives in
``app.store``; the device code itself is never stored, only its keyed hash
``h``. Keys (TTL = the request's lifetime unless noted):

* ``device:<h>`` — the request: app, scope, user code, device IP, times.
* ``user_code:<CODE>`` — points a typed code at ``h``; deleted once the
  customer decides, so a code is shown and decided once.
* ``device-poll:<h>`` — polling state (interval, last poll). It outlives the
  request by ``GRACE`` so a late poll learns ``expired_token`` rather than
  ``invalid_grant``.
* ``device-decision:<h>`` — the customer's answer, written with ``add``: the
  first decision wins, a second one (another tab, another node) is refused.
* ``device-used:<h>`` — written with ``add`` on redemption: a device code is
  exchanged for tokens exactly once, whichever node answers.

Separate keys keep writers apart: a poll rewriting its own record can never
overwrite an approval written at the same moment.
"""

from __future__ import annotations

import time

from authlib.oauth2.rfc6749.errors import AccessDeniedError, InvalidGrantError
from authlib.oauth2.rfc8628 import AuthorizationPendingError, ExpiredTokenError, SlowDownError
from flask import current_app

from ..crypto import keyed_hash, random_token, same
from ..store import store
from . import user_codes

INTERVAL = 5          # seconds between polls (RFC 8628 §3.2 default)
SLOW_DOWN_STEP = 5    # §3.5: "the interval MUST be increased by 5 seconds"
GRACE = 3600          # how long expiry and redemption are remembered after the lifetime
MAX_DEVICE_CODE = 128


def lifetime() -> int:
    """Lifetime of a device request, seconds (tests shorten it)."""
    return int(current_app.config.get("IDP_DEVICE_CODE_TTL", 600))


def _hash(device_code: str) -> str:
    return keyed_hash(device_code, "device-code")


def _remaining(expires_at: float) -> int:
    return max(1, int(expires_at - time.time()) + 1)


def create(client, scope: str, ip: str | None) -> dict:
    """Start a device request; returns the RFC 8628 §3.2 response members."""
    ttl = lifetime()
    now = time.time()
    device_code = random_token(32)  # 256 bits
    h = _hash(device_code)
    for _ in range(8):  # a collision among live codes is rare; ``add`` makes it harmless
        code = user_codes.generate()
        if store().add("user_code:" + code, {"device": h}, ttl):
            break
    else:
        raise RuntimeError("could not allocate a unique user code")
    store().put("device:" + h, {"client_id": client.client_id, "scope": scope, "user_code": code,
                                "ip": ip, "created_at": int(now), "expires_at": now + ttl}, ttl)
    store().put("device-poll:" + h, {"client_id": client.client_id, "expires_at": now + ttl,
                                     "interval": INTERVAL, "last_poll": None}, ttl + GRACE)
    issuer = current_app.config["IDP_ISSUER"]
    shown = user_codes.display(code)
    return {
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": issuer + "/device",
        "verification_uri_complete": f"{issuer}/device?user_code={shown}",
        "expires_in": ttl,
        "interval": INTERVAL,
    }


def pending(code: str | None) -> tuple[str, dict] | None:
    """``(h, request)`` of a live, undecided request for a normalised user code, else None."""
    if not code:
        return None
    ref = store().get("user_code:" + code)
    if ref is None:
        return None
    record = store().get("device:" + ref["device"])
    if record is None or record["user_code"] != code or record["expires_at"] <= time.time():
        return None
    return ref["device"], record


def decide(h: str, record: dict, *, approved: bool, user=None, session=None, scope: str = "") -> bool:
    """Record the customer's answer once. False if the request was decided (or ended) meanwhile."""
    if record["expires_at"] <= time.time():
        return False
    decision = {"approved": approved}
    if approved:
        decision.update(user_id=user.id, scope=scope, auth_time=session.auth_time, acr=session.acr,
                        amr=list(session.amr or []), sid=session.id, family_id=random_token(18))
    if not store().add("device-decision:" + h, decision, _remaining(record["expires_at"])):
        return False
    store().delete("user_code:" + record["user_code"])
    return True


def poll(device_code: str | None, client_id: str) -> dict:
    """One poll of the token endpoint (RFC 8628 §3.4-3.5): the approved decision, or an OAuth error."""
    if not device_code or len(device_code) > MAX_DEVICE_CODE:
        raise InvalidGrantError("The device code is not valid.")
    h = _hash(device_code)
    state = store().get("device-poll:" + h)
    if state is None or not same(state["client_id"], client_id):
        raise InvalidGrantError("The device code is not valid.")
    if store().get("device-used:" + h) is not None:
        raise InvalidGrantError("The device code was already used.")
    now = time.time()
    if now >= state["expires_at"]:
        raise ExpiredTokenError("The device code has expired; start again.")
    decision = store().get("device-decision:" + h)
    if decision is None:
        last, interval = state.get("last_poll"), state["interval"]
        too_fast = last is not None and now - last < interval
        if too_fast:
            interval = min(interval + SLOW_DOWN_STEP, lifetime())
        store().put("device-poll:" + h, {**state, "last_poll": now, "interval": interval},
                    _remaining(state["expires_at"]) + GRACE)
        if too_fast:
            raise SlowDownError(f"Poll at most every {interval} seconds.")
        raise AuthorizationPendingError("The customer has not answered yet.")
    if not decision["approved"]:
        raise AccessDeniedError("The customer denied the request.")
    if not store().add("device-used:" + h, {"at": int(now)}, _remaining(state["expires_at"]) + GRACE):
        raise InvalidGrantError("The device code was already used.")
    return decision


def interval_of(device_code: str) -> int | None:
    """The current polling interval of a device code (for tests and diagnostics)."""
    state = store().get("device-poll:" + _hash(device_code))
    return state["interval"] if state else None
