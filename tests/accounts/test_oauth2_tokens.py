"""The access token cache: reuse, refresh ahead of expiry, single flight, rotation, revocation."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from devkit.oauth_provider import FakeOAuthProvider
from popbridge.errors import BackendUnavailable
from popbridge.oauth2 import AccessTokens, RefreshRevoked
from tests.accounts.conftest import provider_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cached_until_the_margin_before_expiry(fake: FakeOAuthProvider) -> None:
    clock, provider = Clock(), provider_for(fake)
    tokens = AccessTokens(clock=clock, margin=120)
    refresh = fake.issue_refresh_token("alice")
    first = await tokens.get("printer", provider, refresh)
    clock.now += 3600 - 121
    assert await tokens.get("printer", provider, refresh) == first
    assert fake.grants["refresh_token"] == 1
    clock.now += 2  # inside the margin: refreshed before the provider would refuse it
    second = await tokens.get("printer", provider, refresh)
    assert second != first and fake.grants["refresh_token"] == 2


async def test_short_lifetimes_keep_half_their_life(fake: FakeOAuthProvider) -> None:
    fake.access_lifetime = 100
    clock, provider = Clock(), provider_for(fake)
    tokens = AccessTokens(clock=clock, margin=120)
    refresh = fake.issue_refresh_token("alice")
    first = await tokens.get("printer", provider, refresh)
    clock.now += 49
    assert await tokens.get("printer", provider, refresh) == first
    clock.now += 2
    assert await tokens.get("printer", provider, refresh) != first


async def test_concurrent_logins_share_one_refresh(fake: FakeOAuthProvider) -> None:
    tokens, provider = AccessTokens(), provider_for(fake)
    refresh = fake.issue_refresh_token("alice")
    got = await asyncio.gather(*(tokens.get("printer", provider, refresh) for _ in range(10)))
    assert len(set(got)) == 1 and fake.grants["refresh_token"] == 1
    other = fake.issue_refresh_token("bob")
    await asyncio.gather(
        tokens.get("scanner", provider, other), tokens.get("printer", provider, refresh)
    )
    assert fake.grants["refresh_token"] == 2  # another account; the first stays cached


async def test_a_waiter_giving_up_does_not_cancel_the_refresh(fake: FakeOAuthProvider) -> None:
    fake.hang = 0.3
    tokens, provider = AccessTokens(), provider_for(fake)
    refresh = fake.issue_refresh_token("alice")
    impatient = asyncio.create_task(tokens.get("printer", provider, refresh))
    patient = asyncio.create_task(tokens.get("printer", provider, refresh))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert await patient in fake.access_tokens()
    assert fake.grants["refresh_token"] == 1


async def test_another_refresh_token_is_not_served_from_cache(fake: FakeOAuthProvider) -> None:
    tokens, provider = AccessTokens(), provider_for(fake)
    first = await tokens.get("printer", provider, fake.issue_refresh_token("alice"))
    second = await tokens.get("printer", provider, fake.issue_refresh_token("alice"))
    assert first != second and fake.grants["refresh_token"] == 2


async def test_rotated_refresh_tokens_are_handed_on(fake: FakeOAuthProvider) -> None:
    fake.rotate = True
    stored: list[tuple[str, str]] = []

    async def keep(account: str, token: str) -> None:
        stored.append((account, token))

    tokens, provider = AccessTokens(on_rotate=keep), provider_for(fake)
    old = fake.issue_refresh_token("alice")
    await tokens.get("printer", provider, old)
    assert stored and stored[0][0] == "printer" and stored[0][1] != old
    assert fake.refresh_tokens() == [stored[0][1]]  # the old one is revoked now
    await tokens.get("printer", provider, stored[0][1])  # the new one hits the cache
    assert fake.grants["refresh_token"] == 1


async def test_failing_rotation_store_is_logged_not_fatal(
    fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.rotate = True

    async def broken(account: str, token: str) -> None:
        raise OSError("disk full")

    tokens = AccessTokens(on_rotate=broken)
    assert await tokens.get("printer", provider_for(fake), fake.issue_refresh_token("alice"))
    assert "storing the rotated refresh token failed" in caplog.text


async def test_revoked_refresh_token_tells_the_operator(
    fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    clock, provider = Clock(), provider_for(fake)
    tokens = AccessTokens(clock=clock)
    refresh = fake.issue_refresh_token("alice")
    await tokens.get("printer", provider, refresh)
    fake.revoke(refresh)
    clock.now += 7200
    with caplog.at_level(logging.ERROR), pytest.raises(RefreshRevoked):
        await tokens.get("printer", provider, refresh)
    line = next(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "'printer'" in line and "refused the OAuth2 refresh token" in line
    assert "popbridge accounts add printer --oauth2 custom" in line
    assert refresh not in caplog.text


async def test_renew_replaces_only_the_refused_token(fake: FakeOAuthProvider) -> None:
    tokens, provider = AccessTokens(), provider_for(fake)
    refresh = fake.issue_refresh_token("alice")
    first = await tokens.get("printer", provider, refresh)
    second = await tokens.renew("printer", provider, refresh, stale=first)
    assert second != first
    # a session that saw the older token refused gets the newer one, no third refresh
    assert await tokens.renew("printer", provider, refresh, stale=first) == second
    assert fake.grants["refresh_token"] == 2


async def test_provider_down_leaves_no_cache_entry(fake: FakeOAuthProvider) -> None:
    tokens, provider = AccessTokens(), provider_for(fake)
    refresh = fake.issue_refresh_token("alice")
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await tokens.get("printer", provider, refresh)
    fake.down = False
    assert await tokens.get("printer", provider, refresh) in fake.access_tokens()


async def test_missing_expires_in_assumes_a_short_life(fake: FakeOAuthProvider) -> None:
    from tests.accounts.odd_server import answering

    clock = Clock()
    tokens = AccessTokens(clock=clock, margin=60)
    async with answering(200, {"access_token": "t1", "token_type": "Bearer"}) as url:
        provider = dataclasses.replace(provider_for(fake), token_url=url)
        await tokens.get("printer", provider, "rt")
    assert tokens._cache["printer"].expires_at == 1000.0 + 600 - 60
