"""MappedAuthenticator: local password in, the stored upstream login out, per-account backends."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.accounts import (
    AccountAdmin,
    AccountsSettings,
    BackendDefaults,
    Keyring,
    MappedAuthenticator,
    Upstream,
    generate_key,
)
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import AccountRecord, open_secret
from popbridge.contract import (
    Backend,
    Credentials,
    DisposeResult,
    Disposition,
    ListingMemory,
    Mailbox,
    RemoteMessage,
)
from popbridge.errors import AuthFailed, BackendFailure, MessageGone
from popbridge.store import MemoryAccountRecords
from tests.accounts.conftest import provider_for

DEFAULTS = BackendDefaults("memory", {"type": "memory", "host": "default", "port": 1}, "t.toml")


class EmptyMailbox:
    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> Sequence[RemoteMessage]:
        return []

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        raise MessageGone(identity)
        yield b""

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        return DisposeResult()

    async def close(self) -> None:
        return None


@dataclass
class TokenBackend:
    """An upstream that, like Dovecot's oauth2 passdb, asks the provider about each token."""

    fake: FakeOAuthProvider
    seen: list[str] = field(default_factory=list)

    async def open(self, credentials: Credentials) -> Mailbox:
        self.seen.append(credentials.secret)
        if credentials.mechanism != "oauth2" or not self.fake.active(credentials.secret):
            raise AuthFailed("token refused")
        return EmptyMailbox()

    async def check(self) -> list[str]:
        return ["token backend"]


@dataclass
class World:
    records: MemoryAccountRecords
    auth: MappedAuthenticator
    admin: AccountAdmin
    default: MemoryBackend
    built: list[tuple[str, dict[str, Any]]]
    keyring: Keyring


@pytest.fixture
def world(keyring: Keyring, hasher: PasswordHasher, fake: FakeOAuthProvider) -> World:
    records = MemoryAccountRecords()
    settings = AccountsSettings("mapped", keyring, {"custom": provider_for(fake)})
    default = MemoryBackend()
    default.user("alice@example.org", "upstream-pw", b"Subject: a\r\n\r\nhi\r\n")
    built: list[tuple[str, dict[str, Any]]] = []

    def loader(kind: str, table: Mapping[str, Any], *, source: str) -> Backend:
        built.append((kind, dict(table)))
        if table.get("host") == "oauth":
            return TokenBackend(fake)
        backend = MemoryBackend()
        backend.user("alice@example.org", "upstream-pw")
        return backend

    auth = MappedAuthenticator(records, settings, default, DEFAULTS, hasher=hasher, loader=loader)
    admin = AccountAdmin(records, settings, DEFAULTS, hasher=hasher, loader=loader)
    return World(records, auth, admin, default, built, keyring)


async def test_password_account_logs_in_upstream_with_the_stored_secret(world: World) -> None:
    await world.admin.add("Printer", "local-pw", Upstream("alice@example.org"), "upstream-pw")
    login = await world.auth.authenticate("PRINTER", "local-pw")
    assert login.account == "printer" and login.backend is world.default
    assert login.credentials == Credentials("alice@example.org", "upstream-pw", "password")
    mailbox = await login.backend.open(login.credentials)
    assert len(await mailbox.list()) == 1


