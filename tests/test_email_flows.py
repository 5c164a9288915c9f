"""Emailed links over a real SMTP server: verification, password reset, change of address; mail transport."""

from __future__ import annotations

import datetime
import email
import email.policy
import logging
import os
import ssl
import stat
import time
from urllib.parse import urlsplit

import pytest

from tests.support.browser import csrf_token
from tests.support.smtp import SmtpServer, first_link, html_body, smtp_server, text_body  # noqa: F401

NEW_PASSWORD = "a brand new passphrase"


# -- helpers --------------------------------------------------------------------------------------------------------


def _path(link: str) -> str:
    parts = urlsplit(link)
    return parts.path + "?" + parts.query


def _sign_in(client, email_, password):
    page = client.get("/login")
    resp = client.post("/login", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                       "email": email_, "password": password})
    return resp


def _register(client, email_="grace@example.com", password="grace's password", **kw):
    page = client.get("/register")
    return client.post("/register", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                          "name": "Grace Hopper", "email": email_, "password": password}, **kw)


def _user(app, email_=None, id_=None):
    from app.accounts.models import User
    from app.extensions import db

    with app.app_context():
        if id_ is not None:
            user = db.session.get(User, id_)
        else:
            user = db.session.execute(db.select(User).filter_by(email=email_)).scalar_one_or_none()
        if user is not None:
            db.session.expunge(user)
        return user


def _audit_types(app, user_id):
    from app.audit import AuditEvent
    from app.extensions import db

    with app.app_context():
        return [e.type for e in db.session.execute(
            db.select(AuditEvent).filter_by(user_id=user_id).order_by(AuditEvent.id)).scalars()]


def _confirm(client, link):
    """Open the link (a page with a button, nothing used up yet) and press the button."""
    page = client.get(_path(link))
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    action = urlsplit(link).path
    return client.post(action, data={"csrf_token": csrf_token(html), "token": _token(link)})


def _token(link: str) -> str:
    return urlsplit(link).query.split("token=", 1)[1]


def _forgot(client, address):
    page = client.get("/password/forgot")
    return client.post("/password/forgot", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                 "email": address})


@pytest.fixture
def mail_log(caplog, monkeypatch):
    """caplog for app.mail. The migration run (alembic's fileConfig) disables loggers that existed before it."""
    monkeypatch.setattr(logging.getLogger("app.mail"), "disabled", False)
    return caplog


# -- (a) verification after sign-up ---------------------------------------------------------------------------------


def test_registration_sends_a_verification_link_that_works_once(make_app, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    resp = _register(client)
    assert resp.status_code == 303  # signed in right away, as before
    assert client.get("/account").status_code == 200

    [msg] = smtp_server.wait_for(1)
    assert msg["To"] == "grace@example.com" and msg["Subject"] == "Confirm your email address"
    assert msg["From"] == app.config["IDP_MAIL_FROM"] and msg["Auto-Submitted"] == "auto-generated"
    link = first_link(msg)
    assert link.startswith("http://localhost/email/verify?token=")
    assert link in html_body(msg)
    assert _user(app, "grace@example.com").email_verified is False

    # Opening the link (as a mail scanner would) uses nothing up.
    assert client.get(_path(link)).status_code == 200
    done = _confirm(client, link)
    assert done.status_code == 200 and "Your email address is confirmed" in done.get_data(as_text=True)
    user = _user(app, "grace@example.com")
    assert user.email_verified is True
    assert "email_verified" in _audit_types(app, user.id)

    # A second use fails, by GET and by POST, and from another browser too.
    assert client.get(_path(link)).status_code == 400
    page = client.get("/password/forgot")
    again = client.post("/email/verify", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                               "token": _token(link)})
    assert again.status_code == 400 and "This link cannot be used" in again.get_data(as_text=True)
    assert app.test_client().get(_path(link)).status_code == 400


