"""Named signals for security-relevant changes; side effects (back-channel logout, audit) subscribe.

Signals are sent after the change is committed. Receivers must not raise; each
one owns its own failure handling (the back-channel sender writes a durable
outbox row, so a crash after the commit loses nothing).
"""

from blinker import Namespace

_signals = Namespace()

#: sender: None; kwargs: user_id, sub, client_ids (apps whose grant ended), channel
grant_ended = _signals.signal("grant-ended")
#: sender: None; kwargs: user_id, sub, sid, client_ids (apps that hold tokens of this session)
session_ended = _signals.signal("session-ended")
#: sender: None; kwargs: sub, client_ids (every app the customer used), sids
account_deleted = _signals.signal("account-deleted")
