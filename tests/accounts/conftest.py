"""Fixtures for the mapped-accounts and OAuth2 tests: a cheap KDF, a key ring, a fake provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.oauth_provider import FakeOAuthProvider
from popbridge.accounts import Keyring, generate_key
from popbridge.accounts.passwords import PasswordHasher, ScryptParams
from popbridge.oauth2 import Provider

# The tests' own scrypt cost: the real one (32 MiB, ~0.3 s) would dominate the run time.
FAST = ScryptParams(n=2**4, r=8, p=1)


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(FAST)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.parse(generate_key())


@pytest.fixture
def fake() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


def provider_for(fake: FakeOAuthProvider, name: str = "custom") -> Provider:
    """Our client registration at the fake provider."""
    return Provider(
        name=name,
        token_url=f"{fake.url}/token",
        client_id="bridge",
        client_secret="bridge-secret",
        authorize_url=f"{fake.url}/authorize",
        device_url=f"{fake.url}/device",
        scope="mail",
    )
