"""Connected apps: what each app may use; withdraw one item, one item everywhere, or everything."""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..consent import purposes, service
from ..oidc import claims as oidc_claims
from . import bp, login_required


def describe(item: str) -> str:
    p = purposes.get(item)
    if p is not None:
        return p.text("title")
    if item.startswith("claim:"):
        return str(oidc_claims.CLAIM_TEXT.get(item[6:], item[6:]))
    return str(oidc_claims.SCOPE_TEXT.get(item, item))


@bp.get("/apps")
@login_required
def apps():
    connected = service.connected_apps(g.user)
    everywhere = sorted({i for app in connected for i in app["items"]})
    return render_template("portal/apps.html", apps=connected, describe=describe, everywhere=everywhere)


@bp.post("/apps/withdraw")
@login_required
def withdraw():
    """One form for the three withdrawals: (app, item), (item, every app), (app, everything)."""
    client_id = request.form.get("client_id") or None
    item = request.form.get("item") or None
    if client_id is None and item is None:
        flash(_("Choose what to stop sharing."))
        return redirect(url_for("portal.apps"), code=303)
    events = service.withdraw(g.user, client_id=client_id, item=item, channel="account_centre")
    if events:
        flash(_("Done. The change applies to the app right away."))
    return redirect(url_for("portal.apps"), code=303)
