"""Sessions and devices: the customer's live single sign-on sessions; sign out one or all.

Ending a session goes through ``accounts.sessions.end`` (which tells the apps
of that session through back-channel logout, OpenID Connect Back-Channel
Logout 1.0) and is recorded in the audit log.
"""

from __future__ import annotations

import re
import time

from flask import flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import audit, geo
from ..accounts import sessions
from ..accounts.models import LoginSession
from ..extensions import db
from . import bp, login_required

# Order matters: many browsers also name the engines they are compatible with
# (Edge and Opera say "Chrome", Chrome says "Safari"), so the most specific token wins.
_BROWSERS = (
    ("Edge", re.compile(r"\b(?:Edg|Edge|EdgA|EdgiOS)/")),
    ("Opera", re.compile(r"\b(?:OPR|Opera|OPT)/|Opera")),
    ("Samsung Internet", re.compile(r"SamsungBrowser/")),
    ("Yandex Browser", re.compile(r"YaBrowser/")),
    ("Vivaldi", re.compile(r"Vivaldi/")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/")),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS|Chromium)/")),
    ("Safari", re.compile(r"Version/[\d.]+.*Safari/|Mobile/\w+ Safari/")),
    ("Internet Explorer", re.compile(r"MSIE |Trident/")),
    ("curl", re.compile(r"^curl/")),
)
_SYSTEMS = (
    ("Android", re.compile(r"Android")),
    ("iPhone", re.compile(r"iPhone|iPod")),
    ("iPad", re.compile(r"iPad")),
    ("ChromeOS", re.compile(r"CrOS")),
    ("Windows", re.compile(r"Windows")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("Linux", re.compile(r"Linux|X11")),
)


def describe_device(user_agent: str | None) -> str:
    """A short description such as "Chrome on Windows" from a User-Agent string (no dependency)."""
    ua = user_agent or ""
    browser = next((name for name, pattern in _BROWSERS if pattern.search(ua)), None)
    system = next((name for name, pattern in _SYSTEMS if pattern.search(ua)), None)
    if browser and system:
        return _("%(browser)s on %(system)s", browser=browser, system=system)
    if browser:
        return browser
    if system:
        return _("A browser on %(system)s", system=system)
    return _("Unknown device")


def active_sessions(user) -> list[LoginSession]:
    """Sessions that still sign this customer in: not ended, not expired; most recently used first."""
    now = int(time.time())
    return list(db.session.execute(
        db.select(LoginSession)
        .where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None), LoginSession.expires_at > now)
        .order_by(LoginSession.last_seen_at.desc(), LoginSession.created_at.desc())
    ).scalars())


@bp.get("/sessions", endpoint="sessions")
@login_required
def sessions_page():
    rows = active_sessions(g.user)
    rows.sort(key=lambda r: r.id != g.session.id)  # this device first; otherwise most recent first
    entries = [{"sid": r.id, "device": describe_device(r.user_agent), "created_at": r.created_at,
                "last_seen_at": r.last_seen_at, "ip": r.ip, "place": geo.place(r.ip),
                "current": r.id == g.session.id} for r in rows]
    return render_template("portal/sessions.html", sessions=entries)


def _end(row: LoginSession, how: str) -> None:
    # The audit row rides in the same commit as the end of the session.
    audit.record(g.user, "session_ended", commit=False, sid=row.id, channel="account_centre", scope=how)
    sessions.end(row)
    db.session.commit()


def _signed_out(message: str):
    """This browser has no session any more: say so here (the sign-in page shows no messages)."""
    return render_template("portal/goodbye.html", title=_("You are signed out"), message=message,
                           sign_in=True)


@bp.post("/sessions/end")
@login_required
def end_session():
    """``sid`` = one session of this customer, or ``all`` (this browser included: it is signed out too)."""
    sid = request.form.get("sid", "")
    if sid == "all":
        for row in active_sessions(g.user):
            _end(row, "all")
        return _signed_out(_("You were signed out on every device, including this one."))
    row = next((r for r in active_sessions(g.user) if r.id == sid), None)
    if row is None:
        # Someone else's sid, a stale page or an ended session: the same answer, nothing changes.
        flash(_("That session has already ended."))
        return redirect(url_for("portal.sessions"), code=303)
    this_device = row.id == g.session.id
    _end(row, "one")
    if this_device:
        return _signed_out(_("You were signed out on this device."))
    flash(_("The session on %(device)s was signed out.", device=describe_device(row.user_agent)))
    return redirect(url_for("portal.sessions"), code=303)
