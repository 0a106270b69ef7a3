"""Who a POP3 login is upstream: the seam between POP3 credentials and a backend.

An `Authenticator` turns what the client proved (a user name and a password, or a bearer
token) into a `Login`: the backend to open, the credentials to open it with, the
canonical account name the UID map is keyed on, and the upstream mailbox the maildrop
lock is keyed on (the same name in passthrough mode). In passthrough
mode the POP3 login *is* the upstream login and the upstream decides; a mapped-accounts
authenticator checks a local password and substitutes the stored upstream secret, so a
device never learns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from popbridge.contract import Backend, Credentials


@dataclass(frozen=True, slots=True)
class Login:
    """A checked-or-to-be-checked login: open `backend` with `credentials`."""

    backend: Backend
    credentials: Credentials
    account: str  # canonical name for UID maps and size caches (conformance P-7.3)
    mailbox: str = ""  # the upstream mailbox the maildrop lock is keyed on, if not `account`

    @property
    def lock_key(self) -> str:
        """RFC 1939 §4: one session per maildrop, however many names lead to it."""
        return self.mailbox or self.account


class Authenticator(Protocol):
    async def authenticate(self, user: str, secret: str, *, mechanism: str = "password") -> Login:
        """Resolve a POP3 login; raises `AuthFailed` when it is refused locally."""
        ...


class PassthroughAuthenticator:
    """The POP3 credentials go upstream unchanged; the upstream checks them."""

    def __init__(self, backend: Backend, *, scope: str = "") -> None:
        self._backend = backend
        self._scope = scope

    async def authenticate(self, user: str, secret: str, *, mechanism: str = "password") -> Login:
        credentials = Credentials(user, secret, mechanism)
        account = f"{self._scope}{credentials.lock_key}" if self._scope else credentials.lock_key
        return Login(self._backend, credentials, account)
