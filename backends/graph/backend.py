"""The Graph `Backend`: opens a mail folder for a token's user, and probes Graph for `check`.

This module owns the login order: the credentials must be an OAuth 2.0 bearer token (RFC
6750; Graph takes nothing else), screened before it is sent; `GET /me` must name the POP3
user (its userPrincipalName or mail, compared case-insensitively), so a device's XOAUTH2 or
OAUTHBEARER token for one mailbox can never open another user's maildrop under a different
name; then the maildrop folder is resolved. A 401 is AuthFailed: mapped accounts refresh the
token once and retry (the core's token cache lets one refresh per account run at a time).
If a step fails, the connection pool is closed before the error leaves. The backend keeps
the spool of measured messages that all its sessions share.
"""

from __future__ import annotations

import logging

from backends.graph import folders
from backends.graph.config import GraphSettings
from backends.graph.mailbox import GraphMailbox
from backends.graph.spool import Spool
from backends.graph.transport import Transport
from backends.http import bearer_token
from popbridge.contract import Credentials, window_expiry
from popbridge.errors import AuthFailed, BackendFailure

logger = logging.getLogger(__name__)

SCOPES = "Mail.ReadWrite User.Read offline_access"


def bearer(credentials: Credentials) -> str:
    """The token to send; AuthFailed for anything that is not a usable bearer token."""
    return bearer_token(credentials, "Microsoft Graph")


class GraphBackend:
    """A Microsoft Graph upstream: one connection pool and one spool per opened mailbox."""

    def __init__(self, settings: GraphSettings) -> None:
        self.settings = settings
        self._stale: set[str] = set()  # spool keys whose remembered size proved wrong
        self._spool = Spool(settings.spool_dir, settings.spool_limit)

    @property
    def expire(self) -> str | None:
        """RFC 2449 §6.7 EXPIRE as this backend's window makes it true."""
        return window_expiry(self.settings.window_newest, self.settings.window_days)

    async def open(self, credentials: Credentials) -> GraphMailbox:
        """Check the token's user and find the folder; AuthFailed, BackendUnavailable/Failure."""
        transport = Transport(self.settings, bearer(credentials))
        try:
            await _same_user(transport, credentials.user)
            folder = await folders.resolve(transport, self.settings.folder)
            if folder is None:
                raise BackendFailure(f"{self.settings.peer}: no folder {self.settings.folder!r}")
        except BaseException:
            await transport.close()
            raise
        return GraphMailbox(transport, folder.id, self._spool, self._stale, credentials.user)

    async def check(self) -> list[str]:
        """Ask Graph for /me without a token and report what answered."""
        transport = Transport(self.settings, None)
        try:
            reply = await transport.call("GET", "/me")
        finally:
            await transport.close()
        findings = [f"service root {self.settings.url}: GET /me answered HTTP {reply.status}"]
        if self.settings.url.startswith("https:"):
            findings.append("TLS verified: certificate chain and host name checked")
        else:
            findings.append("TLS: none (cleartext http)")
        if reply.status == 401:
            scheme = reply.headers.get("WWW-Authenticate", "")[:60] or "no scheme"
            findings.append(f"a bearer token is required, as expected ({scheme})")
        else:
            findings.append("unexpected status: the URL may not be a Microsoft Graph root")
        findings.append(f"maildrop folder {self.settings.folder!r}; resolved at each login")
        findings.append(f"tokens need the delegated scopes {SCOPES}")
        return findings


async def _same_user(transport: Transport, user: str) -> None:
    """AuthFailed unless the token belongs to `user` (Graph user-get: /me)."""
    me = await transport.json("GET", "/me?$select=userPrincipalName,mail")
    names = [me.get("userPrincipalName"), me.get("mail")] if isinstance(me, dict) else []
    known = {name.casefold() for name in names if isinstance(name, str) and name}
    if not known:
        raise BackendFailure(f"{transport.settings.peer}: /me names no user")
    if user.casefold() not in known:
        logger.warning("a token for %s was offered as %r: refused", sorted(known), user)
        raise AuthFailed("the token belongs to another user")
