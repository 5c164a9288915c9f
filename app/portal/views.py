"""Account centre home."""

from . import bp, login_required


@bp.get("")
@login_required
def index():
    from .profile import render_index  # the profile and email forms

    return render_index()
