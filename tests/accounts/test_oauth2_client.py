"""Token endpoint requests: the refresh grant and how every kind of failure is classified."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from devkit.dovecot import free_port
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable
from popbridge.oauth2 import OAuthError, RefreshRevoked
from popbridge.oauth2.client import device_authorization, token_request
from popbridge.oauth2.tokens import refresh
from tests.accounts.conftest import provider_for
from tests.accounts.odd_server import answering


async def test_refresh_returns_a_bearer_token(fake: FakeOAuthProvider) -> None:
    token = fake.issue_refresh_token("alice")
    grant = await refresh(provider_for(fake), token, deadline=5)
    assert grant.access_token in fake.access_tokens()
    assert grant.expires_in == 3600 and grant.refresh_token is None
    assert fake.grants["refresh_token"] == 1
    assert token not in repr(grant) and grant.access_token not in repr(grant)


async def test_scope_on_refresh_when_the_provider_wants_it(fake: FakeOAuthProvider) -> None:
    provider = dataclasses.replace(provider_for(fake), refresh_with_scope=True)
    assert await refresh(provider, fake.issue_refresh_token("alice"), deadline=5)
    wider = dataclasses.replace(provider, scope="mail admin")
    with pytest.raises(BackendFailure, match="invalid_scope"):
        await refresh(wider, fake.issue_refresh_token("alice"), deadline=5)


async def test_revoked_refresh_token_is_an_auth_failure(fake: FakeOAuthProvider) -> None:
    token = fake.issue_refresh_token("alice")
    fake.revoke(token)
    with pytest.raises(RefreshRevoked) as caught:
        await refresh(provider_for(fake), token, deadline=5)
    assert isinstance(caught.value, AuthFailed) and token not in str(caught.value)


async def test_wrong_client_secret_needs_the_operator(fake: FakeOAuthProvider) -> None:
    provider = dataclasses.replace(provider_for(fake), client_secret="wrong")
    with pytest.raises(BackendFailure, match="invalid_client"):
        await refresh(provider, fake.issue_refresh_token("alice"), deadline=5)


async def test_provider_down_is_temporary(fake: FakeOAuthProvider) -> None:
    fake.down = True
    with pytest.raises(BackendUnavailable, match="HTTP 503"):
        await refresh(provider_for(fake), fake.issue_refresh_token("alice"), deadline=5)


async def test_provider_too_slow_is_temporary(fake: FakeOAuthProvider) -> None:
    fake.hang = 30.0
    with pytest.raises(BackendUnavailable, match=r"no answer within 0\.3 s"):
        await refresh(provider_for(fake), fake.issue_refresh_token("alice"), deadline=0.3)


async def test_provider_unreachable_is_temporary(fake: FakeOAuthProvider) -> None:
    provider = dataclasses.replace(
        provider_for(fake), token_url=f"http://127.0.0.1:{free_port()}/token"
    )
    with pytest.raises(BackendUnavailable):
        await refresh(provider, "rt", deadline=5)


@pytest.mark.parametrize(
    ("status", "body", "raw", "error", "match"),
    [
        (200, None, b"<html>login</html>", BackendFailure, "not JSON"),
        (200, ["a"], None, BackendFailure, "not a JSON object"),
        (400, {"nothing": 1}, None, BackendFailure, "without an OAuth2 error code"),
        (200, {"token_type": "Bearer"}, None, BackendFailure, "without an access_token"),
        (200, {"access_token": "t", "token_type": "mac"}, None, BackendFailure, "token_type"),
        (429, {"error": "slow"}, None, BackendUnavailable, "HTTP 429"),
    ],
)
async def test_odd_token_answers(
    fake: FakeOAuthProvider,
    status: int,
    body: Any,
    raw: bytes | None,
    error: type[Exception],
    match: str,
) -> None:
    async with answering(status, body, raw=raw) as url:
        provider = dataclasses.replace(provider_for(fake), token_url=url)
        with pytest.raises(error, match=match):
            await token_request(provider, {"grant_type": "refresh_token"}, deadline=5)


async def test_odd_but_valid_token_answer(fake: FakeOAuthProvider) -> None:
    body = {"access_token": "t", "token_type": "bearer", "expires_in": "bogus", "refresh_token": ""}
    async with answering(200, body) as url:
        provider = dataclasses.replace(provider_for(fake), token_url=url, client_secret=None)
        grant = await token_request(provider, {"grant_type": "refresh_token"}, deadline=5)
    assert grant.expires_in is None and grant.refresh_token is None


async def test_device_endpoint_errors(fake: FakeOAuthProvider) -> None:
    provider = provider_for(fake)
    with pytest.raises(BackendFailure, match="no device_url"):
        await device_authorization(dataclasses.replace(provider, device_url=None), deadline=5)
    async with answering(400, {"error": "invalid_scope"}) as url:
        with pytest.raises(OAuthError, match="invalid_scope"):
            await device_authorization(dataclasses.replace(provider, device_url=url), deadline=5)
    async with answering(200, "text") as url:
        with pytest.raises(BackendFailure, match="not a JSON object"):
            await device_authorization(dataclasses.replace(provider, device_url=url), deadline=5)
