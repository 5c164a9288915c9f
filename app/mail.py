"""Outgoing customer email (RFC 5322 messages over SMTP, RFC 5321; STARTTLS RFC 3207; implicit TLS RFC 8314).

``send(to, subject, text, html=None)`` delivers one message:

* ``IDP_SMTP_URL`` set: SMTP. ``smtps://host[:465]`` uses implicit TLS; ``smtp://host[:25]`` upgrades
  with STARTTLS when the server offers it (or must, with ``?starttls=1``). A plain-text session is
  allowed only to a relay on this machine (localhost, 127.0.0.1, ::1) or when the URL says
  ``?tls=off`` explicitly. ``user:pass@`` logs in; ``?timeout=SECONDS`` (default 10) bounds each step.
* unset, in development mode: the message is written as an ``.eml`` file into ``IDP_MAIL_DIR``
  (default ``instance/outbox``), mode 0600, and its path is logged.
* unset outside development mode: ``MailError`` at send time (the operator must configure mail).

Bodies are never logged: they hold single-use links whose tokens are secrets.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app

from .crypto import random_token

log = logging.getLogger(__name__)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
DEFAULT_TIMEOUT = 10.0


class MailError(RuntimeError):
    """The message could not be handed over (not configured, refused, unreachable, or unsafe transport)."""


def build(to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
    issuer_host = urlsplit(current_app.config["IDP_ISSUER"]).hostname or "localhost"
    msg = EmailMessage()
    msg["From"] = current_app.config["IDP_MAIL_FROM"]
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=issuer_host)
    # RFC 3834: automatic replies must not answer this message.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def send(to: str, subject: str, text: str, html: str | None = None) -> None:
    """Deliver one message; raises MailError when it could not be handed over."""
    msg = build(to, subject, text, html)
    url = current_app.config.get("IDP_SMTP_URL")
    if url:
        _send_smtp(url, msg)
    elif current_app.config["IDP_DEV_MODE"]:
        _write_outbox(msg)
    else:
        log.error("mail not sent: IDP_SMTP_URL is not set (required outside development mode)")
        raise MailError("IDP_SMTP_URL is not set: outgoing mail is not configured")


def _write_outbox(msg: EmailMessage) -> str:
    folder = current_app.config.get("IDP_MAIL_DIR") or os.path.join(current_app.instance_path, "outbox")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{random_token(6)}.eml")
    # 0600: the file holds a live link.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msg.as_bytes())
    log.info("development mode: mail %r written to %s", str(msg["Subject"]), path)
    return path


def _send_smtp(url: str, msg: EmailMessage) -> None:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        log.error("mail not sent: IDP_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
        raise MailError("IDP_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
    host = parts.hostname
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
        timeout = float(query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        log.error("mail not sent: IDP_SMTP_URL has an invalid port or timeout")
        raise MailError("IDP_SMTP_URL has an invalid port or timeout") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else ""
    context = ssl.create_default_context()
    try:
        if parts.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            conn = smtplib.SMTP(host, port, timeout=timeout)
        with conn:
            conn.ehlo()
            if parts.scheme == "smtp":
                if conn.has_extn("starttls"):
                    conn.starttls(context=context)
                    conn.ehlo()
                elif query.get("starttls") in ("1", "true", "yes", "on"):
                    raise MailError(f"the mail server {host} does not offer STARTTLS, which IDP_SMTP_URL requires")
                elif host not in LOCAL_HOSTS and query.get("tls") != "off":
                    # Never send links with secrets in clear text across a network unless the operator said so.
                    raise MailError(f"the mail server {host} does not offer STARTTLS; refusing to send in plain "
                                    "text (add ?tls=off to IDP_SMTP_URL only for a trusted local relay)")
            if user:
                conn.login(user, password)
            conn.send_message(msg)
    except MailError as exc:
        log.error("mail not sent: %s", exc)
        raise
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        # The exception text is the server's reply or a socket error, never the message body.
        log.error("mail not sent: %s talking to %s:%s: %s", type(exc).__name__, host, port, exc)
        raise MailError(f"could not deliver mail via {host}:{port} ({type(exc).__name__})") from exc
    log.info("mail %r handed to %s:%s", str(msg["Subject"]), host, port)
