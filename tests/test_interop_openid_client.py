"""Black-box interoperability: openid-client v6 (panva, npm) against the real server under gunicorn.

The server runs as an operator would run it (``tests/support/server.py``); apps and customers are
registered with the ``flask`` CLI; ``tests/interop/rp.mjs`` is the relying party (discovery, the
authorization URL with PKCE S256, state and nonce, the code exchange with full ID token validation,
UserInfo, refresh, introspection, revocation); a headless Chromium driven by Playwright is the customer
who signs in and allows access. Nothing of the app is imported: only HTTP and the CLI.

Locally a missing prerequisite (node, ``tests/interop/node_modules`` — ``make interop-deps`` — or
/usr/bin/chromium) skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.server import LiveServer, free_port
from tests.support.services import missing

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "interop"
RP_SCRIPT = INTEROP / "rp.mjs"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCOPE = "openid profile email offline_access"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def prerequisites():
    if shutil.which("node") is None:
        missing("node is not on PATH (needed to run the openid-client relying party)")
    if not (INTEROP / "node_modules" / "openid-client" / "package.json").is_file():
        missing("tests/interop/node_modules is missing: run `make interop-deps` (cd tests/interop && npm ci)")
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} is missing (the scripted browser of the interop test)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing(f"the playwright Python package is not installed ({exc})")


@pytest.fixture(scope="module")
def server(prerequisites):
    with LiveServer() as live:
        yield live


@pytest.fixture(scope="module")
def browser(prerequisites):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def rp(server: LiveServer, command: str, payload: dict) -> dict:
    """Run one step of the relying party (JSON on stdin, JSON report on stdout)."""
    proc = subprocess.run(["node", str(RP_SCRIPT), command], input=json.dumps(payload), capture_output=True,
                          text=True, cwd=INTEROP, timeout=90)
    assert proc.returncode == 0, (
        f"rp.mjs {command} exited with {proc.returncode}\nstderr:\n{proc.stderr}\nstdout:\n{proc.stdout}\n"
        f"server log:\n{server.log_tail()}"
    )
    return json.loads(proc.stdout)


def sign_in_and_allow(browser, server: LiveServer, authorization_url: str, redirect_uri: str, email: str,
                      password: str) -> str:
    """The customer's part: sign in, allow, and the URL the browser is sent back to (never loaded)."""
    context = browser.new_context()
    captured: list[str] = []

    def at_callback(route):
        captured.append(route.request.url)
        route.fulfill(status=200, content_type="text/plain", body="callback captured by the test")

    callback = re.compile("^" + re.escape(redirect_uri) + r"(\?.*)?$")
    page = None
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.route(callback, at_callback)
        page.goto(authorization_url)
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in", exact=True).click()
        with page.expect_request(callback):
            page.get_by_role("button", name="Allow").click()
        page.wait_for_url(callback)
    except Exception as exc:
        where = page.url if page is not None else "-"
        raise AssertionError(f"browser step failed at {where}: {exc}\nserver log:\n{server.log_tail()}") from exc
    finally:
        context.close()
    assert len(captured) == 1, captured
    return captured[0]


def run_flow(server, browser, client: dict, user: dict, password: str, redirect_uri: str) -> tuple[dict, dict, str]:
    base = {"issuer": server.url, "client_id": client["client_id"], "client_secret": client.get("client_secret"),
            "redirect_uri": redirect_uri, "scope": SCOPE}
    start = rp(server, "authorize", base)
    # What openid-client put on the authorization URL.
    q = {k: v[0] for k, v in parse_qs(urlsplit(start["authorization_url"]).query).items()}
    assert start["authorization_url"].startswith(server.url + "/authorize?")
    assert q["response_type"] == "code" and q["client_id"] == client["client_id"]
    assert q["redirect_uri"] == redirect_uri and q["scope"] == SCOPE
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["state"] == start["state"] and q["nonce"] == start["nonce"]
    assert start["discovery"]["issuer"] == server.url
    assert start["discovery"]["code_challenge_methods_supported"] == ["S256"]

    callback_url = sign_in_and_allow(browser, server, start["authorization_url"], redirect_uri, user["email"],
                                     password)
    cb = {k: v[0] for k, v in parse_qs(urlsplit(callback_url).query).items()}
    assert set(cb) == {"code", "state", "iss"}, callback_url
    assert cb["state"] == start["state"] and cb["iss"] == server.url  # RFC 9207

    report = rp(server, "complete", {**base, "code_verifier": start["code_verifier"], "state": start["state"],
                                     "nonce": start["nonce"], "callback_url": callback_url})
    return start, report["steps"], server.log_tail()


def ok(steps: dict, name: str, log: str) -> dict:
    assert name in steps, f"step {name} did not run; steps: {json.dumps(steps, indent=1)}"
    assert steps[name]["ok"], f"{name} failed: {json.dumps(steps[name], indent=1)}\nserver log:\n{log}"
    return steps[name]


def failed(steps: dict, name: str) -> dict:
    assert name in steps, f"step {name} did not run"
    assert not steps[name]["ok"], f"{name} unexpectedly succeeded: {json.dumps(steps[name], indent=1)}"
    return steps[name]["error"]


