"""The authorization endpoint (RFC 6749 §4.1, OpenID Connect Core §3.1.2) as one ordered pipeline.

1. ``trusted_target``: the client and an exactly registered redirect URI. Until
   both are known every error is a page, never a redirect (RFC 6749 §4.1.2.1).
2. ``validate``: every other parameter; errors now go back to the app.
3. ``decide``: authentication (session, prompt, max_age, hints), then consent,
   each parking the request as an interaction when the customer must act.
4. ``issue``: the code, delivered by query or form_post, with ``iss`` (RFC 9207).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from flask import current_app, redirect, render_template, url_for
from flask_babel import gettext as _
from werkzeug.datastructures import MultiDict

from .. import interactions
from ..accounts import sessions
from ..consent import policy, purposes
from ..consent import service as consent_service
from ..errors import clean_description, error_page
from ..extensions import db, without_transaction
from ..http import allow_form_action, csp_nonce
from ..oidc import claims as oidc_claims
from . import clients, codes, tokens
from .models import Client, valid_client_id

PROMPTS = {"none", "login", "consent", "select_account"}
RESPONSE_MODES = {"query", "form_post"}
CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
MAX_VALUE = 4096
MAX_AGE = re.compile(r"^[0-9]{1,10}$")


class Reject(Exception):
    """An error shown to the customer; the app is not trusted with a redirect."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Redirect(Exception):
    """A protocol error sent back to the validated redirect URI."""

    def __init__(self, error: str, description: str):
        super().__init__(error)
        self.error, self.description = error, description


@dataclass
class AuthRequest:
    client: Client
    redirect_uri: str
    response_mode: str
    params: dict
    scopes: list[str] = field(default_factory=list)
    prompt: set[str] = field(default_factory=set)
    max_age: int | None = None
    claims: dict = field(default_factory=dict)
    hint_sub: str | None = None

    @property
    def state(self):
        return self.params.get("state")


def handle(params: MultiDict, interaction: dict | None = None):
    """Answer one authorization request (a fresh one, or one resumed from an interaction)."""
    # The decision only reads (app, session, consent), each read its own round trip; the code and the interaction
    # go to the short-lived store. A first-party app's consent record gets a transaction of its own (``issue``).
    without_transaction()
    try:
        client, redirect_uri = trusted_target(params)
    except Reject as r:
        return error_page(_("This sign-in link is not valid"), r.message, 400)
    mode = params.get("response_mode") if params.get("response_mode") in RESPONSE_MODES else "query"
    try:
        req = validate(params, client, redirect_uri, mode)
        return decide(req, interaction)
    except Redirect as e:
        if interaction:
            interactions.finish(interaction)
        out = [("error", e.error), ("error_description", clean_description(e.description))]
        return respond(redirect_uri, out, params.get("state"), mode)


def trusted_target(params: MultiDict) -> tuple[Client, str]:
    ids = params.getlist("client_id")
    if len(ids) != 1 or not valid_client_id(ids[0]):
        raise Reject(_("The app did not identify itself correctly."))
    # Read fresh, not from the client cache: a return address removed, or an app no longer first-party, applies
    # to the next sign-in.
    client = clients.read(ids[0])
    if client is None:
        raise Reject(_("The app that sent you here is not known to us."))
    uris = params.getlist("redirect_uri")
    if len(uris) > 1:
        raise Reject(_("The app sent an invalid return address."))
    if not uris:
        # OIDC requires redirect_uri; plain OAuth may omit it when exactly one is registered.
        if "openid" in (params.get("scope") or "").split() or len(client.redirect_uris) != 1:
            raise Reject(_("The app did not say where to return to."))
        return client, client.redirect_uris[0]
    if not client.check_redirect_uri(uris[0]):
        raise Reject(_("The app asked to return to an address it has not registered."))
    return client, uris[0]


