"""The Gmail `Backend`: opens a label for a token's user, and reports what `check` can see.

This module owns the login order: the credentials must be an OAuth 2.0 bearer token (RFC
6750; the Gmail API takes nothing else), screened before it is sent; users.getProfile must
name the POP3 user (its emailAddress, compared without case), so a token for one mailbox can
never open another user's maildrop under a different name; then the labels are read and the
maildrop label resolved. A 401 is AuthFailed: mapped accounts refresh the token once and
retry (the core's token cache runs one refresh per account at a time). Quota is kept per
Gmail user, across that user's sessions (`backends.gmail.quota`). `accept_disposition`
refuses, at startup and in `check`, a permanent delete with a token scope that cannot do it.
"""

from __future__ import annotations

import logging

from backends.gmail.config import FULL_SCOPE, MODIFY_SCOPE, GmailSettings
from backends.gmail.labels import USER_PATH, Labels
from backends.gmail.mailbox import GmailMailbox
from backends.gmail.quota import Quotas
from backends.gmail.transport import Transport
from backends.http import bearer_token
from popbridge.contract import Credentials, Disposition, DispositionKind
from popbridge.errors import AuthFailed, BackendFailure, ConfigError

logger = logging.getLogger(__name__)


class GmailBackend:
    """A Gmail API upstream: one connection pool per opened mailbox, quota per user."""

    expire = "NEVER"  # nothing leaves the label on the bridge's account without a DELE

    def __init__(self, settings: GmailSettings) -> None:
        self.settings = settings
        self.quotas = Quotas(settings.units_per_minute, settings.max_in_flight)

    @property
    def oauth_scope(self) -> str:
        """The scope `popbridge accounts add` asks for: what `scope` says the tokens carry."""
        return self.settings.scope_url

    def accept_disposition(self, how: Disposition) -> None:
        """ConfigError if the configured scope cannot carry out `how`."""
        if how.kind is DispositionKind.EXPUNGE and self.settings.scope != "full":
            raise ConfigError(
                f'backend.scope: disposition "expunge" deletes permanently, which needs the'
                f' {FULL_SCOPE} scope (scope = "full"); or choose disposition "trash"'
            )

    async def open(self, credentials: Credentials) -> GmailMailbox:
        """Check the token's user and find the label; AuthFailed, BackendUnavailable/Failure."""
        quota = self.quotas.of(credentials.user)
        transport = Transport(self.settings, bearer_token(credentials, "the Gmail API"), quota)
        try:
            address = await _same_user(transport, credentials.user)
            labels = Labels(transport)
            await labels.load()
            label = labels.find(self.settings.label)
            if label is None:
                raise BackendFailure(f"no label {self.settings.label!r} in this mailbox")
        except BaseException:
            await transport.close()
            raise
        return GmailMailbox(transport, labels, label.id, address)

    async def check(self) -> list[str]:
        """Ask for the profile without a token and report what answered and what is set."""
        transport = Transport(self.settings, None)
        try:
            try:
                await transport.call("GET", f"{USER_PATH}/profile", "getProfile")
                answer = "answered without a token: this is not the Gmail API"
            except AuthFailed:
                answer = "asks for a bearer token, as expected"
        finally:
            await transport.close()
        tls = "verified" if self.settings.url.startswith("https:") else "none (cleartext http)"
        scope = FULL_SCOPE if self.settings.scope == "full" else MODIFY_SCOPE
        findings = [
            f"API {self.settings.url}: users.getProfile {answer}",
            f"TLS: {tls}",
            f"maildrop label {self.settings.label!r}; resolved at each login",
            f"tokens must carry the scope {scope}"
            + ("" if self.settings.scope == "full" else " (no permanent delete)"),
            f"quota: {self.settings.units_per_minute} units/minute per user,"
            f" {self.settings.max_in_flight} requests in flight per user",
        ]
        for user, quota in sorted(self.quotas.users.items()):
            findings.append(f"account {user}: {quota.describe()}")
        return findings


async def _same_user(transport: Transport, user: str) -> str:
    """AuthFailed unless the token belongs to `user` (users.getProfile: emailAddress)."""
    profile = await transport.call("GET", f"{USER_PATH}/profile", "getProfile")
    address = profile.get("emailAddress") if isinstance(profile, dict) else None
    if not isinstance(address, str) or not address:
        raise BackendFailure("users.getProfile names no emailAddress")
    if address.casefold() != user.casefold():
        logger.warning("a token of %r was offered as %r: refused", address, user)
        raise AuthFailed("the token belongs to another user")
    return address
