"""Blueprint "web": the home page and the built-in demo app that shows a complete sign-in.

The demo is an ordinary public client of this server (PKCE, state, nonce). It
talks to the token and userinfo endpoints through the WSGI stack in-process,
exactly as an external app would over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import urlencode

from flask import Blueprint, current_app, redirect, render_template, request, session
from flask_babel import gettext as _
from joserfc import jwt

from ..accounts import sessions
from ..crypto import random_token, same
from ..errors import error_page
from ..keys import keyring

bp = Blueprint("web", __name__)
DEMO_CLIENT_ID = "demo-app"


def demo_redirect_uri() -> str:
    return current_app.config["IDP_ISSUER"] + "/demo/callback"


@bp.get("/")
def home():
    current = sessions.current()
    return render_template("web/home.html", user=current.user if current else None,
                           demo=current_app.config["IDP_DEV_MODE"],
                           issuer=current_app.config["IDP_ISSUER"])


@bp.get("/demo/start")
def demo_start():
    if not current_app.config["IDP_DEV_MODE"]:
        return error_page(_("Page not found"), _("Check the address and try again."), 404)
    verifier = random_token(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    session["demo"] = {"state": random_token(16), "nonce": random_token(16), "verifier": verifier}
    params = {"response_type": "code", "client_id": DEMO_CLIENT_ID, "redirect_uri": demo_redirect_uri(),
              "scope": "openid profile email offline_access", "state": session["demo"]["state"],
              "nonce": session["demo"]["nonce"], "code_challenge": challenge, "code_challenge_method": "S256"}
    if request.args.get("prompt") in ("login", "consent"):
        params["prompt"] = request.args["prompt"]
    return redirect("/authorize?" + urlencode(params), code=303)


@bp.get("/demo/callback")
def demo_callback():
    demo = session.pop("demo", None)
    if not demo or not same(request.args.get("state", ""), demo["state"]):
        return error_page(_("The demo sign-in expired"), _("Start the demo again from the home page."), 400)
    if "error" in request.args:
        return render_template("web/demo_result.html", error=request.args["error"],
                               description=request.args.get("error_description", ""))
    client = current_app.test_client()
    resp = client.post("/token", data={"grant_type": "authorization_code", "code": request.args.get("code", ""),
                                       "redirect_uri": demo_redirect_uri(), "client_id": DEMO_CLIENT_ID,
                                       "code_verifier": demo["verifier"]})
    tokens = resp.get_json(silent=True) or {}
    if resp.status_code != 200:
        return render_template("web/demo_result.html", error=tokens.get("error", "server_error"),
                               description=tokens.get("error_description", ""))
    id_token = jwt.decode(tokens["id_token"], keyring().verification_keys(), algorithms=["RS256", "ES256"])
    nonce_ok = id_token.claims.get("nonce") == demo["nonce"]
    access = jwt.decode(tokens["access_token"], keyring().verification_keys(), algorithms=["RS256", "ES256"])
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).get_json()
    return render_template(
        "web/demo_result.html", nonce_ok=nonce_ok,
        id_token_header=json.dumps(id_token.header, indent=2),
        id_token_claims=json.dumps(id_token.claims, indent=2),
        access_token_claims=json.dumps(access.claims, indent=2),
        userinfo=json.dumps(info, indent=2), has_refresh="refresh_token" in tokens,
    )


def init_app(app) -> None:
    app.register_blueprint(bp)
