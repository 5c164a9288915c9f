"""Blueprint "oauth2": /authorize, /token, /introspect, /revoke. Thin: protocol rules live in authorize.py and server.py."""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Blueprint, current_app, request
from flask_babel import gettext as _
from werkzeug.datastructures import MultiDict

from .. import interactions
from ..errors import error_page, json_error
from ..extensions import csrf, limiter
from . import authorize as authz
from .server import refuse_repeated_parameters

bp = Blueprint("oauth2", __name__)


def _server():
    return current_app.extensions["idp_authorization_server"]


@bp.route("/authorize", methods=["GET", "POST"])
@csrf.exempt
def authorize():
    params = request.args if request.method == "GET" else request.form
    return authz.handle(MultiDict(params.items(multi=True)))


@bp.get("/authorize/resume")
def resume():
    interaction = interactions.load(request.args.get("interaction"))
    if interaction is None:
        return error_page(_("This sign-in request has expired"),
                          _("Go back to the app and start signing in again."), 400)
    return authz.handle(MultiDict(interaction["params"]), interaction)


def _form_endpoint(call):
    """Common checks of the token-like endpoints: POST form body, no repeated parameters."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return json_error("invalid_request", "Content-Type must be application/x-www-form-urlencoded", 400)
    try:
        refuse_repeated_parameters()
    except OAuth2Error as e:
        return json_error(e.error, e.description, 400)
    resp = call()
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _token_limit():
    return current_app.config["IDP_RATELIMIT_TOKEN"]


@bp.post("/token")
@csrf.exempt
@limiter.limit(_token_limit)
def token():
    return _form_endpoint(lambda: _server().create_token_response())


@bp.post("/introspect")
@csrf.exempt
@limiter.limit(_token_limit)
def introspect():
    return _form_endpoint(lambda: _server().create_endpoint_response("introspection"))


@bp.post("/revoke")
@csrf.exempt
@limiter.limit(_token_limit)
def revoke():
    return _form_endpoint(lambda: _server().create_endpoint_response("revocation"))


def init_app(app) -> None:
    from .server import build_server

    app.extensions["idp_authorization_server"] = build_server(app)
    app.register_blueprint(bp)