async def test_wrong_password_and_unknown_user_are_refused_alike(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.admin.add("printer", "local-pw", Upstream("alice@example.org"), "upstream-pw")
    checked: list[object] = []
    verify = world.auth._hasher.verify

    async def spy(password: str, stored: Mapping[str, Any] | None) -> bool:
        checked.append(stored)
        return await verify(password, stored)

    monkeypatch.setattr(world.auth._hasher, "verify", spy)
    for user, password in (("printer", "wrong"), ("nobody", "local-pw"), ("bad name", "x")):
        with pytest.raises(AuthFailed):
            await world.auth.authenticate(user, password)
    assert checked[0] is not None and checked[1:] == [None, None]  # the same KDF work each time


async def test_a_bearer_token_from_a_device_is_refused(world: World) -> None:
    await world.admin.add("printer", "local-pw", Upstream("alice@example.org"), "upstream-pw")
    with pytest.raises(AuthFailed, match="not oauth2"):
        await world.auth.authenticate("printer", "local-pw", mechanism="oauth2")


async def test_broken_records_refuse_the_login_and_tell_the_operator(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.admin.add("printer", "local-pw", Upstream("alice@example.org"), "upstream-pw")
    good = await world.records.get("printer")
    assert good is not None
    await world.records.put("scanner", good)  # a record under another name
    await world.records.put("fax", b"{not json")
    for user in ("scanner", "fax"):
        with pytest.raises(AuthFailed):
            await world.auth.authenticate(user, "local-pw")
    assert "stored record names 'printer'" in caplog.text and "'fax'" in caplog.text


async def test_altered_record_or_missing_key_is_an_operator_problem(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.admin.add("printer", "local-pw", Upstream("alice@example.org"), "upstream-pw")
    stored = json.loads(await world.records.get("printer") or b"")
    stored["upstream"]["user"] = "boss@example.org"
    await world.records.put("printer", json.dumps(stored).encode())
    with pytest.raises(BackendFailure):
        await world.auth.authenticate("printer", "local-pw")
    assert "cannot open the upstream secret" in caplog.text
    world.auth._keyring = Keyring.parse(generate_key())
    await world.admin.add("printer", "local-pw", Upstream("a@x"), "pw", replace=True)
    with pytest.raises(BackendFailure):
        await world.auth.authenticate("printer", "local-pw")


async def test_backend_overrides_are_built_once_per_account(world: World) -> None:
    upstream = Upstream("alice@example.org", backend={"host": "other", "folder": "Scans"})
    await world.admin.add("printer", "local-pw", upstream, "upstream-pw")
    world.built.clear()
    first = await world.auth.authenticate("printer", "local-pw")
    second = await world.auth.authenticate("printer", "local-pw")
    assert first.backend is second.backend is not world.default
    assert world.built == [
        ("memory", {"type": "memory", "host": "other", "port": 1, "folder": "Scans"})
    ]
    moved = Upstream("alice@example.org", backend={"host": "third"})
    await world.admin.add("printer", "local-pw", moved, "upstream-pw", replace=True)
    third = await world.auth.authenticate("printer", "local-pw")
    assert third.backend is not first.backend and world.built[-1][1]["host"] == "third"


async def test_another_backend_type_takes_only_the_overrides(world: World) -> None:
    upstream = Upstream("alice@example.org", backend={"type": "jmapish", "host": "h"})
    await world.admin.add("printer", "local-pw", upstream, "upstream-pw")
    await world.auth.authenticate("printer", "local-pw")
    assert world.built[-1] == ("jmapish", {"type": "jmapish", "host": "h"})


async def oauth_account(world: World, fake: FakeOAuthProvider) -> str:
    refresh = fake.issue_refresh_token("alice")
    upstream = Upstream("alice", "oauth2", {"host": "oauth"}, oauth2="custom")
    await world.admin.add("printer", "local-pw", upstream, refresh)
    return refresh


async def test_oauth2_account_logs_in_with_a_fresh_access_token(
    world: World, fake: FakeOAuthProvider
) -> None:
    await oauth_account(world, fake)
    login = await world.auth.authenticate("printer", "local-pw")
    assert login.credentials.mechanism == "oauth2" and login.credentials.user == "alice"
    assert login.credentials.secret in fake.access_tokens()
    await (await login.backend.open(login.credentials)).close()
    again = await world.auth.authenticate("printer", "local-pw")
    assert again.credentials.secret == login.credentials.secret
    assert fake.grants["refresh_token"] == 1
    assert await again.backend.check() == ["token backend"]


async def test_a_token_revoked_early_is_renewed_once(world: World, fake: FakeOAuthProvider) -> None:
    await oauth_account(world, fake)
    await world.auth.authenticate("printer", "local-pw")
    fake.expire_access_tokens()  # the upstream refuses it; our cache still thinks it is fine
    login = await world.auth.authenticate("printer", "local-pw")
    mailbox = await login.backend.open(login.credentials)
    await mailbox.close()
    assert fake.grants["refresh_token"] == 2


async def test_a_refused_fresh_token_is_an_auth_failure(
    world: World, fake: FakeOAuthProvider
) -> None:
    await oauth_account(world, fake)
    login = await world.auth.authenticate("printer", "local-pw")
    fake.expire_access_tokens()
    fake.access_lifetime = 0  # every new token is dead on arrival
    with pytest.raises(AuthFailed):
        await login.backend.open(login.credentials)


async def test_rotated_refresh_token_is_stored_sealed(
    world: World, fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.rotate = True
    old = await oauth_account(world, fake)
    with caplog.at_level(logging.INFO):
        await world.auth.authenticate("printer", "local-pw")
    record = AccountRecord.from_bytes(await world.records.get("printer") or b"")
    new = open_secret(record, world.keyring)
    assert new != old and new in fake.refresh_tokens()
    assert "stored the rotated refresh token" in caplog.text
    assert new not in caplog.text and old not in caplog.text


async def test_unknown_provider_is_an_operator_problem(
    world: World, fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    await oauth_account(world, fake)
    world.auth._settings = AccountsSettings("mapped", world.keyring, {})
    with pytest.raises(BackendFailure):
        await world.auth.authenticate("printer", "local-pw")
    assert "OAuth2 provider 'custom' is not configured" in caplog.text
