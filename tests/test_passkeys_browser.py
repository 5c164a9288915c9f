"""Passkeys in a real browser: Debian's Chromium (headless, Playwright) with a DevTools virtual authenticator
against the real server (gunicorn, http://localhost issuer, so RP ID "localhost").

One journey per customer: sign up with a passkey only, sign out, sign in with the
passkey inside an app's OpenID Connect flow (the ID token says amr hwk/user/mfa,
acr phrh); and a password customer who adds a passkey, is stepped up from a password
session by ``acr_values=phr``, renames and deletes the passkey, which then no longer
signs in. Locally a missing Chromium or Playwright skips with the reason; under
CI=true it fails.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browser import pkce_pair
from tests.support.server import LiveServer
from tests.support.services import missing

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
REDIRECT_URI = "https://shop.example/cb"
TIMEOUT = 15_000


@pytest.fixture(scope="module")
def server():
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing(f"Playwright is not installed ({exc})")
    with LiveServer() as live:
        yield live


@pytest.fixture(scope="module")
def app_client(server):
    return server.run_cli("clients", "create", "--name", "Web Shop", "--redirect-uri", REDIRECT_URI,
                          "--trusted", "--json")


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Tab:
    """One browser profile with its own virtual platform authenticator (UV by fingerprint, always verified)."""

    def __init__(self, browser, server, *, autofill: bool = True):
        self.server = server
        self.context = browser.new_context()
        if not autofill:
            # Chromium's virtual authenticator answers a conditional (autofill) request by itself; to test the
            # button alone, this profile says it has no autofill for passkeys.
            self.context.add_init_script(
                "if (window.PublicKeyCredential) PublicKeyCredential.isConditionalMediationAvailable = "
                "() => Promise.resolve(false);")
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("WebAuthn.enable")
        self.authenticator = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
            "hasUserVerification": True, "isUserVerified": True}})["authenticatorId"]
        self.callbacks: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

        def capture(route):
            # Playwright does not route the targets of redirects, so the server's answers are looked at here: a
            # redirect to the app is the authorization response, captured instead of followed.
            resp = route.fetch(max_redirects=0)
            location = resp.headers.get("location", "")
            if location.startswith(REDIRECT_URI):
                self.callbacks.append(location)
                route.fulfill(status=200, content_type="text/html", body="<p>app callback</p>")
            else:
                route.fulfill(response=resp)

        self.page.route(self.server.url + "/authorize**", capture)

    def credentials(self) -> list[dict]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator})["credentials"]

    def goto(self, path: str):
        self.page.goto(self.server.url + path)

    def status_text(self) -> str:
        return self.page.locator(".passkey-status").first.inner_text()

    def sign_out(self):
        self.goto("/logout")
        self.page.get_by_role("button", name="Sign out").click()
        self.page.wait_for_load_state()

    def close(self):
        self.context.close()


def _authorize_url(server, client_id, **extra):
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI, "scope": "openid",
              "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    return server.url + "/authorize?" + urlencode(params), verifier, state, nonce


def _wait_for_callback(tab: Tab) -> dict:
    for _ in range(TIMEOUT // 100):
        if tab.callbacks:
            break
        tab.page.wait_for_timeout(100)
    assert tab.callbacks, f"the app was never called back (page: {tab.page.url})"
    q = parse_qs(urlsplit(tab.callbacks[-1]).query)
    return {k: v[0] for k, v in q.items()}


def _id_token(server, app_client, code, verifier) -> dict:
    resp = requests.post(server.url + "/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }, auth=(app_client["client_id"], app_client["client_secret"]), timeout=10)
    assert resp.status_code == 200, resp.text
    keys = KeySet.import_key_set(requests.get(server.url + "/jwks.json", timeout=10).json())
    return jwt.decode(resp.json()["id_token"], keys, algorithms=["RS256"]).claims


def _passkey_signin(tab: Tab):
    tab.page.get_by_role("button", name="Sign in with a passkey").click()


def test_sign_up_with_a_passkey_only_then_sign_in_to_an_app(server, app_client, browser):
    tab = Tab(browser, server)
    try:
        tab.goto("/register")
        tab.page.fill('input[name="name"]', "Grace Hopper")
        tab.page.fill('input[name="email"]', "grace@example.com")
        tab.page.get_by_role("button", name="Sign up with a passkey").click()
        tab.page.wait_for_url(server.url + "/account**")
        [cred] = tab.credentials()
        assert cred["isResidentCredential"] is True and cred["rpId"] == "localhost"

        tab.sign_out()
        url, verifier, state, nonce = _authorize_url(server, app_client["client_id"])
        tab.page.goto(url)
        tab.page.wait_for_url("**/login?interaction=**")
        assert tab.page.get_attribute('input[name="email"]', "autocomplete") == "username webauthn"
        # Autofill (conditional mediation): the virtual authenticator picks the passkey offered on the email field.
        cb = _wait_for_callback(tab)
        assert cb["state"] == state and cb["iss"] == server.url
        claims = _id_token(server, app_client, cb["code"], verifier)
        assert claims["nonce"] == nonce
        assert claims["acr"] == "phrh" and claims["amr"] == ["hwk", "user", "mfa"]

        # The only sign-in method of the account cannot be deleted.
        tab.goto("/account/passkeys")
        tab.page.get_by_role("button", name="Delete the passkey Passkey").click()
        assert "This is the only way to sign in to your account" in tab.page.locator(".error").inner_text()
        assert not [e for e in tab.errors if "Content Security Policy" in e or "Uncaught" in e], tab.errors
    finally:
        tab.close()


def test_step_up_rename_and_delete(server, app_client, browser):
    server.run_cli("users", "create", "--email", "ada@example.com", "--password", "correct horse battery",
                   "--json")
    tab = Tab(browser, server, autofill=False)
    try:
        tab.goto("/login")
        tab.page.fill('input[name="email"]', "ada@example.com")
        tab.page.fill('input[name="password"]', "correct horse battery")
        tab.page.get_by_role("button", name="Sign in", exact=True).click()
        tab.page.wait_for_load_state()

        tab.goto("/account/passkeys")
        tab.page.get_by_role("button", name="Add a passkey").click()
        tab.page.wait_for_url(server.url + "/account/passkeys")
        tab.page.get_by_text("On this device only").wait_for()
        assert len(tab.credentials()) == 1

        # Password session again (acr 1), then an app asks for a phishing-resistant sign-in.
        tab.sign_out()
        tab.goto("/login")
        tab.page.fill('input[name="email"]', "ada@example.com")
        tab.page.fill('input[name="password"]', "correct horse battery")
        tab.page.get_by_role("button", name="Sign in", exact=True).click()
        tab.page.wait_for_load_state()
        url, verifier, _, _ = _authorize_url(server, app_client["client_id"], acr_values="phr")
        tab.page.goto(url)
        tab.page.wait_for_url("**/login?interaction=**")  # a live password session is not enough
        assert not tab.callbacks
        assert "sign in with a passkey" in tab.page.locator("#passkey-required").inner_text()
        _passkey_signin(tab)
        cb = _wait_for_callback(tab)
        claims = _id_token(server, app_client, cb["code"], verifier)
        assert claims["acr"] == "phrh" and claims["amr"] == ["hwk", "user", "mfa"]

        # Rename, then delete; the deleted passkey no longer signs in.
        tab.goto("/account/passkeys")
        tab.page.fill('input[name="name"]', "Work laptop")
        tab.page.get_by_role("button", name="Rename").click()
        tab.page.wait_for_url("**/account/passkeys?renamed=1")
        assert tab.page.locator(".passkey strong").inner_text() == "Work laptop"
        [saved] = tab.credentials()
        tab.page.get_by_role("button", name="Delete the passkey Work laptop").click()
        tab.page.get_by_text("Passkey deleted").wait_for()
        assert tab.page.get_by_text("You have no passkeys yet.").is_visible()

        tab.sign_out()
        # A browser honouring signalAllAcceptedCredentials may have dropped the credential; put it back, so that
        # what is tested is the server refusing a deleted passkey.
        if not tab.credentials():
            tab.cdp.send("WebAuthn.addCredential", {"authenticatorId": tab.authenticator, "credential": saved})
        tab.goto("/login")
        _passkey_signin(tab)
        # A locator wait, not wait_for_function: the page's CSP (no 'unsafe-eval') forbids evaluated strings.
        tab.page.locator(".passkey-status").filter(has_text="not registered").first.wait_for()
        status = tab.status_text()
        assert "not registered" in status, status
        assert tab.page.url.startswith(server.url + "/login")
        assert not [c for c in tab.context.cookies() if c["name"] == "idp_session"]
    finally:
        tab.close()
