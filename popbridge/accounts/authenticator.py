"""The mapped-accounts `Authenticator`: a local password in, the stored upstream login out.

This module owns a mapped login: find the local user's record, check the local password
(the same scrypt work for unknown users, conformance S-5), open the sealed upstream secret,
turn a refresh token into a current access token (`popbridge.oauth2.tokens`), and hand the
session a `Login` with the account's backend (built once per account from `[backend]` plus
the account's overrides) and the upstream credentials. The device only ever proves its local
password; the upstream secret stays in the bridge. If the upstream refuses a cached access
token before it was due to expire (revoked early), the login refreshes once and retries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from popbridge.accounts.crypto import Unsealable
from popbridge.accounts.manage import (
    BackendDefaults,
    BackendLoader,
    backend_table,
    mailbox_key,
    settings_key,
    store_secret,
)
from popbridge.accounts.passthrough import Login
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import AccountRecord, BadRecord, canonical_name, open_secret
from popbridge.accounts.settings import AccountsSettings
from popbridge.contract import Backend, Credentials, Mailbox, load_backend
from popbridge.errors import AuthFailed, BackendFailure
from popbridge.oauth2.tokens import AccessTokens
from popbridge.store import AccountRecords

logger = logging.getLogger(__name__)


class _RenewingBackend:
    """An account's backend that, when the upstream refuses an access token, gets a fresh
    one and tries once more (a token can be revoked before its expiry)."""

    def __init__(self, inner: Backend, renew: Callable[[str], Awaitable[str]]) -> None:
        self._inner = inner
        self._renew = renew

    async def open(self, credentials: Credentials) -> Mailbox:
        try:
            return await self._inner.open(credentials)
        except AuthFailed:
            fresh = await self._renew(credentials.secret)
            if fresh == credentials.secret:
                raise
            logger.info("upstream refused the cached access token; retrying with a new one")
            return await self._inner.open(dataclasses.replace(credentials, secret=fresh))

    async def check(self) -> list[str]:
        return await self._inner.check()


class MappedAuthenticator:
    """Local users with hashed passwords, each mapped to an upstream account."""

    def __init__(
        self,
        records: AccountRecords,
        settings: AccountsSettings,
        backend: Backend,
        defaults: BackendDefaults,
        *,
        hasher: PasswordHasher | None = None,
        tokens: AccessTokens | None = None,
        loader: BackendLoader = load_backend,
    ) -> None:
        self._records = records
        self._settings = settings
        self._keyring = settings.require_keyring()
        self._default = backend
        self._defaults = defaults
        self._hasher = hasher or PasswordHasher()
        self._tokens = tokens or AccessTokens(
            deadline=settings.http_timeout, margin=settings.refresh_margin
        )
        if self._tokens.on_rotate is None:
            self._tokens.on_rotate = self._store_rotated
        self._loader = loader
        self._backends: dict[str, tuple[str, Backend]] = {}

    @property
    def tokens(self) -> AccessTokens:
        """The access-token cache, whose `health` the status page shows."""
        return self._tokens

    async def authenticate(self, user: str, secret: str, *, mechanism: str = "password") -> Login:
        if mechanism != "password":
            # a device's own bearer token (RFC 7628) names no local password to check
            raise AuthFailed(f"mapped accounts log in with a password, not {mechanism}")
        record = await self._verified(user, secret)
        try:
            upstream_secret = open_secret(record, self._keyring)
        except Unsealable as exc:
            logger.error("account %r: cannot open the upstream secret: %s", record.name, exc)
            raise BackendFailure(f"account {record.name!r}: sealed secret unusable") from None
        upstream = record.upstream
        backend = self._backend_for(record)
        mailbox = mailbox_key(self._defaults, upstream)
        if upstream.mechanism == "password":
            credentials = Credentials(upstream.user, upstream_secret, "password")
            return Login(backend, credentials, record.name, mailbox)
        provider = self._settings.providers.get(upstream.oauth2 or "")
        if provider is None:
            logger.error("account %r: OAuth2 provider %r is not configured in [accounts.oauth2]",
                         record.name, upstream.oauth2)  # fmt: skip
            raise BackendFailure(f"account {record.name!r}: unknown OAuth2 provider")
        token = await self._tokens.get(record.name, provider, upstream_secret)

        async def renew(stale: str) -> str:
            return await self._tokens.renew(record.name, provider, upstream_secret, stale)

        credentials = Credentials(upstream.user, token, "oauth2")
        return Login(_RenewingBackend(backend, renew), credentials, record.name, mailbox)

    async def _verified(self, user: str, password: str) -> AccountRecord:
        """The user's record if `password` is right; AuthFailed otherwise, after the same work."""
        record = await self._lookup(user)
        stored: Mapping[str, Any] | None = record.password if record is not None else None
        matched = await self._hasher.verify(password, stored)
        if record is None:
            raise AuthFailed("unknown local user")
        if not matched:
            raise AuthFailed(f"wrong local password for {record.name!r}")
        return record

    async def _lookup(self, user: str) -> AccountRecord | None:
        try:
            name = canonical_name(user)
        except ValueError:
            return None
        raw = await self._records.get(name)
        if raw is None:
            return None
        try:
            record = AccountRecord.from_bytes(raw)
        except BadRecord as exc:
            logger.error("account %r: %s", name, exc)
            return None
        if record.name != name:
            logger.error("account %r: the stored record names %r", name, record.name)
            return None
        return record

    def _backend_for(self, record: AccountRecord) -> Backend:
        """The default backend, or the account's own, built once and kept while unchanged."""
        if not record.upstream.backend:
            return self._default
        kind, table = backend_table(self._defaults, record.upstream.backend)
        key = settings_key(table)
        cached = self._backends.get(record.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        source = f"{self._defaults.source} (account {record.name!r})"
        backend = self._loader(kind, table, source=source)
        self._backends[record.name] = (key, backend)
        return backend

    async def _store_rotated(self, account: str, refresh_token: str) -> None:
        await store_secret(self._records, self._keyring, account, refresh_token)
        logger.info("account %r: stored the rotated refresh token", account)
