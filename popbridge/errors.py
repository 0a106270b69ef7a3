"""The bridge's error hierarchy and the POP3 response codes each error maps to.

Every failure that can reach a POP3 client is one of these classes. Each class carries the
extended response code it is answered with (RFC 2449 section 8, RFC 3206) and a fixed text
for the wire; the exception's own message is detail for the log only, because backend
text may contain user data or internals (conformance S-11). Backends raise these and
nothing else across the contract.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.Enum):
    """Extended POP3 response codes (RFC 2449 section 8, RFC 3206 sections 4-5)."""

    AUTH = "AUTH"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"
    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"


class BridgeError(Exception):
    """Base of every error the bridge reports to a POP3 client."""

    code: ClassVar[Code | None] = None
    wire_text: ClassVar[str] = "internal error"


class ConfigError(BridgeError):
    """The configuration is invalid; the message names the file and the key."""

    code = Code.SYS_PERM
    wire_text = "server configuration error"


class AuthFailed(BridgeError):
    """The credentials were refused (RFC 3206 section 5: a problem with the credentials)."""

    code = Code.AUTH
    wire_text = "authentication failed"


class MailboxInUse(BridgeError):
    """Another session holds the maildrop lock (RFC 2449 section 8.1.2)."""

    code = Code.IN_USE
    wire_text = "maildrop already locked by another session"


class BackendUnavailable(BridgeError):
    """The upstream could not be reached, timed out or throttled us (RFC 3206 section 4)."""

    code = Code.SYS_TEMP
    wire_text = "mail store temporarily unavailable"


class BackendFailure(BridgeError):
    """The upstream or its configuration needs an operator (RFC 3206 section 4, SYS/PERM)."""

    code = Code.SYS_PERM
    wire_text = "mail store error"


class MessageGone(BridgeError):
    """A message of the snapshot no longer exists upstream (conformance P-3.10)."""

    code = None
    wire_text = "message no longer available"


class LoginsBusy(BridgeError):
    """Every login slot stayed taken for as long as a login may wait for one."""

    code = Code.SYS_TEMP
    wire_text = "too many logins in progress, try again later"


class LoginTooSoon(BridgeError):
    """A login within LOGIN-DELAY of the previous one (RFC 2449 section 8.1.1)."""

    code = Code.LOGIN_DELAY
    wire_text = "minimum time between logins has not passed"
