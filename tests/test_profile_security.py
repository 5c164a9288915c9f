"""Account centre: the profile form (OIDC standard claims) and the security page (change password)."""

from __future__ import annotations

import re

import pytest

from tests.support.browser import csrf_token
from tests.support.smtp import text_body, smtp_server  # noqa: F401

NEW_PASSWORD = "a brand new passphrase"
PROFILE_FIELDS = ("name", "given_name", "middle_name", "family_name", "nickname", "preferred_username", "website",
                  "picture", "gender", "birthdate", "zoneinfo", "locale", "phone_number", "street_address",
                  "locality", "region", "postal_code", "country")


def _sign_in(client, customer, password=None):
    page = client.get("/login")
    return client.post("/login", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                       "email": customer["email"], "password": password or customer["password"]})


@pytest.fixture
def signed_in(client, customer):
    assert _sign_in(client, customer).status_code == 303
    return client


def _user(app, customer):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        user = db.session.get(User, customer["id"])
        db.session.expunge(user)
        return user


def _current_form(html: str) -> dict:
    """The profile form's fields as the page shows them (what a browser would submit unchanged)."""
    values = {}
    for name in PROFILE_FIELDS:
        m = re.search(rf'<input[^>]*\bname="{name}"[^>]*>', html)
        assert m, f"no input {name}"
        v = re.search(r'value="([^"]*)"', m.group(0))
        values[name] = v.group(1) if v else ""
    return values


def _save(client, **changes):
    html = client.get("/account").get_data(as_text=True)
    data = {**_current_form(html), **changes, "csrf_token": csrf_token(html)}
    return client.post("/account/profile", data=data)


def _audit(app, customer):
    from app.audit import AuditEvent
    from app.extensions import db

    with app.app_context():
        return [(e.type, e.data) for e in db.session.execute(
            db.select(AuditEvent).filter_by(user_id=customer["id"]).order_by(AuditEvent.id)).scalars()]


# -- profile --------------------------------------------------------------------------------------------------------


def test_account_pages_require_sign_in(client):
    for path in ("/account", "/account/security"):
        resp = client.get(path)
        assert resp.status_code == 303 and f"/login?next={path}" in resp.headers["Location"]


def test_profile_saves_and_empty_fields_become_null(app, signed_in, customer):
    html = signed_in.get("/account").get_data(as_text=True)
    assert 'value="Ada"' in html and 'value="London"' in html  # the form shows what is stored
    resp = _save(signed_in, given_name="  Augusta Ada ", family_name="", nickname="Ada", birthdate="1815-12-10",
                 website="https://ada.example/", zoneinfo="Europe/London", locale="en-GB", locality="",
                 street_address="", country="", postal_code="SW1Y 4LE", gender="female")
    assert resp.status_code == 303 and resp.headers["Location"] == "/account"
    assert "Your profile is saved." in signed_in.get("/account").get_data(as_text=True)
    user = _user(app, customer)
    assert user.given_name == "Augusta Ada" and user.family_name is None and user.nickname == "Ada"
    assert user.middle_name is None and user.preferred_username is None and user.picture is None  # never ""
    assert user.birthdate == "1815-12-10" and user.zoneinfo == "Europe/London" and user.locale == "en-GB"
    assert user.address == {"postal_code": "SW1Y 4LE"}
    event = [d for t, d in _audit(app, customer) if t == "profile_updated"][-1]
    assert "given_name" in event["fields"] and "address" in event["fields"] and "Augusta" not in str(event)

    # Clearing every address field removes the address.
    _save(signed_in, postal_code="")
    assert _user(app, customer).address is None


@pytest.mark.parametrize("value", ["1990", "0000-02-29", "1990-12-31"])
def test_birthdate_forms_allowed_by_openid_connect(app, signed_in, customer, value):
    assert _save(signed_in, birthdate=value).status_code == 303
    assert _user(app, customer).birthdate == value


@pytest.mark.parametrize("field,value,message", [
    ("birthdate", "31/12/1990", "Enter the date as YYYY-MM-DD"),
    ("birthdate", "1990-13-01", "This date does not exist."),
    ("birthdate", "0000", "Enter the date as YYYY-MM-DD"),
    ("birthdate", "2999-01-01", "The date of birth cannot be in the future."),
    ("name", "x" * 256, "Use at most 255 characters."),
    ("gender", "x" * 65, "Use at most 64 characters."),
    ("website", "javascript:alert(1)", "Enter a full web address starting with https://."),
    ("picture", "https://" + "p" * 2050, "Use at most 2048 characters."),
    ("zoneinfo", "Mars/Olympus", "Choose a time zone such as Europe/Istanbul."),
    ("locale", "english please", "Enter a language tag such as en-GB or tr-TR."),
    ("phone_number", "call me maybe", "Enter a phone number such as +90 212 555 0100."),
    ("country", "c" * 256, "Use at most 255 characters."),
])
def test_profile_validation_refuses_and_saves_nothing(app, signed_in, customer, field, value, message):
    resp = _save(signed_in, given_name="Changed", **{field: value})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert message in html and "Nothing was saved." in html
    assert f'id="{field}-error"' in html and 'aria-invalid="true"' in html
    assert _user(app, customer).given_name == "Ada"


