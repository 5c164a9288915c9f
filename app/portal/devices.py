"""Devices signed in with a code (OAuth 2.0 Device Authorization Grant, RFC 8628): list them, sign one out.

A device sign-in is a token family whose first issuance came from the device
grant; refreshes continue the family under ``refresh_token``. Signing a device
out revokes every token of those families (``revoked_at``): the device's next
refresh fails and its access token stops working at userinfo and
introspection. Consent is left as it is: the customer withdraws it under
Connected apps.
"""

from __future__ import annotations

import time

from flask import flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import audit
from ..device import DEVICE_CODE_GRANT_TYPE
from ..extensions import db
from ..oauth2 import tokens
from ..oauth2.models import Client, Token
from . import bp, login_required


def _families(user_id: int, client_id: str | None = None):
    query = db.select(Token.family_id).where(Token.user_id == user_id, Token.grant_type == DEVICE_CODE_GRANT_TYPE)
    if client_id is not None:
        query = query.where(Token.client_id == client_id)
    return query.distinct()


def signed_in_devices(user) -> list[dict]:
    """Per app: when a device first signed in with a code, and when it last got tokens. Only live ones."""
    now = int(time.time())
    rows = db.session.execute(db.select(Token).where(Token.user_id == user.id,
                                                     Token.family_id.in_(_families(user.id)))).scalars().all()
    families: dict[str, list[Token]] = {}
    for row in rows:
        families.setdefault(row.family_id, []).append(row)
    apps: dict[str, dict] = {}
    for family in families.values():
        if not any(r.access_active(now) or r.refresh_active(now) for r in family):
            continue
        start = min(r.issued_at for r in family if r.grant_type == DEVICE_CODE_GRANT_TYPE)
        entry = apps.setdefault(family[0].client_id, {"client_id": family[0].client_id, "signed_in_at": start,
                                                      "last_used_at": 0, "count": 0})
        entry["signed_in_at"] = min(entry["signed_in_at"], start)
        entry["last_used_at"] = max(entry["last_used_at"], max(r.issued_at for r in family))
        entry["count"] += 1
    if not apps:
        return []
    clients = {c.client_id: c for c in db.session.execute(
        db.select(Client).where(Client.client_id.in_(list(apps)))).scalars()}
    out = []
    for cid, entry in apps.items():
        client = clients.get(cid)
        if client is not None:
            out.append({**entry, "client_name": client.client_name, "logo_uri": client.meta.get("logo_uri")})
    return sorted(out, key=lambda e: -e["last_used_at"])


@bp.get("/devices", endpoint="devices")
@login_required
def devices():
    return render_template("portal/devices.html", devices=signed_in_devices(g.user))


@bp.post("/devices/sign-out", endpoint="device_sign_out")
@login_required
def sign_out():
    client_id = request.form.get("client_id", "")[:64]
    if tokens.revoke_where(Token.user_id == g.user.id, Token.client_id == client_id,
                           Token.family_id.in_(_families(g.user.id, client_id))):
        audit.record(g.user, "device_signed_out", commit=False, client_id=client_id, channel="account_centre")
        flash(_("The device was signed out. It must be given a new code to sign in again."))
    else:
        flash(_("That device is already signed out."))
    db.session.commit()
    return redirect(url_for("portal.devices"), code=303)


@bp.get("/devices/continue", endpoint="device_continue")
@login_required
def continue_device_sign_in():
    """Where the sign-in page returns to (it only allows /account paths) on the way to /device/confirm."""
    return redirect(url_for("device.confirm"), code=303)
