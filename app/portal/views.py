"""Account centre home."""

from flask import g, render_template

from . import bp, login_required


@bp.get("")
@login_required
def index():
    return render_template("portal/index.html", user=g.user)
