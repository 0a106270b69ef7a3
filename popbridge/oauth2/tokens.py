"""Access tokens from refresh tokens: cached in memory per account, refreshed once, ahead of expiry.

This module owns the refresh-token grant (RFC 6749 section 6) as the bridge uses it at login:
an access token is kept in memory per account until shortly before it expires (a margin, so
a token never expires between our check and the upstream's), and concurrent logins of one
account share a single refresh in flight. A refused refresh token (`invalid_grant`: revoked,
expired, or the password changed) is `RefreshRevoked`, an `AuthFailed` with one log line that
tells the operator what to do; a provider that is down is `BackendUnavailable`. Providers that
rotate refresh tokens (Microsoft may) hand the new one to `on_rotate` so it can be stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from popbridge.errors import AuthFailed, BackendFailure
from popbridge.oauth2.client import Grant, OAuthError, token_request
from popbridge.oauth2.providers import Provider

logger = logging.getLogger(__name__)

DEFAULT_LIFETIME = 600.0  # RFC 6749 5.1 makes expires_in optional; assume a short life
Rotate = Callable[[str, str], Awaitable[None]]


class RefreshRevoked(AuthFailed):
    """The provider refused the stored refresh token (RFC 6749 section 5.2 invalid_grant)."""


@dataclass(slots=True)
class _Cached:
    token: str = field(repr=False)
    expires_at: float
    source: str  # fingerprint of the refresh token it came from


def fingerprint(refresh_token: str, provider: Provider) -> str:
    """Which refresh token a cached access token came from, without keeping that token."""
    data = f"{provider.name}\0{provider.client_id}\0{refresh_token}".encode()
    return hashlib.sha256(data).hexdigest()


async def refresh(provider: Provider, refresh_token: str, *, deadline: float) -> Grant:
    """One refresh-token grant; invalid_grant is `RefreshRevoked`, other refusals need an
    operator (`BackendFailure`), an unreachable provider is `BackendUnavailable`."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if provider.refresh_with_scope and provider.scope:
        form["scope"] = provider.scope  # the scope first granted: RFC 6749 6 allows no more
    try:
        return await token_request(provider, form, deadline=deadline)
    except OAuthError as exc:
        if exc.error == "invalid_grant":
            raise RefreshRevoked(f"{provider.name}: refresh token refused: {exc}") from None
        raise BackendFailure(f"{provider.name}: token endpoint refused a refresh: {exc}") from None


class AccessTokens:
    """The per-account access token cache with single-flight refresh."""

    def __init__(
        self,
        *,
        deadline: float = 15.0,
        margin: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        on_rotate: Rotate | None = None,
    ) -> None:
        self.deadline = deadline
        self.margin = margin
        self.on_rotate = on_rotate
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._flights: dict[str, asyncio.Task[str]] = {}
        self._refused: set[str] = set()  # accounts whose refresh token the provider refused

    async def get(self, account: str, provider: Provider, refresh_token: str) -> str:
        """A valid access token for `account`, refreshing only when the cached one is due."""
        cached = self._cache.get(account)
        source = fingerprint(refresh_token, provider)
        if cached is not None and cached.source == source and self._clock() < cached.expires_at:
            return cached.token
        return await self._shared_refresh(account, provider, refresh_token)

    async def renew(self, account: str, provider: Provider, refresh_token: str, stale: str) -> str:
        """A new token after the upstream refused `stale`, unless one already replaced it."""
        cached = self._cache.get(account)
        if cached is not None and cached.token == stale:
            del self._cache[account]
        return await self.get(account, provider, refresh_token)

    def health(self, account: str) -> str:
        """How `account`'s tokens stand in this process, for the status page: "refused"
        (authorize again), "valid N s" (a cached access token) or "not fetched yet"."""
        if account in self._refused:
            return "refresh token refused"
        cached = self._cache.get(account)
        if cached is not None and (left := cached.expires_at - self._clock()) > 0:
            return f"access token valid {left:.0f} s"
        return "no access token fetched yet"

    def forget(self, account: str) -> None:
        self._cache.pop(account, None)

    async def _shared_refresh(self, account: str, provider: Provider, refresh_token: str) -> str:
        flight = self._flights.get(account)
        if flight is None:
            flight = asyncio.create_task(self._refresh(account, provider, refresh_token))
            self._flights[account] = flight
            flight.add_done_callback(lambda done: self._landed(account, done))
        # shield: one session giving up (client gone) must not cancel the others' refresh
        return await asyncio.shield(flight)

    def _landed(self, account: str, flight: asyncio.Task[str]) -> None:
        if self._flights.get(account) is flight:
            del self._flights[account]
        if not flight.cancelled():
            flight.exception()  # retrieved here too, in case every waiter gave up meanwhile

    async def _refresh(self, account: str, provider: Provider, refresh_token: str) -> str:
        try:
            grant = await refresh(provider, refresh_token, deadline=self.deadline)
        except RefreshRevoked:
            self.forget(account)
            self._refused.add(account)
            logger.error(
                "account %r: provider %r refused the OAuth2 refresh token (revoked or expired); "
                "authorize again with: popbridge accounts add %s --oauth2 %s --replace ...",
                account, provider.name, account, provider.name,
            )  # fmt: skip
            raise
        source = fingerprint(refresh_token, provider)
        if grant.refresh_token and grant.refresh_token != refresh_token:
            source = fingerprint(grant.refresh_token, provider)
            await self._rotated(account, grant.refresh_token)
        lifetime = grant.expires_in or DEFAULT_LIFETIME
        # refresh ahead of expiry, but never so early that every login refreshes
        margin = min(self.margin, lifetime / 2)
        expires_at = self._clock() + lifetime - margin
        self._cache[account] = _Cached(grant.access_token, expires_at, source)
        self._refused.discard(account)
        logger.info(
            "account %r: new access token from %r, valid %.0f s", account, provider.name, lifetime
        )
        return grant.access_token

    async def _rotated(self, account: str, new_refresh_token: str) -> None:
        """RFC 6749 6: the provider MAY issue a new refresh token; keep it for next time."""
        if self.on_rotate is None:
            return
        try:
            await self.on_rotate(account, new_refresh_token)
        except Exception as exc:  # the login itself can go on with the new access token
            logger.error("account %r: storing the rotated refresh token failed: %r", account, exc)
