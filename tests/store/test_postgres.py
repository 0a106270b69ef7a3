"""The PostgreSQL store on a real server: the contract suite, plus what only it has.

This module owns the PostgreSQL harness for `tests.store.contract` (every store object has
its own pool and lock connection, as a separate instance would; a crash is the server
ending the lock connection) and the PostgreSQL-only checks: configuration through
`open_store`, the DSN password never reaching a message or a log line, migrations raced by
two instances, the lock connection lost and repaired, and a cancelled lock attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from devkit.dovecot import free_port
from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
    terminate_backend,
)
from popbridge.errors import ConfigError
from popbridge.store import Store, StoreUnavailable, open_store
from popbridge.store.migrations import MIGRATIONS
from popbridge.store.pglocks import PostgresLocks
from popbridge.store.postgres import PostgresStore, open_postgres_store, redact
from tests.store.contract import ACCOUNT, Clock, StoreContract, eventually_acquire, mail
from tests.store.repeat_contract import RepeatLoginContract, plans  # noqa: F401


class PostgresHarness:
    """Store objects on one database, each with its own connections: separate instances."""

    def __init__(self, server: Postgres, database: str) -> None:
        self.server = server
        self.database = database
        self.clock = Clock()
        self.opened: list[PostgresStore] = []

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.database)

    async def open(self) -> Store:
        store = await open_postgres_store(self.dsn, clock=self.clock)
        self.opened.append(store)
        return store

    async def crash(self, store: Store) -> None:
        assert isinstance(store, PostgresStore)
        # The dead process no longer runs its heartbeat (which would reconnect) ...
        watchdog = store.locks._watchdog
        if watchdog is not None:
            watchdog.cancel()
        # ... and the server notices its connection is gone.
        pid = store.locks.backend_pid
        if pid is not None:
            await terminate_backend(self.server, pid)

    async def lose(self) -> None:
        await drop_database(self.server, self.database)
        admin = await asyncpg.connect(self.server.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture
async def harness(postgres: Postgres) -> AsyncIterator[PostgresHarness]:  # noqa: F811
    database = await create_database(postgres)
    harness = PostgresHarness(postgres, database)
    yield harness
    await harness.close()
    await drop_database(postgres, database)


class TestPostgresContract(StoreContract, RepeatLoginContract):
    """The contract suite on a PostgreSQL database."""


async def test_configured_through_open_store_with_dsn_env(
    harness: PostgresHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POPBRIDGE_TEST_DSN", harness.dsn)
    settings = {"type": "postgres", "dsn_env": "POPBRIDGE_TEST_DSN", "pool_size": 2}
    store = await open_store(settings, source="c.toml", base=tmp_path)
    try:
        assert isinstance(store, PostgresStore)
        assert await store.uidls.assign(ACCOUNT, [mail(1)]) == ["100.1"]
    finally:
        await store.close()
    with pytest.raises(ConfigError, match=r"c\.toml: store\.dsn: is required"):
        await open_store({"type": "postgres"}, source="c.toml", base=tmp_path)


async def test_the_dsn_password_is_never_shown_or_logged(
    harness: PostgresHarness, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    password = harness.server.password
    wrong = harness.dsn.replace(password, password + "-wrong")
    with pytest.raises(ConfigError) as refused:
        await open_postgres_store(wrong)
    assert "password" in str(refused.value) and password not in str(refused.value)
    unreachable = f"postgresql://popbridge:{password}@127.0.0.1:{free_port()}/x"
    with pytest.raises(ConfigError) as down:
        await open_store({"type": "postgres", "dsn": unreachable}, source="c.toml", base=tmp_path)
    assert str(down.value).startswith("c.toml: store.dsn: cannot connect")
    store = await harness.open()
    await store.uidls.assign(ACCOUNT, [mail(1)])
    await store.close()
    assert password not in caplog.text and password not in str(down.value)
    assert redact(ValueError(f"bad dsn password={password} x"), f"password={password}") == (
        "ValueError: bad dsn password=*** x"
    )


async def test_instances_starting_together_migrate_once(harness: PostgresHarness) -> None:
    stores = await asyncio.gather(*(harness.open() for _ in range(4)))
    assert len(stores) == 4
    connection = await asyncpg.connect(harness.dsn)
    try:
        versions = await connection.fetch("SELECT version FROM schema_version")
        epochs = await connection.fetch("SELECT value FROM store_meta WHERE key = 'epoch'")
        assert [row[0] for row in versions] == [m.version for m in MIGRATIONS]
        assert len(epochs) == 1
        await connection.execute("INSERT INTO schema_version (version) VALUES (99)")
    finally:
        await connection.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        await harness.open()


async def test_a_closed_store_is_unavailable(harness: PostgresHarness) -> None:
    store = await harness.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.uidls.assign(ACCOUNT, [mail(1)])
    with pytest.raises(StoreUnavailable):
        await store.accounts.names()


async def test_a_lost_lock_connection_takes_its_locks_back(harness: PostgresHarness) -> None:
    holder, other = await harness.open(), await harness.open()
    assert isinstance(holder, PostgresStore)
    lease = await holder.locks.try_acquire(ACCOUNT)
    assert lease is not None
    pid = holder.locks.backend_pid
    assert pid is not None
    await terminate_backend(harness.server, pid)  # a network cut, the process lives on
    for attempt in range(200):  # until the holder noticed and reconnected
        with contextlib.suppress(StoreUnavailable):  # a query may still meet the old one
            await holder.locks.try_acquire(f"other-{attempt}")
        if holder.locks.backend_pid not in (None, pid):
            break
        await asyncio.sleep(0.05)
    assert holder.locks.backend_pid not in (None, pid)
    assert await other.locks.try_acquire(ACCOUNT) is None  # taken again on the new one
    await lease.release()
    assert await eventually_acquire(other, ACCOUNT)


async def test_the_heartbeat_repairs_the_lock_connection(harness: PostgresHarness) -> None:
    other = await harness.open()
    locks = PostgresLocks(lambda: asyncpg.connect(harness.dsn), heartbeat=0.05)
    try:
        assert await locks.try_acquire(ACCOUNT) is not None
        pid = locks.backend_pid
        assert pid is not None
        await terminate_backend(harness.server, pid)
        for _ in range(200):
            if locks.backend_pid not in (None, pid):
                break
            await asyncio.sleep(0.05)
        assert locks.backend_pid not in (None, pid)
        assert await other.locks.try_acquire(ACCOUNT) is None
    finally:
        await locks.close()
    assert await eventually_acquire(other, ACCOUNT)


async def test_a_cancelled_attempt_leaves_no_lock_behind(harness: PostgresHarness) -> None:
    holder, other = await harness.open(), await harness.open()
    for _ in range(5):
        attempt = asyncio.ensure_future(holder.locks.try_acquire(ACCOUNT))
        await asyncio.sleep(0)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        # Once the holder can take it again, its cancelled attempt is over (it held the
        # mutex) and gave back whatever it took; then nothing is left on the server either.
        assert await eventually_acquire(holder, ACCOUNT)
        assert await eventually_acquire(other, ACCOUNT)