def validate(params: MultiDict, client: Client, redirect_uri: str, mode: str) -> AuthRequest:
    for key in params:
        if len(params.getlist(key)) > 1:
            raise Redirect("invalid_request", f"Repeated parameter: {key}"[:80])
        if len(params[key]) > MAX_VALUE:
            raise Redirect("invalid_request", f"Parameter too long: {key}"[:80])
    p = params.to_dict()
    if "request" in p:
        raise Redirect("request_not_supported", "Request objects are not supported")
    if "request_uri" in p:
        raise Redirect("request_uri_not_supported", "request_uri is not supported")
    if "response_mode" in p and p["response_mode"] not in RESPONSE_MODES:
        raise Redirect("invalid_request", "Unsupported response_mode")
    if not p.get("response_type"):
        raise Redirect("invalid_request", "Missing response_type")
    if p["response_type"] != "code":
        raise Redirect("unsupported_response_type", "Only response_type=code is supported")
    if not client.check_response_type("code"):
        raise Redirect("unauthorized_client", "This client may not use the authorization code flow")
    req = AuthRequest(client=client, redirect_uri=redirect_uri, response_mode=mode, params=p)
    req.scopes = _scopes(p.get("scope"), client)
    _pkce(p, client)
    req.prompt = set((p.get("prompt") or "").split())
    if not req.prompt <= PROMPTS:
        raise Redirect("invalid_request", "Unsupported prompt value")
    if "none" in req.prompt and len(req.prompt) > 1:
        raise Redirect("invalid_request", "prompt=none cannot be combined with other values")
    if "max_age" in p:
        if not MAX_AGE.match(p["max_age"]):  # ASCII digits only: str.isdigit() accepts "١٢", "²"
            raise Redirect("invalid_request", "max_age must be a non-negative integer")
        req.max_age = int(p["max_age"])
    try:
        req.claims = oidc_claims.restrict(oidc_claims.parse_claims_request(p.get("claims")), set(client.scope.split()))
    except oidc_claims.ClaimsRequestError as exc:
        raise Redirect("invalid_request", str(exc)) from exc
    if p.get("id_token_hint"):
        req.hint_sub = _hint_subject(p["id_token_hint"])
    return req


def _scopes(raw: str | None, client: Client) -> list[str]:
    requested = list(dict.fromkeys((raw or "").split()))
    if not requested:
        raise Redirect("invalid_scope", "The scope parameter is required")
    unknown = [s for s in requested if s not in purposes.supported_scopes()]
    if unknown:
        raise Redirect("invalid_scope", "Unknown scope requested")
    allowed = set(client.scope.split())
    scopes = [s for s in requested if s in allowed]
    if "offline_access" in scopes and not client.check_grant_type("refresh_token"):
        scopes.remove("offline_access")
    if not scopes:
        raise Redirect("invalid_scope", "None of the requested scopes is allowed for this client")
    return scopes


def _pkce(p: dict, client: Client) -> None:
    challenge, method = p.get("code_challenge"), p.get("code_challenge_method")
    if method is not None and method != "S256":
        raise Redirect("invalid_request", "Only code_challenge_method=S256 is supported")
    if challenge is None:
        if method is not None:
            raise Redirect("invalid_request", "code_challenge_method without code_challenge")
        if client.is_public or client.meta.get("require_pkce"):
            raise Redirect("invalid_request", "PKCE with S256 is required for this client")
        return
    if method is None:
        raise Redirect("invalid_request", "code_challenge_method=S256 is required")
    if not CHALLENGE.match(challenge):
        raise Redirect("invalid_request", "Invalid code_challenge")


def _hint_subject(hint: str) -> str:
    claims = tokens.verify_id_token_hint(hint)
    if claims is None:
        raise Redirect("invalid_request", "id_token_hint is not an ID token issued by this server")
    return claims["sub"]