def test_a_new_phone_number_is_not_verified(app, signed_in, customer):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        db.session.get(User, customer["id"]).phone_number_verified = True
        db.session.commit()
    _save(signed_in, nickname="Ada")  # the number itself unchanged: still verified
    assert _user(app, customer).phone_number_verified is True
    _save(signed_in, phone_number="+90 212 555 0100")
    user = _user(app, customer)
    assert user.phone_number == "+90 212 555 0100" and user.phone_number_verified is False


def test_profile_page_is_english_with_labels(signed_in):
    html = signed_in.get("/account").get_data(as_text=True)
    assert '<html lang="en">' in html
    for field, label in [("name", "Full name"), ("given_name", "Given name"), ("family_name", "Family name"),
                         ("birthdate", "Date of birth"), ("zoneinfo", "Time zone"), ("phone_number", "Phone number"),
                         ("street_address", "Street address"), ("postal_code", "Postal code"),
                         ("new_email", "New email address")]:
        assert f'<label for="{field}">{label}</label>' in html, label
        assert f'id="{field}"' in html
    assert "Save profile" in html and "Change email" in html


# -- security -------------------------------------------------------------------------------------------------------


def _change(client, current, new, confirm=None):
    html = client.get("/account/security").get_data(as_text=True)
    return client.post("/account/security", data={"csrf_token": csrf_token(html), "current_password": current,
                                                   "new_password": new, "confirm": confirm or new})


def test_password_change(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _sign_in(client, customer)
    resp = _change(client, customer["password"], NEW_PASSWORD)
    assert resp.status_code == 303 and resp.headers["Location"] == "/account/security"
    assert "Your password was changed." in client.get("/account/security").get_data(as_text=True)
    assert ("password_changed", {}) in _audit(app, customer)
    [notice] = smtp_server.wait_for(1)
    assert notice["To"] == customer["email"] and notice["Subject"] == "Your password was changed"
    assert NEW_PASSWORD not in text_body(notice)

    fresh = app.test_client()
    assert _sign_in(fresh, customer).status_code == 401
    assert _sign_in(fresh, customer, NEW_PASSWORD).status_code == 303


@pytest.mark.parametrize("current,new,confirm,message", [
    ("wrong password", NEW_PASSWORD, NEW_PASSWORD, "Your current password is not correct."),
    (None, "short", "short", "Use a password of at least 8 characters."),
    (None, NEW_PASSWORD, NEW_PASSWORD + "!", "The passwords do not match."),
])
def test_password_change_refused(app, signed_in, customer, current, new, confirm, message):
    resp = _change(signed_in, current or customer["password"], new, confirm)
    assert resp.status_code == 400 and message in resp.get_data(as_text=True)
    assert not any(t == "password_changed" for t, _ in _audit(app, customer))
    assert _sign_in(app.test_client(), customer).status_code == 303  # the old password still works


def test_security_page_is_english_with_labels_passkeys_and_linked_accounts(signed_in):
    html = signed_in.get("/account/security").get_data(as_text=True)
    assert '<html lang="en">' in html and "<title>Security</title>" in html
    assert '<label for="current_password">Current password</label>' in html
    assert '<label for="new_password">New password</label>' in html
    assert '<label for="confirm">Repeat the new password</label>' in html
    assert html.count('type="password"') == 3 and "Change password" in html
    assert "Add a passkey" in html and "not available yet" not in html
    assert 'href="/account/identities"' in html and "Linked accounts" in html
    assert 'href="/account/security"' in signed_in.get("/account").get_data(as_text=True)  # the tab shows


def test_profile_and_security_forms_require_csrf(app, signed_in, customer):
    assert signed_in.post("/account/profile", data={"given_name": "Evil"}).status_code == 400
    assert signed_in.post("/account/security", data={"current_password": customer["password"],
                                                     "new_password": NEW_PASSWORD,
                                                     "confirm": NEW_PASSWORD}).status_code == 400
    assert _user(app, customer).given_name == "Ada"
    assert _sign_in(app.test_client(), customer).status_code == 303
