"""The SQLite store: the contract suite on a temp file, plus what only SQLite has.

This module owns the SQLite harness for `tests.store.contract` and the SQLite-only checks:
the default location next to the config file, schema versions, refusing a newer schema or
a file that is not a database, errors becoming `StoreUnavailable`, and a second process
working on the same file at the same time without corrupting it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from popbridge.contract import ListingState, RemoteMessage
from popbridge.errors import ConfigError
from popbridge.store import MemoryStore, Store, StoreUnavailable, open_store
from popbridge.store import sqlite as sqlite_store
from popbridge.store.migrations import MIGRATIONS, SCHEMA_VERSION_SQLITE
from popbridge.store.sqlite import SqliteStore, open_sqlite_store
from tests.store.contract import ACCOUNT, Clock, StoreContract, mail
from tests.store.repeat_contract import RepeatLoginContract, plans  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


class SqliteHarness:
    """Store objects on one file; a crash is a close (the locks live in the process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = Clock()
        self.opened: list[Store] = []

    async def open(self) -> Store:
        store = await open_sqlite_store(self.path, clock=self.clock)
        self.opened.append(store)
        return store

    async def crash(self, store: Store) -> None:
        # A dead process takes its in-process locks and its file handle with it.
        await store.close()

    async def lose(self) -> None:
        for store in self.opened:
            await store.close()
        _delete(self.path)

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[SqliteHarness]:
    harness = SqliteHarness(tmp_path / "state" / "popbridge.sqlite3")
    yield harness
    await harness.close()


class TestSqliteContract(StoreContract, RepeatLoginContract):
    """The contract suite on a SQLite file."""


async def test_sqlite_is_the_default_next_to_the_config(tmp_path: Path) -> None:
    store = await open_store({}, source=str(tmp_path / "popbridge.toml"), base=tmp_path)
    try:
        assert isinstance(store, SqliteStore)
        assert (tmp_path / "popbridge-state.sqlite3").is_file()
    finally:
        await store.close()
    store = await open_store({"path": "sub/s.db"}, source="c.toml", base=tmp_path)
    await store.close()
    assert (tmp_path / "sub" / "s.db").is_file()
    memory = await open_store({"type": "memory"}, source="c.toml", base=tmp_path)
    assert isinstance(memory, MemoryStore)


async def test_schema_version_is_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for _ in range(2):
        await (await open_sqlite_store(path)).close()
    with sqlite3.connect(path) as db:
        versions = db.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(m.version,) for m in MIGRATIONS]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        (epoch,) = db.execute("SELECT value FROM store_meta WHERE key = 'epoch'").fetchone()
    assert len(epoch) == 8


async def test_a_version_1_file_gains_the_listings_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA_VERSION_SQLITE)
        for statement in MIGRATIONS[0].sqlite:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied) VALUES (1, 0)")
    store = await open_sqlite_store(path)
    state = ListingState("t", (RemoteMessage("1.1", 5),))
    await store.listings.for_account(ACCOUNT).save(state)
    assert await store.listings.for_account(ACCOUNT).load() == state
    await store.close()


async def test_a_newer_schema_or_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await (await open_sqlite_store(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version (version, applied) VALUES (99, 0)")
    with pytest.raises(ConfigError, match=r"c\.toml: store\.path: .*schema version 99"):
        await open_store({"path": str(path)}, source="c.toml", base=tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"store\.path"):
        await open_sqlite_store(junk)
    with pytest.raises(ConfigError, match=r"store\.path: cannot use .*under-a-file"):
        await open_sqlite_store(junk / "under-a-file.db")


async def test_a_busy_or_closed_database_is_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "s.db"
    store = await open_sqlite_store(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process mid-transaction
        with pytest.raises(StoreUnavailable):
            await store.uidls.assign(ACCOUNT, [mail(1)])
        blocker.execute("ROLLBACK")
        assert await store.uidls.assign(ACCOUNT, [mail(1)]) == ["100.1"]
    finally:
        blocker.close()
        await store.close()
    with pytest.raises(StoreUnavailable):
        await store.sizes.correct(ACCOUNT, [])


SECOND_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from popbridge.contract import ListingState, RemoteMessage
    from popbridge.store.sqlite import open_sqlite_store

    async def main():
        store = await open_sqlite_store(Path(sys.argv[1]))
        for round in range(40):
            listing = [RemoteMessage(f"{round}.{n}", 10 + n) for n in range(25)]
            uidls = await store.uidls.assign("bob", listing)
            assert uidls == [m.identity for m in listing], uidls
            await store.sizes.record("bob", listing[0].identity, round)
        await store.close()

    asyncio.run(main())
    """
)


async def test_a_second_process_on_the_file_corrupts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    store = await open_sqlite_store(path)
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SECOND_PROCESS, str(path), cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        for round in range(40):
            listing = [RemoteMessage(f"{round}.{n}", 10 + n) for n in range(25)]
            assert await store.uidls.assign(ACCOUNT, listing) == [m.identity for m in listing]
    finally:
        _, errors = await other.communicate()
        await store.close()
    assert other.returncode == 0, errors.decode()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = dict(db.execute("SELECT account, count(*) FROM uidls GROUP BY account"))
        assert counts == {ACCOUNT: 1000, "bob": 1000}
        sizes = db.execute("SELECT size FROM sizes WHERE account = 'bob' ORDER BY size")
        assert sizes.fetchall() == [(r,) for r in range(40)]
