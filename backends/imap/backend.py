"""The IMAP `Backend`: opens a mailbox for a user, and probes the server for `check`.

This module owns the session setup order (connect, TLS, login, EXAMINE of the first
maildrop folder; conformance I-1, I-2), the login again that a mailbox asks for when the
server closed its connection (I-17), and the connectivity report. Every step goes through
`Connection`, so each has its own deadline; if a step fails, the connection is dropped
before the error leaves.
"""

from __future__ import annotations

import functools
import logging

from backends.imap import logins
from backends.imap.config import ImapSettings
from backends.imap.connection import Connection, connect
from backends.imap.folders import Folders, Window
from backends.imap.ident import send_client_address
from backends.imap.mailbox import ImapMailbox
from backends.imap.warm import WarmConnections
from popbridge.contract import Credentials, window_expiry
from popbridge.errors import AuthFailed

logger = logging.getLogger(__name__)

_REPORTED = ("IMAP4REV1", "UIDPLUS", "MOVE", "SPECIAL-USE", "AUTH=PLAIN", "SASL-IR", "AUTH=XOAUTH2")


class ImapBackend:
    """An IMAP upstream: one connection per opened mailbox."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.warm = WarmConnections(settings, connect, size=settings.warm_connections)

    @property
    def expire(self) -> str | None:
        """RFC 2449 §6.7 EXPIRE as this backend's window makes it true."""
        return window_expiry(self.settings.window_newest, self.settings.window_days)

    async def open(self, credentials: Credentials) -> ImapMailbox:
        """Log in and EXAMINE the folder; raises AuthFailed, BackendUnavailable/Failure."""
        _screen(credentials)
        with self.warm.opening():
            return await self._open(credentials)

    async def _open(self, credentials: Credentials) -> ImapMailbox:
        connection = await self._logged_in(credentials)
        folders = Folders(self.settings.maildrop_folders)
        try:
            first = next(iter(folders))
            # CONDSTORE: the EXAMINE then tells HIGHESTMODSEQ (RFC 7162 3.1.8), so an
            # unchanged maildrop costs the listing no further command.
            opened = await connection.select(read_only=True, condstore=True)
            first.uidvalidity = opened.uidvalidity
        except BaseException:
            connection.abort()
            raise
        window = Window(self.settings.window_newest, self.settings.window_days)
        again = functools.partial(self._logged_in, credentials)
        return ImapMailbox(connection, folders, window, reconnect=again, opened=opened)

    async def _logged_in(self, credentials: Credentials) -> Connection:
        """A new connection, logged in as `credentials`; nothing is left open on failure."""
        connection = await self.warm.connection()
        try:
            if self.settings.send_client_address and credentials.client_address:
                await send_client_address(connection, credentials.client_address)
            await connection.login(credentials)
        except BaseException:
            connection.abort()
            raise
        return connection

    async def check(self) -> list[str]:
        """Connect (and STARTTLS), read CAPABILITY, log out; never logs in."""
        connection = await connect(self.settings)
        try:
            caps = connection.capabilities
            findings = [f"connected to {self.settings.peer}"]
            if connection.tls_version is None:
                findings.append("TLS: none (cleartext connection)")
            else:
                findings.append(
                    f"TLS verified: {connection.tls_version}, certificate chain and host name "
                    f"{self.settings.host} checked"
                )
            for name in _REPORTED:
                state = "present" if name in caps else "absent (before login)"
                findings.append(f"{name}: {state}")
            if "LOGINDISABLED" in caps:
                findings.append("LOGINDISABLED: LOGIN will not be used")
            if "UIDPLUS" not in caps:
                findings.append("note: many servers list UIDPLUS and MOVE only after login")
            return findings
        finally:
            await connection.logout()


def _screen(credentials: Credentials) -> None:
    """Refuse what no encoding may carry (NUL/CR/LF, oversize) before any connection."""
    limit = (
        logins.MAX_TOKEN_OCTETS
        if credentials.mechanism == "oauth2"
        else logins.MAX_CREDENTIAL_OCTETS
    )
    try:
        logins.check_credential(credentials.user)
        logins.check_credential(credentials.secret, limit=limit)
    except ValueError as exc:
        raise AuthFailed(f"credentials refused before sending: {exc}") from None
    if not credentials.user:
        raise AuthFailed("empty user name")
