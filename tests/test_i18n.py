"""English and Turkish: the catalog is complete, and every page speaks the customer's language (ui_locales first)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from tests.support.browser import Customer, callback_params, csrf_token, path_of, pkce_pair

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "app" / "translations"
TR_PO = TRANSLATIONS / "tr" / "LC_MESSAGES" / "messages.po"
PLACEHOLDER = re.compile(r"%\([A-Za-z_]+\)[sd]")


def _pybabel(*args: str) -> None:
    """Run a pybabel command in-process (the same code as the console script)."""
    CommandLineInterface().run(["pybabel", "--quiet", *args])


def _compile_catalogs() -> None:
    """The .mo files are not committed: build them when missing or older than their .po (fresh clone, edited .po)."""
    stale = [po for po in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po")
             if not po.with_suffix(".mo").exists() or po.with_suffix(".mo").stat().st_mtime < po.stat().st_mtime]
    if stale:
        _pybabel("compile", "-d", str(TRANSLATIONS))


# At collection time, before any app (and Flask-Babel's translation cache) exists in this test session.
_compile_catalogs()


@pytest.fixture(scope="session", autouse=True)
def compiled_catalogs():
    _compile_catalogs()


def _read(path: Path):
    with open(path, "rb") as f:
        return read_po(f)


# --- the catalog -------------------------------------------------------------------------------------------------


def test_every_message_has_a_turkish_translation(tmp_path):
    pot = tmp_path / "messages.pot"
    _pybabel("extract", "-F", str(ROOT / "babel.cfg"), "-k", "_l", "-o", str(pot), str(ROOT))
    extracted = {m.id for m in _read(pot) if m.id}
    assert len(extracted) > 50, "extraction found suspiciously few messages; check babel.cfg"

    tr = {m.id: m for m in _read(TR_PO) if m.id}
    missing = sorted(i for i in extracted if i not in tr or not tr[i].string)
    assert not missing, ("English strings without Turkish; run `pybabel extract -F babel.cfg -k _l -o "
                         "app/translations/messages.pot . && pybabel update -i app/translations/messages.pot "
                         f"-d app/translations` and translate: {missing}")
    fuzzy = sorted(i for i in extracted if tr[i].fuzzy)
    assert not fuzzy, f"fuzzy Turkish entries (review and clear the flag): {fuzzy}"
    for msgid in extracted:
        assert sorted(PLACEHOLDER.findall(msgid)) == sorted(PLACEHOLDER.findall(tr[msgid].string)), msgid


def test_compiled_catalog_is_current():
    mo = TR_PO.with_suffix(".mo")
    assert mo.exists() and mo.stat().st_mtime >= TR_PO.stat().st_mtime


# --- pages ---------------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """What a test needs from a page: the html lang, the labels (for -> text), the inputs (id -> attrs), buttons."""

    def __init__(self, html: str):
        super().__init__()
        self.lang, self.labels, self.inputs, self.buttons = None, {}, {}, []
        self._label_for, self._button, self._text = None, False, []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.lang = a.get("lang")
        elif tag == "label":
            self._label_for, self._text = a.get("for"), []
        elif tag == "input" and a.get("id"):
            self.inputs[a["id"]] = a
        elif tag == "button":
            self._button, self._text = True, []

    def handle_data(self, data):
        self._text.append(data)

    def handle_endtag(self, tag):
        text = " ".join("".join(self._text).split())
        if tag == "label" and self._label_for is not None:
            self.labels[self._label_for] = text
            self._label_for = None
        elif tag == "button" and self._button:
            self.buttons.append(text)
            self._button = False

    def input_labelled(self, text: str) -> dict:
        ids = [for_id for for_id, label in self.labels.items() if label == text]
        assert ids, f"no label {text!r}; labels: {self.labels}"
        assert ids[0] in self.inputs, f"label {text!r} points at no input (for={ids[0]!r})"
        return self.inputs[ids[0]]


def _page(resp) -> _Page:
    return _Page(resp.get_data(as_text=True))


def _assert_login_page(resp, lang, email_label, password_label, button):
    assert resp.status_code == 200
    page = _page(resp)
    assert page.lang == lang
    assert page.input_labelled(email_label)["type"] == "email"
    assert page.input_labelled(password_label)["type"] == "password"
    assert button in page.buttons


def test_sign_in_page_is_english_by_default(client):
    resp = client.get("/login")
    _assert_login_page(resp, "en", "Email", "Password", "Sign in")
    assert "<title>Sign in</title>" in resp.get_data(as_text=True)


def test_sign_in_page_in_turkish_by_ui_locales(client):
    resp = client.get("/login?ui_locales=tr")
    _assert_login_page(resp, "tr", "E-posta", "Parola", "Giriş yap")
    html = resp.get_data(as_text=True)
    assert "<title>Giriş yap</title>" in html and "Hesap oluştur" in html and "Create an account" not in html
    # An explicit choice is remembered for the rest of the visit, and can be changed back.
    _assert_login_page(client.get("/login"), "tr", "E-posta", "Parola", "Giriş yap")
    _assert_login_page(client.get("/login?ui_locales=en"), "en", "Email", "Password", "Sign in")
    _assert_login_page(client.get("/login"), "en", "Email", "Password", "Sign in")


def test_sign_in_page_in_turkish_by_accept_language(client):
    resp = client.get("/login", headers={"Accept-Language": "tr-TR,tr;q=0.9"})
    _assert_login_page(resp, "tr", "E-posta", "Parola", "Giriş yap")
    # ui_locales beats the browser's preference.
    resp = client.get("/login?ui_locales=en", headers={"Accept-Language": "tr-TR,tr;q=0.9"})
    _assert_login_page(resp, "en", "Email", "Password", "Sign in")


def test_unsupported_language_falls_back_to_english(client):
    resp = client.get("/login?ui_locales=de", headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    _assert_login_page(resp, "en", "Email", "Password", "Sign in")


def test_authorization_request_ui_locales_gives_turkish_sign_in_and_consent(client, customer, rp):
    verifier, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    resp = who.authorize(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
                         scope="openid profile email", state="st-tr", nonce="n-tr", code_challenge=challenge,
                         code_challenge_method="S256", ui_locales="tr-TR tr")
    assert resp.status_code in (302, 303)
    login = client.get(path_of(resp.headers["Location"]))  # no ui_locales here: it comes from the interaction
    _assert_login_page(login, "tr", "E-posta", "Parola", "Giriş yap")
    assert "Web Shop uygulamasına devam etmek için giriş yapın" in login.get_data(as_text=True)

    resp = who.submit_login(login)
    for _ in range(5):  # resume the authorization request until it asks for consent
        if resp.status_code not in (302, 303):
            break
        resp = client.get(path_of(resp.headers["Location"]))
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    page = _Page(html)
    assert page.lang == "tr"
    assert "<title>Erişime izin ver</title>" in html
    assert "Web Shop hesabınızı kullanmak istiyor" in html
    assert "İzin verirseniz Web Shop şunları yapabilir:" in html
    assert "E-posta adresinizi görme" in html and "Your email address" not in html
    assert page.buttons == ["İzin ver", "Reddet"]

    cb = callback_params(who.follow(who.submit_consent(resp, "allow")))
    assert cb["state"] == "st-tr" and cb["code"]


def test_english_consent_page_by_default(client, customer, rp):
    _, challenge = pkce_pair()
    who = Customer(client, customer["email"], customer["password"])
    resp = who.follow(who.authorize(response_type="code", client_id=rp["client_id"], redirect_uri=rp["redirect_uri"],
                                    scope="openid email", state="st", nonce="n", code_challenge=challenge,
                                    code_challenge_method="S256"), consent=None)
    page = _page(resp)
    assert page.lang == "en" and page.buttons == ["Allow", "Deny"]
    assert "Your email address" in resp.get_data(as_text=True)


def test_error_page_in_turkish(client):
    resp = client.get("/no-such-page?ui_locales=tr")
    assert resp.status_code == 404
    page = _page(resp)
    assert page.lang == "tr" and "Sayfa bulunamadı" in resp.get_data(as_text=True)


def test_account_errors_are_translated_on_the_page_and_english_in_the_cli(app, client, customer):
    page = client.get("/register?ui_locales=tr")
    assert _page(page).input_labelled("E-posta")
    resp = client.post("/register", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                          "name": "Ada", "email": customer["email"], "password": "another password"})
    assert resp.status_code == 400
    assert "Bu e-posta adresiyle kayıtlı bir hesap zaten var." in resp.get_data(as_text=True)

    result = app.test_cli_runner().invoke(args=["users", "create", "--email", customer["email"],
                                                "--password", "another password"])
    assert result.exit_code != 0
    assert "An account with this email already exists. Sign in instead." in result.output
