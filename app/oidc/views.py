"""Blueprint "oidc": discovery, JWKS, userinfo, logout."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..extensions import csrf
from ..keys import keyring
from . import discovery, logout
from .userinfo import userinfo as _userinfo

bp = Blueprint("oidc", __name__)


def _json_bytes(body: bytes, max_age: int) -> Response:
    resp = Response(body, mimetype="application/json")
    resp.headers["Cache-Control"] = f"public, max-age={max_age}"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.get("/.well-known/openid-configuration")
def openid_configuration():
    return _json_bytes(current_app.extensions["idp_discovery"], 3600)


@bp.get("/.well-known/oauth-authorization-server")
def oauth_authorization_server():
    return _json_bytes(current_app.extensions["idp_oauth_metadata"], 3600)


@bp.get("/jwks.json")
def jwks():
    return _json_bytes(keyring().public_jwks_json(), 300)


@bp.route("/userinfo", methods=["GET", "POST"])
@csrf.exempt
def userinfo():
    resp = _userinfo()
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@bp.route("/logout", methods=["GET", "POST"])
@csrf.exempt
def end_session():
    return logout.end_session()


@bp.post("/logout/confirm")
def logout_confirm():
    return logout.confirm()


def init_app(app) -> None:
    app.register_blueprint(bp)
    from . import backchannel; backchannel.init_app(app)  # noqa: E702 - logout tokens, outbox worker
    with app.app_context():
        discovery.build(app)
