"""Imports every model module so that migrations and create_all see the whole schema."""

from .accounts.models import LoginSession, User  # noqa: F401
from .audit import AuditEvent  # noqa: F401
from .consent.models import ConsentEvent, ConsentGrant  # noqa: F401
from .federation.models import FederatedIdentity, UpstreamProvider  # noqa: F401
from .keys_db import SigningKey, SigningKeyRing  # noqa: F401
from .outbox import OutboxMessage  # noqa: F401
from .passkeys.models import PasskeyCredential  # noqa: F401
from .oauth2.models import Client, Token  # noqa: F401
from .store.sql import EphemeralItem  # noqa: F401