def oauth_error(err: dict) -> str | None:
    """The OAuth error code, from the JSON body or (for a 401 with a challenge) the WWW-Authenticate header."""
    return err.get("error") or next((c["parameters"].get("error") for c in err.get("challenges", [])), None)


def check_grant(steps: dict, log: str, *, client_id: str, user: dict, nonce: str, issuer: str) -> dict:
    """Assertions shared by both clients: code exchange, ID token, UserInfo, refresh rotation, revocation."""
    code = ok(steps, "code_grant", log)
    assert code["token_type"].lower() == "bearer"
    assert set(code["scope"].split()) == set(SCOPE.split())
    assert code["has_access_token"] and code["has_refresh_token"] and code["has_id_token"]
    assert isinstance(code["expires_in"], int) and code["expires_in"] > 0
    assert code["access_token_header"]["typ"] == "at+jwt"  # RFC 9068
    # openid-client validated signature (JWKS), iss, aud, exp, iat, nonce and at_hash; the claims it returned:
    assert code["id_token_header"]["alg"] == "RS256" and code["id_token_header"]["kid"]
    idt = code["id_token_claims"]
    assert idt["iss"] == issuer and idt["aud"] == client_id and idt["sub"] == user["sub"]
    assert idt["nonce"] == nonce and isinstance(idt["auth_time"], int) and idt["at_hash"]
    # Scope claims (email, profile) come from UserInfo when an access token is issued (OIDC Core §5.4).

    info = ok(steps, "userinfo", log)["claims"]
    assert info["sub"] == user["sub"] and info["email"] == user["email"]
    assert info["email_verified"] is True and info["name"] == user["name"]

    refreshed = ok(steps, "refresh", log)
    assert refreshed["refresh_token_rotated"], "refresh must return a new refresh token (rotation)"
    assert refreshed["access_token_changed"] and refreshed["has_id_token"]
    assert set(refreshed["scope"].split()) == set(SCOPE.split())
    assert refreshed["id_token_claims"]["sub"] == user["sub"] and refreshed["id_token_claims"]["aud"] == client_id
    assert ok(steps, "userinfo_after_refresh", log)["claims"]["sub"] == user["sub"]

    ok(steps, "revoke_access", log)  # RFC 7009: 200
    err = failed(steps, "userinfo_after_revocation")
    assert err["status"] == 401, err
    assert any(c["scheme"].lower() == "bearer" and c["parameters"].get("error") == "invalid_token"
               for c in err.get("challenges", [])), err

    # The rotated refresh token comes back: invalid_grant, and reuse detection ends the whole grant.
    err = failed(steps, "replay_old_refresh")
    assert err.get("error") == "invalid_grant" and err.get("status") == 400, err
    err = failed(steps, "refresh_with_new_after_replay")
    assert err.get("error") == "invalid_grant", err
    return code


def test_confidential_client_full_lifecycle(server, browser):
    redirect_uri = f"http://localhost:{free_port()}/cb"
    client = server.run_cli("clients", "create", "--name", "Interop", "--redirect-uri", redirect_uri,
                            "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                            "--scope", SCOPE, "--json")
    assert client["token_endpoint_auth_method"] == "client_secret_basic" and client["client_secret"]
    password = "interop correct horse battery"
    user = server.run_cli("users", "create", "--email", "interop.ada@example.com", "--password", password,
                          "--name", "Ada Interop", "--email-verified", "--json")

    start, steps, log = run_flow(server, browser, client, user, password, redirect_uri)
    check_grant(steps, log, client_id=client["client_id"], user=user, nonce=start["nonce"], issuer=server.url)

    live = ok(steps, "introspect_access", log)["response"]
    assert live["active"] is True, live
    assert live["sub"] == user["sub"] and live["client_id"] == client["client_id"]
    assert live["iss"] == server.url and set(live["scope"].split()) == set(SCOPE.split())
    assert live["token_type"] == "Bearer" and live["exp"] > live["iat"]
    rt = ok(steps, "introspect_refresh", log)["response"]
    assert rt["active"] is True and rt["sub"] == user["sub"] and rt["client_id"] == client["client_id"], rt

    assert ok(steps, "introspect_access_after_revocation", log)["response"] == {"active": False}


def test_public_client_with_pkce_and_no_client_authentication(server, browser):
    redirect_uri = f"http://localhost:{free_port()}/cb"
    client = server.run_cli("clients", "create", "--name", "Interop SPA", "--public", "--redirect-uri", redirect_uri,
                            "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                            "--scope", SCOPE, "--json")
    assert client["token_endpoint_auth_method"] == "none" and "client_secret" not in client
    password = "public correct horse battery"
    user = server.run_cli("users", "create", "--email", "interop.grace@example.com", "--password", password,
                          "--name", "Grace Interop", "--email-verified", "--json")

    start, steps, log = run_flow(server, browser, client, user, password, redirect_uri)
    check_grant(steps, log, client_id=client["client_id"], user=user, nonce=start["nonce"], issuer=server.url)

    # Introspection is for confidential clients only (discovery lists no "none" for it): refused with 401
    # invalid_client (RFC 6749 §5.2), which openid-client surfaces from the WWW-Authenticate challenge.
    for name in ("introspect_access", "introspect_refresh", "introspect_access_after_revocation"):
        err = failed(steps, name)
        assert oauth_error(err) == "invalid_client" and err.get("status") == 401, json.dumps(err)