def test_expired_verification_link_fails(make_app, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url, IDP_EMAIL_LINK_TTL=1)
    client = app.test_client()
    _register(client)
    link = first_link(smtp_server.wait_for(1)[0])
    page = client.get(_path(link))
    assert page.status_code == 200
    time.sleep(1.5)
    assert client.get(_path(link)).status_code == 400
    resp = client.post("/email/verify", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                              "token": _token(link)})
    assert resp.status_code == 400
    assert _user(app, "grace@example.com").email_verified is False


def test_links_point_to_the_issuer_never_the_host_header(make_app, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url, IDP_ISSUER="http://localhost:5000")
    client = app.test_client()
    page = client.get("/register", headers={"Host": "evil.example"})
    client.post("/register", headers={"Host": "evil.example"},
                data={"csrf_token": csrf_token(page.get_data(as_text=True)), "name": "",
                      "email": "grace@example.com", "password": "grace's password"})
    link = first_link(smtp_server.wait_for(1)[0])
    assert link.startswith("http://localhost:5000/email/verify?token=") and "evil" not in link


def test_unverified_customer_can_ask_for_a_new_link(make_app, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _register(client)
    home = client.get("/account").get_data(as_text=True)
    assert "not confirmed yet" in home and "Send the confirmation link again" in home
    resp = client.post("/account/email/verify", data={"csrf_token": csrf_token(home)})
    assert resp.status_code == 303
    first, second = smtp_server.wait_for(2)
    assert first_link(first) != first_link(second)
    assert _confirm(client, first_link(second)).status_code == 200
    assert "not confirmed yet" not in client.get("/account").get_data(as_text=True)


def test_development_outbox_folder(make_app, tmp_path, mail_log):
    caplog = mail_log
    app = make_app(IDP_MAIL_DIR=str(tmp_path))
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        assert _register(client).status_code == 303
    [path] = list(tmp_path.glob("*.eml"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the file holds a live link
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["To"] == "grace@example.com"
    link = first_link(msg)
    assert str(path) in caplog.text
    assert _token(link) not in caplog.text and link not in caplog.text  # never the secret in logs
    assert _confirm(client, link).status_code == 200
    assert _user(app, "grace@example.com").email_verified is True


def test_outside_development_mode_mail_must_be_configured(make_app, mail_log, production_keys):
    caplog = mail_log
    from app import mail

    app = make_app(IDP_ISSUER="https://id.example.com", SECRET_KEY="s" * 40, **production_keys)
    with app.test_request_context(), caplog.at_level(logging.ERROR):
        with pytest.raises(mail.MailError, match="IDP_SMTP_URL is not set"):
            mail.send("ada@example.com", "Hello", "secret body https://id.example.com/x?token=abc")
    assert "IDP_SMTP_URL is not set" in caplog.text and "secret body" not in caplog.text


# -- (b) password reset ---------------------------------------------------------------------------------------------


def test_reset_for_an_unknown_email_answers_the_same_and_sends_nothing(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    unknown = _forgot(client, "nobody@example.com")
    known = _forgot(client, customer["email"])
    assert unknown.status_code == known.status_code == 200
    assert unknown.get_data() == known.get_data()
    assert "If an account exists for that address" in known.get_data(as_text=True)
    [msg] = smtp_server.wait_for(1)
    time.sleep(0.2)
    assert len(smtp_server.messages) == 1 and msg["To"] == customer["email"]
    assert msg["Subject"] == "Reset your password"


def test_reset_sets_the_password_once_and_ends_other_sessions(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    elsewhere = app.test_client()  # another device, signed in with the old password
    assert _sign_in(elsewhere, customer["email"], customer["password"]).status_code == 303
    assert elsewhere.get("/account").status_code == 200

    client = app.test_client()
    _forgot(client, customer["email"])
    link = first_link(smtp_server.wait_for(1)[0])
    assert link.startswith("http://localhost/password/reset?token=")
    page = client.get(_path(link))
    assert page.status_code == 200
    html = page.get_data(as_text=True)

    short = client.post("/password/reset", data={"csrf_token": csrf_token(html), "token": _token(link),
                                                 "password": "short", "confirm": "short"})
    assert short.status_code == 400 and "at least 8 characters" in short.get_data(as_text=True)
    mismatch = client.post("/password/reset", data={"csrf_token": csrf_token(html), "token": _token(link),
                                                    "password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"})
    assert mismatch.status_code == 400 and "The passwords do not match." in mismatch.get_data(as_text=True)

    done = client.post("/password/reset", data={"csrf_token": csrf_token(html), "token": _token(link),
                                                "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 200 and "Your password was changed" in done.get_data(as_text=True)
    again = client.post("/password/reset", data={"csrf_token": csrf_token(html), "token": _token(link),
                                                 "password": "yet another one", "confirm": "yet another one"})
    assert again.status_code == 400 and "This link cannot be used" in again.get_data(as_text=True)

    # The other device is signed out; the old password fails, the new one works.
    assert elsewhere.get("/account").status_code == 303
    fresh = app.test_client()
    assert _sign_in(fresh, customer["email"], customer["password"]).status_code == 401
    assert _sign_in(fresh, customer["email"], NEW_PASSWORD).status_code == 303
    assert "password_reset" in _audit_types(app, customer["id"])


def test_an_older_reset_link_dies_when_the_password_changes(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _forgot(client, customer["email"])
    _forgot(client, customer["email"])
    older, newer = (first_link(m) for m in smtp_server.wait_for(2))
    html = client.get(_path(newer)).get_data(as_text=True)
    client.post("/password/reset", data={"csrf_token": csrf_token(html), "token": _token(newer),
                                         "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert client.get(_path(older)).status_code == 400


def test_a_verification_token_is_not_a_reset_token(make_app, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _register(client)
    token = _token(first_link(smtp_server.wait_for(1)[0]))
    assert client.get("/password/reset?token=" + token).status_code == 400


# -- (c) change of address ------------------------------------------------------------------------------------------


def _ask_change(client, new_email):
    home = client.get("/account").get_data(as_text=True)
    return client.post("/account/email", data={"csrf_token": csrf_token(home), "new_email": new_email})


def test_change_email_keeps_the_old_address_until_the_new_one_is_confirmed(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _sign_in(client, customer["email"], customer["password"])
    resp = _ask_change(client, "Ada.New@Example.com ")
    assert resp.status_code == 303
    assert "We sent a link to ada.new@example.com" in client.get("/account").get_data(as_text=True)

    [msg] = smtp_server.wait_for(1)
    assert msg["To"] == "ada.new@example.com" and msg["Subject"] == "Confirm your new email address"
    link = first_link(msg)
    assert link.startswith("http://localhost/account/email/confirm?token=")
    assert _user(app, id_=customer["id"]).email == customer["email"]  # unchanged until clicked

    # Another browser must sign in first, and comes back to the link.
    other = app.test_client()
    bounce = other.get(_path(link))
    assert bounce.status_code == 303 and "/login?next=/account/email/confirm" in bounce.headers["Location"]

    page = client.get(_path(link))
    assert page.status_code == 200 and "ada.new@example.com" in page.get_data(as_text=True)
    done = client.post("/account/email/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                       "token": _token(link)})
    assert done.status_code == 303
    user = _user(app, id_=customer["id"])
    assert user.email == "ada.new@example.com" and user.email_verified is True
    assert "email_changed" in _audit_types(app, customer["id"])

    notice = smtp_server.wait_for(2)[1]
    assert notice["To"] == customer["email"] and notice["Subject"] == "Your email address was changed"
    assert "ada.new@example.com" in text_body(notice)

    assert client.get(_path(link)).status_code == 400  # used
    fresh = app.test_client()
    assert _sign_in(fresh, customer["email"], customer["password"]).status_code == 401
    assert _sign_in(fresh, "ada.new@example.com", customer["password"]).status_code == 303


def test_change_to_a_taken_email_is_refused(make_app, customer, smtp_server):
    from app.accounts.service import create_user

    app = make_app(IDP_SMTP_URL=smtp_server.url)
    with app.app_context():
        create_user("bob@example.com", "bob's password")
    client = app.test_client()
    _sign_in(client, customer["email"], customer["password"])

    # Same answer as for a free address (the form does not reveal who has an account), but no link.
    assert _ask_change(client, "bob@example.com").status_code == 303
    time.sleep(0.2)
    assert smtp_server.messages == []

    # Taken between the request and the click: refused at the click.
    _ask_change(client, "carol@example.com")
    link = first_link(smtp_server.wait_for(1)[0])
    with app.app_context():
        create_user("carol@example.com", "carol's password")
    page = client.get(_path(link))
    resp = client.post("/account/email/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                       "token": _token(link)})
    assert resp.status_code == 303
    assert "now belongs to another account" in client.get("/account").get_data(as_text=True)
    assert _user(app, id_=customer["id"]).email == customer["email"]


def test_change_email_rejects_bad_or_same_address(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _sign_in(client, customer["email"], customer["password"])
    bad = _ask_change(client, "not-an-address")
    assert bad.status_code == 400 and "Enter a valid email address." in bad.get_data(as_text=True)
    same = _ask_change(client, customer["email"].upper())
    assert same.status_code == 400 and "This is already your email address." in same.get_data(as_text=True)
    assert smtp_server.messages == []


def test_a_change_link_opened_by_another_account_is_refused_and_kept(make_app, customer, smtp_server):
    from app.accounts.service import create_user

    app = make_app(IDP_SMTP_URL=smtp_server.url)
    with app.app_context():
        create_user("mallory@example.com", "mallory's password")
    client = app.test_client()
    _sign_in(client, customer["email"], customer["password"])
    _ask_change(client, "ada.new@example.com")
    link = first_link(smtp_server.wait_for(1)[0])

    mallory = app.test_client()
    _sign_in(mallory, "mallory@example.com", "mallory's password")
    assert mallory.get(_path(link)).status_code == 400
    html = mallory.get("/account").get_data(as_text=True)
    assert mallory.post("/account/email/confirm", data={"csrf_token": csrf_token(html),
                                                        "token": _token(link)}).status_code == 400
    assert _user(app, "mallory@example.com") is not None
    # Still usable by its owner.
    page = client.get(_path(link))
    client.post("/account/email/confirm", data={"csrf_token": csrf_token(page.get_data(as_text=True)),
                                                "token": _token(link)})
    assert _user(app, id_=customer["id"]).email == "ada.new@example.com"


# -- CSRF and pages -------------------------------------------------------------------------------------------------


def test_every_email_link_form_requires_csrf(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _sign_in(client, customer["email"], customer["password"])
    for path, data in [("/password/forgot", {"email": customer["email"]}),
                       ("/password/reset", {"token": "x", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}),
                       ("/email/verify", {"token": "x"}),
                       ("/account/email", {"new_email": "new@example.com"}),
                       ("/account/email/confirm", {"token": "x"}),
                       ("/account/email/verify", {})]:
        resp = client.post(path, data=data)
        assert resp.status_code == 400, path
        assert "This form has expired" in resp.get_data(as_text=True), path
    time.sleep(0.2)
    assert smtp_server.messages == []


def test_pages_answer_in_english_with_labels(client, make_app):
    forgot = client.get("/password/forgot").get_data(as_text=True)
    assert '<html lang="en">' in forgot and "<title>Forgot your password?</title>" in forgot
    assert '<label for="email">Email</label>' in forgot and 'type="email"' in forgot
    assert "Send me a link" in forgot
    assert "Forgot your password?" in client.get("/login").get_data(as_text=True)
    invalid = client.get("/password/reset?token=nope")
    assert invalid.status_code == 400 and "This link cannot be used" in invalid.get_data(as_text=True)
    assert client.get("/email/verify").status_code == 400  # no token: a page, not a 500


def test_reset_page_labels(make_app, customer, smtp_server):
    app = make_app(IDP_SMTP_URL=smtp_server.url)
    client = app.test_client()
    _forgot(client, customer["email"])
    html = client.get(_path(first_link(smtp_server.wait_for(1)[0]))).get_data(as_text=True)
    assert '<label for="password">New password</label>' in html
    assert '<label for="confirm">Repeat the new password</label>' in html
    assert "Save the new password" in html


# -- transport ------------------------------------------------------------------------------------------------------


def _self_signed(tmp_path):
    """A certificate for localhost/127.0.0.1, and a client trust store holding only it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    return server_ctx, str(cert_path)


def _send(app, to="ada@example.com"):
    from app import mail

    with app.test_request_context():
        mail.send(to, "Hello", "Plain body", "<p>HTML body</p>")


def test_starttls_with_login(make_app, tmp_path, monkeypatch):
    server_ctx, ca = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # the client verifies the server against this CA only
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with SmtpServer(tls_context=server_ctx, credentials=("mailer", "p@ss word")) as server:
        app = make_app(IDP_SMTP_URL=f"smtp://mailer:p%40ss%20word@localhost:{server.port}?starttls=1")
        _send(app)
        [msg] = server.wait_for(1)
        assert msg["Subject"] == "Hello" and text_body(msg).strip() == "Plain body"
        assert "HTML body" in html_body(msg)

        from app import mail

        wrong = make_app(IDP_SMTP_URL=f"smtp://mailer:wrong@localhost:{server.port}")
        with pytest.raises(mail.MailError):
            _send(wrong)


def test_implicit_tls(make_app, tmp_path, monkeypatch):
    server_ctx, ca = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with SmtpServer(ssl_context=server_ctx) as server:
        app = make_app(IDP_SMTP_URL=f"smtps://localhost:{server.port}")
        _send(app)
        assert server.wait_for(1)[0]["To"] == "ada@example.com"


def test_an_untrusted_certificate_is_refused(make_app, tmp_path):
    from app import mail

    server_ctx, _ = _self_signed(tmp_path)
    with SmtpServer(ssl_context=server_ctx) as server:
        app = make_app(IDP_SMTP_URL=f"smtps://localhost:{server.port}")
        with pytest.raises(mail.MailError):
            _send(app)
        assert server.messages == []


def test_plain_text_only_to_a_local_relay_or_when_explicitly_allowed(make_app):
    from app import mail

    # 127.0.0.2 is this machine too, but not one of the names the sender trusts for plain text.
    with SmtpServer(hostname="127.0.0.2") as server:
        refused = make_app(IDP_SMTP_URL=f"smtp://127.0.0.2:{server.port}")
        with pytest.raises(mail.MailError, match="refusing to send in plain text"):
            _send(refused)
        required = make_app(IDP_SMTP_URL=f"smtp://127.0.0.2:{server.port}?starttls=1&tls=off")
        with pytest.raises(mail.MailError, match="does not offer STARTTLS"):
            _send(required)
        assert server.messages == []
        allowed = make_app(IDP_SMTP_URL=f"smtp://127.0.0.2:{server.port}?tls=off")
        _send(allowed)
        assert len(server.wait_for(1)) == 1


def test_unreachable_server_is_a_clear_error(make_app, mail_log):
    caplog = mail_log
    from app import mail
    from tests.support.server import free_port

    app = make_app(IDP_SMTP_URL=f"smtp://127.0.0.1:{free_port()}?timeout=2")
    with caplog.at_level(logging.ERROR), pytest.raises(mail.MailError, match="could not deliver mail"):
        _send(app)
    assert "Plain body" not in caplog.text
