"""The embedded store: one SQLite file, for one popbridge instance (the default).

This module owns the SQLite implementation of the `Store`: the UID map (rules in
`popbridge.store.uidmap`), measured sizes and account records in one file, migrated at
start (`popbridge.store.migrations`). SQLite's calls block, so the connection lives in a
dedicated worker thread and every operation runs there as one whole transaction; the event
loop only awaits it. Maildrop locks are kept in this process (one table per database file,
so two store objects on one file still exclude each other): SQLite is for ONE instance. A
second process on the same file cannot corrupt it (WAL journal, `BEGIN IMMEDIATE` around
every change), but it does not see this process's locks; use PostgreSQL for several.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from popbridge.contract import ListingMemory, ListingState, RemoteMessage, with_exact_sizes
from popbridge.errors import ConfigError
from popbridge.store import StoreUnavailable, listings, uidmap, uidsummary
from popbridge.store.failures import FailureLedger, MemoryFailures
from popbridge.store.locks import Lease
from popbridge.store.migrations import SCHEMA_VERSION_SQLITE, SchemaTooNew, pending

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another process's transaction

# Keys locked in this process, per database file. Module-wide on purpose: the lock must
# hold across every store object this process opens on the file, like a real lock would.
_HELD: dict[str, set[str]] = {}


async def open_sqlite_store(path: Path, *, clock: Clock = time.time) -> SqliteStore:
    """Open (creating and migrating as needed) the store file at `path`."""
    database = _Database(Path(path))
    try:
        epoch = await database.start()
    except (sqlite3.Error, OSError, SchemaTooNew) as error:
        await database.close()
        hint = "; the file and its directory must be writable" if _unwritable(error) else ""
        raise ConfigError(f"store.path: cannot use {str(path)!r}: {error}{hint}") from None
    logger.info("SQLite store %s open (one instance only)", path)
    return SqliteStore(database, epoch, clock)


def _unwritable(error: BaseException) -> bool:
    return isinstance(error, PermissionError | sqlite3.OperationalError) and (
        "unable to open" in str(error) or "readonly" in str(error) or "ermission" in str(error)
    )


class SqliteStore:
    """The `Store` on one SQLite file."""

    def __init__(self, database: _Database, epoch: str, clock: Clock) -> None:
        self._database = database
        self.uidls = SqliteUidls(database, epoch, clock)
        self.locks = SqliteLocks(str(database.path.resolve()))
        self.sizes = SqliteSizes(database)
        self.accounts = SqliteAccounts(database, clock)
        self.listings = SqliteListings(database, clock)
        self.failures: FailureLedger = MemoryFailures()  # one instance: its memory suffices

    async def close(self) -> None:
        """Release this store's locks and close the file; idempotent."""
        self.locks.release_all()
        await self._database.close()


