"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a free port, collecting what it receives.

    with SmtpServer() as smtp:                      # or the ``smtp_server`` fixture
        app = make_app(IDP_SMTP_URL=smtp.url)
        ...
        msg = smtp.wait_for(1)[0]                   # email.message.EmailMessage
        link = first_link(msg)

``tls_context`` offers STARTTLS; ``ssl_context`` serves implicit TLS (smtps); ``credentials`` require
AUTH LOGIN/PLAIN with that user and password.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.server import free_port

LINK = re.compile(r"https?://[^\s\"'<>]+")


class _Collector:
    def __init__(self):
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.lock.notify_all()
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd's threaded Controller around a collecting handler."""

    def __init__(self, *, tls_context=None, ssl_context=None, credentials: tuple[str, str] | None = None,
                 hostname: str = "127.0.0.1"):
        self.handler = _Collector()
        self.port = free_port()
        self.hostname = hostname
        kwargs = {}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        if ssl_context is not None:
            kwargs["ssl_context"] = ssl_context
        if credentials is not None:
            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and \
                    (auth_data.login.decode(), auth_data.password.decode()) == credentials
                return AuthResult(success=ok)

            kwargs.update(authenticator=authenticate, auth_required=True)
        self.controller = Controller(self.handler, hostname=hostname, port=self.port,
                                     server_hostname="localhost", **kwargs)
        self.scheme = "smtps" if ssl_context is not None else "smtp"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.hostname}:{self.port}"

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """At least ``count`` messages (delivery is synchronous in the app, so this rarely waits)."""
        deadline = time.monotonic() + timeout
        with self.handler.lock:
            while len(self.handler.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} message(s), got {len(self.handler.messages)}")
                self.handler.lock.wait(left)
            return list(self.handler.messages)

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> "SmtpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def text_body(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


def html_body(msg: EmailMessage) -> str | None:
    part = msg.get_body(preferencelist=("html",))
    return part.get_content() if part is not None else None


def first_link(msg: EmailMessage) -> str:
    m = LINK.search(text_body(msg))
    assert m, "message has no link"
    return m.group(0)


@pytest.fixture
def smtp_server():
    """A started plain SMTP server on 127.0.0.1 (stopped after the test)."""
    with SmtpServer() as server:
        yield server
