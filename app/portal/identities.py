"""Linked sign-in providers (/account/identities): list them, link another, unlink one.

The policy (who may link what, never removing the last way to sign in, the audit log) lives in
app/federation/linking.py; this page only shows it and starts the upstream flow in "link" mode.
Linking adds a way into the account, so it needs a sign-in within the last five minutes.
"""

from __future__ import annotations

from flask import flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..accounts.methods import sign_in_methods
from . import bp, login_required, recently_authenticated


@bp.get("/identities", endpoint="identities")
@login_required
def identities():
    from ..federation import linking, providers

    linked = linking.identities_of(g.user)
    configured = providers.all_providers()
    labels = {up.name: up.label for up in configured}
    kinds = {up.name: up.kind for up in configured}
    linked_names = {row.provider for row in linked}
    available = [up for up in configured if up.name not in linked_names]
    return render_template("portal/identities.html", linked=linked, labels=labels, kinds=kinds, available=available,
                           can_unlink=sign_in_methods(g.user) > 1, has_password=bool(g.user.password_hash))


@bp.post("/identities/link", endpoint="identities_link")
@login_required
def identities_link():
    from ..federation import flow, providers

    up = providers.get(request.form.get("provider"))
    if up is None:
        flash(_("This sign-in option is not available."))
        return redirect(url_for("portal.identities"), code=303)
    if not recently_authenticated():
        flash(_("For your security, sign in again before linking another account."))
        return redirect(url_for("accounts.login", next=url_for("portal.identities")), code=303)
    try:
        url = flow.start(up, mode="link", user_id=g.user.id)
    except providers.ProviderError:
        flash(_("%(name)s is not available right now. Please try again later.", name=up.label))
        return redirect(url_for("portal.identities"), code=303)
    return redirect(url, code=303)


@bp.post("/identities/unlink", endpoint="identities_unlink")
@login_required
def identities_unlink():
    from ..federation import linking, providers

    try:
        identity_id = int(request.form.get("identity", ""))
    except ValueError:
        identity_id = 0
    try:
        row = linking.unlink(g.user, identity_id)
    except linking.LinkError as exc:
        flash(_(str(exc)))
        return redirect(url_for("portal.identities"), code=303)
    up = providers.get(row.provider)
    flash(_("%(name)s is no longer linked to your account.", name=up.label if up else row.provider))
    return redirect(url_for("portal.identities"), code=303)