class _Database:
    """One sqlite3 connection, created, used and closed only by its own worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="popbridge-sqlite")
        self._connection: sqlite3.Connection | None = None

    async def start(self) -> str:
        """Connect, migrate, and return the store's epoch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._start)

    def _start(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
        connection = sqlite3.connect(self.path, isolation_level=None)
        self._connection = connection
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL").fetchone()
        # FULL: a UIDL handed to a client must survive a power cut (RFC 1939 section 7).
        connection.execute("PRAGMA synchronous = FULL")
        _transaction(connection, _migrate, write=True)
        return _transaction(connection, _epoch, write=True)

    async def call(self, work: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run `work` as one transaction in the worker thread."""
        connection = self._connection
        if connection is None:
            raise StoreUnavailable(f"SQLite store {self.path} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, _transaction, connection, work, write)
        except sqlite3.Error as error:
            logger.warning("SQLite store %s: %s", self.path, error)
            raise StoreUnavailable(f"SQLite store {self.path}: {error}") from error

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._executor.shutdown(wait=False)


def _transaction(
    connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], write: bool
) -> T:
    # IMMEDIATE takes the write lock up front, so a read-modify-write cannot interleave
    # with another process's (SQLite would otherwise fail one of them mid-way).
    connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        result = work(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def _migrate(connection: sqlite3.Connection) -> None:
    connection.execute(SCHEMA_VERSION_SQLITE)
    (current,) = connection.execute(
        "SELECT coalesce(max(version), 0) FROM schema_version"
    ).fetchone()
    for migration in pending(int(current)):
        for statement in migration.sqlite:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
            (migration.version, int(time.time())),
        )
        logger.info(
            "SQLite store: applied migration %d (%s)", migration.version, migration.description
        )


def _epoch(connection: sqlite3.Connection) -> str:
    connection.execute(
        "INSERT INTO store_meta (key, value) VALUES ('epoch', ?) ON CONFLICT DO NOTHING",
        (uidmap.new_epoch(),),
    )
    (epoch,) = connection.execute("SELECT value FROM store_meta WHERE key = 'epoch'").fetchone()
    return str(epoch)


class SqliteUidls:
    """The persistent `UidlMap` (see `popbridge.store.uidmap` for the rules)."""

    def __init__(self, database: _Database, epoch: str, clock: Clock) -> None:
        self._database = database
        self._mint = uidmap.minter(epoch)
        self._clock = clock

    async def assign(
        self, account: str, messages: Sequence[RemoteMessage], *, withheld: Collection[str] = ()
    ) -> list[str]:
        now = int(self._clock())
        listing = list(messages)

        def work(connection: sqlite3.Connection) -> list[str]:
            # In the worker thread, like the plan: on a large listing the digest is tens of
            # milliseconds of Python that would otherwise stall every session on the loop.
            wanted = uidsummary.digest(listing, withheld)
            stored = connection.execute(
                "SELECT digest, uidls, planned FROM uidl_summaries WHERE account = ?", (account,)
            ).fetchone()
            reused = uidsummary.reusable(stored, wanted, len(listing), now)
            if reused is not None:
                return reused  # an unchanged listing: nothing to read or write
            live = connection.execute(
                "SELECT identity, uidl, mark, size, last_seen FROM uidls WHERE account = ?",
                (account,),
            ).fetchall()
            tombs = connection.execute(
                "SELECT identity, uidl, mark, size, last_seen FROM uidl_tombstones"
                " WHERE account = ?",
                (account,),
            ).fetchall()
            result = uidmap.plan(
                listing,
                [uidmap.Row(*row) for row in live],
                [uidmap.Row(*row) for row in tombs],
                now=now,
                mint=self._mint,
                withheld=withheld,
            )
            _apply(connection, account, result, now)
            connection.execute(
                "INSERT INTO uidl_summaries (account, digest, uidls, planned) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account) DO UPDATE SET digest = excluded.digest,"
                " uidls = excluded.uidls, planned = excluded.planned",
                (account, wanted, uidsummary.pack(result.uidls), now),
            )
            return result.uidls

        return await self._database.call(work, write=True)


def _apply(connection: sqlite3.Connection, account: str, plan: uidmap.Plan, now: int) -> None:
    """Write a plan: deletions first, so a UIDL or identity can move within one plan."""
    connection.executemany(
        "DELETE FROM uidls WHERE account = ? AND identity = ?", [(account, i) for i in plan.forget]
    )
    connection.executemany(
        "DELETE FROM uidl_tombstones WHERE account = ? AND uidl = ?",
        [(account, u) for u in plan.unbury],
    )
    connection.executemany(
        "DELETE FROM sizes WHERE account = ? AND identity = ?",
        [(account, i) for i in plan.stale_sizes],
    )
    connection.executemany(
        "INSERT INTO uidls (account, identity, uidl, mark, size, last_seen)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(account, r.identity, r.uidl, r.mark, r.size, r.seen) for r in plan.remember],
    )
    connection.executemany(
        "INSERT INTO uidl_tombstones (account, uidl, identity, mark, size, last_seen)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(account, r.uidl, r.identity, r.mark, r.size, r.seen) for r in plan.bury],
    )
    connection.executemany(
        "UPDATE uidls SET last_seen = ? WHERE account = ? AND identity = ?",
        [(now, account, i) for i in plan.touch],
    )


class SqliteSizes:
    """The persistent `SizeCache`: octets measured at RETR, per account and identity."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    async def correct(self, account: str, messages: Sequence[RemoteMessage]) -> list[RemoteMessage]:
        def work(connection: sqlite3.Connection) -> dict[str, int]:
            rows = connection.execute(
                "SELECT identity, size FROM sizes WHERE account = ?", (account,)
            ).fetchall()
            return {str(identity): int(size) for identity, size in rows}

        measured = await self._database.call(work)
        return with_exact_sizes(messages, measured)

    async def record(self, account: str, identity: str, size: int) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO sizes (account, identity, size) VALUES (?, ?, ?)"
                " ON CONFLICT (account, identity) DO UPDATE SET size = excluded.size",
                (account, identity, size),
            )

        await self._database.call(work, write=True)


class SqliteListings:
    """`ListingMemories` in the store file: one compact row per account's maildrop."""

    def __init__(self, database: _Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock
        self._decoded = listings.Decoded()

    def for_account(self, account: str) -> ListingMemory:
        return listings.Bound(self, account)

    async def load(self, account: str) -> ListingState | None:
        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT state FROM listings WHERE account = ?", (account,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        blob = await self._database.call(work)
        return None if blob is None else await self._decoded.decode(account, blob)

    async def save(self, account: str, state: ListingState) -> None:
        blob = await listings.encoded_or_none(state)

        def work(connection: sqlite3.Connection) -> None:
            if blob is None:
                connection.execute("DELETE FROM listings WHERE account = ?", (account,))
                return
            connection.execute(
                "INSERT INTO listings (account, state, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (account) DO UPDATE SET state = excluded.state,"
                " updated = excluded.updated",
                (account, blob, int(self._clock())),
            )

        self._decoded.remember(account, None, None)  # until the row is known to hold it
        await self._database.call(work, write=True)
        self._decoded.remember(account, blob, state)


class SqliteAccounts:
    """`AccountRecords` in the store file."""

    def __init__(self, database: _Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock

    async def get(self, name: str) -> bytes | None:
        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT record FROM accounts WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._database.call(work)

    async def put(self, name: str, record: bytes) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO accounts (name, record, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET record = excluded.record,"
                " updated = excluded.updated",
                (name, bytes(record), int(self._clock())),
            )

        await self._database.call(work, write=True)

    async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
        now = int(self._clock())

        def work(connection: sqlite3.Connection) -> bool:
            if expected is None:
                return (
                    connection.execute(
                        "INSERT INTO accounts (name, record, updated) VALUES (?, ?, ?)"
                        " ON CONFLICT (name) DO NOTHING",
                        (name, bytes(record), now),
                    ).rowcount
                    > 0
                )
            return (
                connection.execute(
                    "UPDATE accounts SET record = ?, updated = ? WHERE name = ? AND record = ?",
                    (bytes(record), now, name, bytes(expected)),
                ).rowcount
                > 0
            )

        return await self._database.call(work, write=True)

    async def delete(self, name: str) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            return connection.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount > 0

        return await self._database.call(work, write=True)

    async def names(self) -> list[str]:
        def work(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute("SELECT name FROM accounts ORDER BY name").fetchall()
            return [str(name) for (name,) in rows]

        return await self._database.call(work)


class SqliteLocks:
    """Maildrop locks (RFC 1939 section 4) for one database file, held in this process."""

    def __init__(self, database: str) -> None:
        self._held = _HELD.setdefault(database, set())
        self._mine: set[str] = set()

    async def try_acquire(self, key: str) -> Lease | None:
        if key in self._held:
            return None
        self._held.add(key)
        self._mine.add(key)
        return _SqliteLease(self, key)

    def release(self, key: str) -> None:
        if key in self._mine:
            self._mine.discard(key)
            self._held.discard(key)

    def release_all(self) -> None:
        """What a process exit does: every lock this store object holds goes."""
        for key in list(self._mine):
            self.release(key)


class _SqliteLease:
    def __init__(self, owner: SqliteLocks, key: str) -> None:
        self._owner: SqliteLocks | None = owner
        self._key = key

    async def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.release(self._key)