def decide(req: AuthRequest, interaction: dict | None):
    session = sessions.current()
    user = session.user if session is not None else None
    fresh = bool(interaction and session and interaction.get("login_at") == session.auth_time)
    sub_wanted = req.hint_sub or next(iter(oidc_claims.value_requests(req.claims, "id_token", "sub")), None)
    must_login = (
        session is None
        or ("login" in req.prompt and not fresh)
        or (req.max_age is not None and time.time() - session.auth_time > req.max_age and not fresh)
        or (sub_wanted is not None and user.sub != sub_wanted)
        # Step-up: even a live (or just refreshed) session must sign in again the way the app asked.
        or not acr_satisfied(session.acr, requested_acr(req.params, req.claims))
    )
    if must_login:
        if "none" in req.prompt:
            raise Redirect("login_required", "The customer must sign in")
        return _park(req, interaction, "accounts.login")
    if "select_account" in req.prompt and not (interaction and interaction.get("account_selected")) and not fresh:
        return _park(req, interaction, "accounts.select_account")

    declined = set(interaction.get("declined", ())) if interaction else set()
    req.scopes = [s for s in req.scopes if s not in declined]  # optional purposes the customer unticked
    items = req.scopes + oidc_claims.requested_claim_items(req.claims, set(req.scopes))
    if interaction and interaction.get("denied"):
        raise Redirect("access_denied", "The customer did not allow access")
    needs = policy.missing(user, req.client, items)
    forced = "consent" in req.prompt and not (interaction and interaction.get("consent_done"))
    if needs or forced:
        if "none" in req.prompt:
            raise Redirect("consent_required", "The customer must allow access")
        return _park(req, interaction, "consent.show")
    return issue(req, session, items, interaction)


# OpenID EAP ACR Values 1.0: "phrh" (phishing-resistant, hardware-protected) also meets "phr"; both meet "1".
ACR_MEETS = {"1": {"1"}, "phr": {"1", "phr"}, "phrh": {"1", "phr", "phrh"}}


def requested_acr(params: dict, claims: dict) -> list[list[str]]:
    """The acr demands of a request, one list of acceptable values per source.

    ``acr_values`` (Core §3.1.2.1) and the ``claims`` parameter's ``acr`` value(s)
    (§5.5.1.1, essential or not) are both honoured as requirements for the values
    this server knows; unknown values are voluntary and ignored.
    """
    groups = [(params.get("acr_values") or "").split(),
              [v for v in oidc_claims.value_requests(claims or {}, "id_token", "acr") if isinstance(v, str)]]
    return [known for known in ([v for v in g if v in ACR_MEETS] for g in groups) if known]


def acr_satisfied(session_acr: str | None, groups: list[list[str]]) -> bool:
    meets = ACR_MEETS.get(session_acr or "", set())
    return all(any(v in meets for v in group) for group in groups)


def _park(req: AuthRequest, interaction: dict | None, endpoint: str):
    if interaction is None:
        iid = interactions.start(req.params, req.client.client_id)
    else:
        iid = interaction["id"]
    if endpoint == "accounts.login" and req.params.get("idp_hint"):
        from ..federation import providers  # idp_hint=NAME skips the chooser (like Keycloak's kc_idp_hint)

        if providers.get(req.params["idp_hint"]) is not None:
            return redirect(url_for("federation.start", name=req.params["idp_hint"], interaction=iid), code=303)
    return redirect(url_for(endpoint, interaction=iid), code=303)


def issue(req: AuthRequest, session, items: list[str], interaction: dict | None):
    if req.client.trusted:
        # First-party apps skip the page, but their use is still recorded (and listed in the account centre). The
        # commit ends the autocommit reads (``without_transaction``): the ledger entry and grants commit together.
        db.session.commit()
        consent_service.grant(session.user, req.client, items, channel="first_party")
    code = codes.issue(
        client_id=req.client.client_id, user_id=session.user_id, redirect_uri=req.redirect_uri,
        scope=" ".join(req.scopes), nonce=req.params.get("nonce"), code_challenge=req.params.get("code_challenge"),
        auth_time=session.auth_time, acr=session.acr, amr=list(session.amr or []), sid=session.id,
        claims=req.claims,
    )
    if interaction:
        interactions.finish(interaction)
    return respond(req.redirect_uri, [("code", code)], req.state, req.response_mode)


def respond(redirect_uri: str, params: list, state: str | None, mode: str):
    """Deliver an authorization response by query (merged into the registered URI) or form_post."""
    if state is not None:
        params.append(("state", state))
    params.append(("iss", current_app.config["IDP_ISSUER"]))
    if mode == "form_post":
        allow_form_action(redirect_uri)
        html = render_template("oauth/form_post.html", action=redirect_uri, fields=params, nonce=csp_nonce())
        return html, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}
    resp = redirect(add_params_to_uri(redirect_uri, params), code=302)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def resume_url(iid: str) -> str:
    return url_for("oauth2.resume") + "?" + urlencode({"interaction": iid})
