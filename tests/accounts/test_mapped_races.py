"""Mapped accounts under concurrency, on SQLite and on a real PostgreSQL.

Two local users mapped to one upstream mailbox exclude each other (RFC 1939 section 4: one
session per maildrop), over real sockets. A record's read-modify-write (a refresh-token
rotation, `accounts passwd`, `rekey`) is conditional on what was read: when another writer
gets in between the read and the write, neither update is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)
from popbridge.accounts import (
    AccountAdmin,
    AccountError,
    AccountsSettings,
    BackendDefaults,
    Keyring,
    MappedAuthenticator,
    Upstream,
    generate_key,
)
from popbridge.accounts.manage import load_record, store_secret
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import open_secret
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle, ThrottlePolicy
from popbridge.store import AccountRecords, Store
from popbridge.store.postgres import open_postgres_store
from popbridge.store.sqlite import open_sqlite_store

DEFAULTS = BackendDefaults("memory", {"type": "memory"}, "t")


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = await open_sqlite_store(tmp_path / "state.sqlite3")
        yield opened
        await opened.close()
        return
    server: Postgres = request.getfixturevalue("postgres")
    database = await create_database(server)
    opened = await open_postgres_store(server.dsn(database))
    yield opened
    await opened.close()
    await drop_database(server, database)


@pytest.fixture
def admin(store: Store, keyring: Keyring, hasher: PasswordHasher) -> AccountAdmin:
    return AccountAdmin(
        store.accounts, AccountsSettings("mapped", keyring), DEFAULTS, hasher=hasher,
        loader=lambda *_args, **_kwargs: MemoryBackend(),
    )  # fmt: skip


class Interleaved:
    """`AccountRecords` that lets another writer in between a read and the next write."""

    def __init__(self, inner: AccountRecords, between: Callable[[], Awaitable[object]]) -> None:
        self.inner = inner
        self._between: Callable[[], Awaitable[object]] | None = between

    async def _interleave(self) -> None:
        between, self._between = self._between, None
        if between is not None:
            await between()

    async def get(self, name: str) -> bytes | None:
        return await self.inner.get(name)

    async def put(self, name: str, record: bytes) -> None:
        await self._interleave()
        await self.inner.put(name, record)

    async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
        await self._interleave()
        return await self.inner.replace(name, expected, record)

    async def delete(self, name: str) -> bool:
        return await self.inner.delete(name)

    async def names(self) -> list[str]:
        return await self.inner.names()


async def test_conditional_replace(store: Store) -> None:
    records = store.accounts
    assert await records.replace("a", None, b"one")
    assert not await records.replace("a", None, b"two")  # exists already
    assert not await records.replace("a", b"stale", b"two")
    assert await records.get("a") == b"one"
    assert await records.replace("a", b"one", b"two")
    assert await records.get("a") == b"two"
    assert not await records.replace("missing", b"one", b"two")
    assert await records.get("missing") is None


async def test_passwd_does_not_undo_a_token_rotation_in_between(
    admin: AccountAdmin, store: Store, hasher: PasswordHasher
) -> None:
    await admin.add("printer", "old-pw", Upstream("up"), "refresh-1")

    async def rotation() -> None:
        await store_secret(store.accounts, admin.keyring, "printer", "refresh-2")

    racing = AccountAdmin(Interleaved(store.accounts, rotation), admin.settings, DEFAULTS,
                          hasher=hasher, loader=lambda *_a, **_k: MemoryBackend())  # fmt: skip
    await racing.passwd("printer", "new-pw")
    record = await load_record(store.accounts, "printer")
    assert open_secret(record, admin.keyring) == "refresh-2"  # the rotation stayed
    assert await hasher.verify("new-pw", record.password)  # and so did the new password


async def test_token_rotation_does_not_undo_a_passwd_in_between(
    admin: AccountAdmin, store: Store, hasher: PasswordHasher
) -> None:
    await admin.add("printer", "old-pw", Upstream("up"), "refresh-1")
    records = Interleaved(store.accounts, lambda: admin.passwd("printer", "new-pw"))
    await store_secret(records, admin.keyring, "printer", "refresh-2")
    record = await load_record(store.accounts, "printer")
    assert open_secret(record, admin.keyring) == "refresh-2"
    assert await hasher.verify("new-pw", record.password)


async def test_rekey_does_not_undo_a_token_rotation_in_between(
    store: Store, hasher: PasswordHasher
) -> None:
    old_key, new_key = generate_key(), generate_key()
    keyring, rotated = Keyring.parse(old_key), Keyring.parse(f"{new_key}\n{old_key}")
    admin = AccountAdmin(store.accounts, AccountsSettings("mapped", keyring), DEFAULTS,
                         hasher=hasher, loader=lambda *_a, **_k: MemoryBackend())  # fmt: skip
    await admin.add("printer", "pw", Upstream("up"), "refresh-1")

    async def rotation() -> None:
        await store_secret(store.accounts, keyring, "printer", "refresh-2")

    settings = AccountsSettings("mapped", rotated)
    racing = AccountAdmin(Interleaved(store.accounts, rotation), settings, DEFAULTS,
                          hasher=hasher, loader=lambda *_a, **_k: MemoryBackend())  # fmt: skip
    assert await racing.rekey() == (1, 0)
    record = await load_record(store.accounts, "printer")
    assert open_secret(record, rotated) == "refresh-2" and rotated.is_current(record.secret)


async def test_two_local_users_of_one_upstream_mailbox_exclude_each_other(
    admin: AccountAdmin, store: Store, keyring: Keyring, hasher: PasswordHasher
) -> None:
    backend = MemoryBackend()
    backend.user("shared", "upstream-pw", b"Subject: one\r\n\r\nbody\r\n")
    backend.user("other", "other-pw")
    await admin.add("printer", "p1", Upstream("shared"), "upstream-pw")
    await admin.add("scanner", "p2", Upstream("shared"), "upstream-pw")
    await admin.add("fax", "p3", Upstream("other"), "other-pw")
    authenticator = MappedAuthenticator(store.accounts, admin.settings, backend, DEFAULTS,
                                        hasher=hasher)  # fmt: skip
    policy = ThrottlePolicy(base_delay=0)
    services = Services(backend=backend, locks=store.locks, uidls=store.uidls,
                        authenticator=authenticator, throttle=Throttle(policy))  # fmt: skip
    listener = ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True)
    config = Config(source="t", listeners=(listener,), backend_type="memory",
                    server=ServerConfig(throttle=policy))  # fmt: skip
    server = Pop3Server(config, services)
    await server.start()
    try:
        holder = await Pop3Client.login(server, "printer", "p1")
        assert holder.reply.startswith(b"+OK maildrop has 1 messages")
        second = await Pop3Client.login(server, "scanner", "p2")  # the same mailbox upstream
        assert second.reply.startswith(b"-ERR [IN-USE]")
        other = await Pop3Client.login(server, "fax", "p3")  # another mailbox: not locked
        assert other.reply.startswith(b"+OK")
        await holder.quit()
        again = await Pop3Client.login(server, "scanner", "p2")  # free once the first left
        assert again.reply.startswith(b"+OK maildrop has 1 messages")
        for client in (second, other, again):
            await client.quit()
    finally:
        await server.stop()


class Pop3Client:
    """A raw POP3 connection that has sent USER and PASS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reply = b""

    @classmethod
    async def login(cls, server: Pop3Server, user: str, password: str) -> Pop3Client:
        client = cls(*await asyncio.open_connection(*server.addresses[0]))
        await client.reader.readline()
        client.writer.write(f"USER {user}\r\nPASS {password}\r\n".encode())
        await client.reader.readline()
        client.reply = await client.reader.readline()
        return client

    async def quit(self) -> None:
        self.writer.write(b"QUIT\r\n")
        await self.reader.read()
        self.writer.close()


async def test_two_adds_of_one_name_do_not_overwrite_each_other(
    admin: AccountAdmin, store: Store, hasher: PasswordHasher
) -> None:
    async def other_add() -> None:
        await admin.add("printer", "theirs", Upstream("up"), "their-secret")

    racing = AccountAdmin(Interleaved(store.accounts, other_add), admin.settings, DEFAULTS,
                          hasher=hasher, loader=lambda *_a, **_k: MemoryBackend())  # fmt: skip
    with pytest.raises(AccountError, match="exists"):
        await racing.add("printer", "mine", Upstream("up"), "my-secret")
    record = await load_record(store.accounts, "printer")
    assert open_secret(record, admin.keyring) == "their-secret"


async def test_an_update_that_keeps_losing_gives_up(admin: AccountAdmin, store: Store) -> None:
    await admin.add("printer", "pw", Upstream("up"), "refresh-1")

    class Losing(Interleaved):
        async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
            return False

    async def nobody() -> None:
        return None

    with pytest.raises(AccountError, match="kept changing"):
        await store_secret(Losing(store.accounts, nobody), admin.keyring, "printer", "x")
