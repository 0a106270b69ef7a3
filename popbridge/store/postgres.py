"""The shared store: PostgreSQL (asyncpg), for several popbridge instances at once.

This module owns the PostgreSQL implementation of the `Store`: a connection pool for the
UID map (rules in `popbridge.store.uidmap`), measured sizes and account records, schema
migrations at start (`popbridge.store.migrations`, serialised between instances by an
advisory transaction lock), the maildrop locks of `popbridge.store.pglocks` on their own
connection, and the failed-login ledger of `popbridge.store.pgfailures`. Each UID-map
update runs in one transaction under a per-account advisory transaction lock, so two
instances can never hand out UIDLs for one account at once. The DSN may hold a password:
it is never logged, and errors that could echo it are redacted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from popbridge.contract import ListingMemory, ListingState, RemoteMessage, with_exact_sizes
from popbridge.errors import ConfigError
from popbridge.store import listings, uidmap, uidsummary
from popbridge.store.migrations import SCHEMA_VERSION_POSTGRES, SchemaTooNew, pending
from popbridge.store.offload import off_loop
from popbridge.store.pgfailures import PostgresFailures
from popbridge.store.pglocks import FAILURES, KEEPALIVE, PostgresLocks, guarded, lock_id

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
CONNECT_TIMEOUT: Final = 10.0
COMMAND_TIMEOUT: Final = 15.0  # per statement: a hung database must not hang logins
ACQUIRE_TIMEOUT: Final = 15.0  # waiting for a free pooled connection


async def open_postgres_store(
    dsn: str, *, pool_size: int = 5, clock: Clock = time.time
) -> PostgresStore:
    """Connect, migrate, and return the store; `ConfigError` (DSN redacted) if it cannot."""

    def connect_options(name: str) -> dict[str, Any]:
        settings = KEEPALIVE | {"application_name": name}
        return {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT,
                "server_settings": settings}  # fmt: skip

    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=pool_size, **connect_options("popbridge")
        )
    except (*FAILURES, ValueError) as error:
        raise ConfigError(f"store.dsn: cannot connect: {redact(error, dsn)}") from None
    try:
        epoch = await _migrate(pool)
    except (*FAILURES, SchemaTooNew) as error:
        await pool.close()
        raise ConfigError(f"store.dsn: cannot use the database: {redact(error, dsn)}") from None
    locks = PostgresLocks(lambda: asyncpg.connect(dsn, **connect_options("popbridge-locks")))
    logger.info("PostgreSQL store open")
    return PostgresStore(pool, locks, epoch, clock)


def redact(error: BaseException, dsn: str) -> str:
    """`error` as text with the DSN's password (URI or key=value form) blanked out."""
    text = f"{type(error).__name__}: {error}"
    secrets = set(re.findall(r"password\s*=\s*'?([^\s']+)", dsn))
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        secrets.add(password)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def _migrate(pool: Any) -> str:
    """Apply pending migrations (one instance at a time); returns the store's epoch."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_id("schema", ""))
        await connection.execute(SCHEMA_VERSION_POSTGRES)
        current = await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        for migration in pending(int(current)):
            for statement in migration.postgres:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO schema_version (version) VALUES ($1)", migration.version
            )
            logger.info("PostgreSQL store: applied migration %d (%s)", migration.version,
                        migration.description)  # fmt: skip
        await connection.execute(
            "INSERT INTO store_meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING",
            uidmap.new_epoch(),
        )
        return str(await connection.fetchval("SELECT value FROM store_meta WHERE key = 'epoch'"))


class PostgresStore:
    """The `Store` on one PostgreSQL database, shareable by many instances."""

    def __init__(self, pool: Any, locks: PostgresLocks, epoch: str, clock: Clock) -> None:
        self._pool = pool
        self.uidls = PostgresUidls(pool, epoch, clock)
        self.locks = locks
        self.sizes = PostgresSizes(pool)
        self.accounts = PostgresAccounts(pool, clock)
        self.listings = PostgresListings(pool, clock)
        self.failures = PostgresFailures(pool)

    async def close(self) -> None:
        """Close the lock connection (freeing its locks) and the pool; idempotent."""
        await self.locks.close()
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except FAILURES:
            self._pool.terminate()


class PostgresUidls:
    """The persistent `UidlMap` (see `popbridge.store.uidmap` for the rules)."""

    def __init__(self, pool: Any, epoch: str, clock: Clock) -> None:
        self._pool = pool
        self._mint = uidmap.minter(epoch)
        self._clock = clock

    async def assign(
        self, account: str, messages: Sequence[RemoteMessage], *, withheld: Collection[str] = ()
    ) -> list[str]:
        now = int(self._clock())
        wanted = await off_loop(len(messages), uidsummary.digest, messages, withheld)
        async with (
            guarded("UID map"),
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection,
            connection.transaction(),
        ):
            # One writer per account across all instances (RFC 1939 section 7: unique).
            await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_id("uidls", account))
            stored = await connection.fetchrow(
                "SELECT digest, uidls, planned FROM uidl_summaries WHERE account = $1", account
            )
            reused = uidsummary.reusable(
                None if stored is None else tuple(stored), wanted, len(messages), now
            )
            if reused is not None:
                return reused  # an unchanged listing: nothing to read or write
            result = await self._plan(connection, account, messages, withheld, now)
            await _apply(connection, account, result, now)
            await connection.execute(
                "INSERT INTO uidl_summaries (account, digest, uidls, planned)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (account) DO UPDATE SET"
                " digest = excluded.digest, uidls = excluded.uidls, planned = excluded.planned",
                account, wanted, uidsummary.pack(result.uidls), now,
            )  # fmt: skip
        return result.uidls

    async def _plan(
        self, connection: Any, account: str, messages: Sequence[RemoteMessage],
        withheld: Collection[str], now: int,
    ) -> uidmap.Plan:  # fmt: skip
        live = await connection.fetch(
            "SELECT identity, uidl, mark, size, last_seen FROM uidls WHERE account = $1", account
        )
        tombs = await connection.fetch(
            "SELECT identity, uidl, mark, size, last_seen FROM uidl_tombstones WHERE account = $1",
            account,
        )
        return await off_loop(
            len(messages) + len(live),
            _planned, messages, live, tombs, now=now, mint=self._mint, withheld=withheld,
        )  # fmt: skip


def _planned(
    messages: Sequence[RemoteMessage], live: Sequence[Sequence[Any]],
    tombs: Sequence[Sequence[Any]], *, now: int, mint: Callable[[], str],
    withheld: Collection[str],
) -> uidmap.Plan:  # fmt: skip
    """`uidmap.plan` over the fetched records (built into rows where it runs)."""
    return uidmap.plan(
        messages,
        [uidmap.Row(*row) for row in live],
        [uidmap.Row(*row) for row in tombs],
        now=now,
        mint=mint,
        withheld=withheld,
    )


async def _apply(connection: Any, account: str, plan: uidmap.Plan, now: int) -> None:
    """Write a plan: deletions first, so a UIDL or identity can move within one plan."""
    steps: list[tuple[str, list[tuple[Any, ...]]]] = [
        ("DELETE FROM uidls WHERE account = $1 AND identity = $2",
         [(account, i) for i in plan.forget]),
        ("DELETE FROM uidl_tombstones WHERE account = $1 AND uidl = $2",
         [(account, u) for u in plan.unbury]),
        ("DELETE FROM sizes WHERE account = $1 AND identity = $2",
         [(account, i) for i in plan.stale_sizes]),
        ("INSERT INTO uidls (account, identity, uidl, mark, size, last_seen)"
         " VALUES ($1, $2, $3, $4, $5, $6)",
         [(account, r.identity, r.uidl, r.mark, r.size, r.seen) for r in plan.remember]),
        ("INSERT INTO uidl_tombstones (account, uidl, identity, mark, size, last_seen)"
         " VALUES ($1, $2, $3, $4, $5, $6)",
         [(account, r.uidl, r.identity, r.mark, r.size, r.seen) for r in plan.bury]),
        ("UPDATE uidls SET last_seen = $1 WHERE account = $2 AND identity = $3",
         [(now, account, i) for i in plan.touch]),
    ]  # fmt: skip
    for statement, rows in steps:
        if rows:
            await connection.executemany(statement, rows)


class PostgresSizes:
    """The persistent `SizeCache`: octets measured at RETR, per account and identity."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def correct(self, account: str, messages: Sequence[RemoteMessage]) -> list[RemoteMessage]:
        async with guarded("sizes"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            rows = await connection.fetch(
                "SELECT identity, size FROM sizes WHERE account = $1", account
            )
        return with_exact_sizes(messages, {str(row[0]): int(row[1]) for row in rows})

    async def record(self, account: str, identity: str, size: int) -> None:
        async with guarded("sizes"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            await connection.execute(
                "INSERT INTO sizes (account, identity, size) VALUES ($1, $2, $3)"
                " ON CONFLICT (account, identity) DO UPDATE SET size = excluded.size",
                account, identity, size,
            )  # fmt: skip


class PostgresListings:
    """`ListingMemories` in the shared database: one compact row per account's maildrop,
    so every instance starts from the listing the last login left, wherever it ran."""

    def __init__(self, pool: Any, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock
        self._decoded = listings.Decoded()

    def for_account(self, account: str) -> ListingMemory:
        return listings.Bound(self, account)

    async def load(self, account: str) -> ListingState | None:
        async with guarded("listings"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            blob = await connection.fetchval(
                "SELECT state FROM listings WHERE account = $1", account
            )
        return None if blob is None else await self._decoded.decode(account, bytes(blob))

    async def save(self, account: str, state: ListingState) -> None:
        blob = await listings.encoded_or_none(state)
        self._decoded.remember(account, None, None)  # until the row is known to hold it
        async with guarded("listings"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            if blob is None:
                await connection.execute("DELETE FROM listings WHERE account = $1", account)
                return
            await connection.execute(
                "INSERT INTO listings (account, state, updated) VALUES ($1, $2, $3)"
                " ON CONFLICT (account) DO UPDATE SET state = excluded.state,"
                " updated = excluded.updated",
                account, blob, int(self._clock()),
            )  # fmt: skip
        self._decoded.remember(account, blob, state)


class PostgresAccounts:
    """`AccountRecords` in the shared database."""

    def __init__(self, pool: Any, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    async def get(self, name: str) -> bytes | None:
        async with guarded("accounts"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            record = await connection.fetchval("SELECT record FROM accounts WHERE name = $1", name)
        return None if record is None else bytes(record)

    async def put(self, name: str, record: bytes) -> None:
        async with guarded("accounts"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            await connection.execute(
                "INSERT INTO accounts (name, record, updated) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET record = excluded.record,"
                " updated = excluded.updated",
                name, bytes(record), int(self._clock()),
            )  # fmt: skip

    async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
        async with guarded("accounts"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            if expected is None:
                status = await connection.execute(
                    "INSERT INTO accounts (name, record, updated) VALUES ($1, $2, $3)"
                    " ON CONFLICT (name) DO NOTHING",
                    name, bytes(record), int(self._clock()),
                )  # fmt: skip
            else:
                status = await connection.execute(
                    "UPDATE accounts SET record = $1, updated = $2 WHERE name = $3"
                    " AND record = $4",
                    bytes(record), int(self._clock()), name, bytes(expected),
                )  # fmt: skip
        return str(status).rsplit(" ", 1)[-1] != "0"

    async def delete(self, name: str) -> bool:
        async with guarded("accounts"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            status = await connection.execute("DELETE FROM accounts WHERE name = $1", name)
        return str(status) != "DELETE 0"

    async def names(self) -> list[str]:
        async with guarded("accounts"), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
            rows = await connection.fetch('SELECT name FROM accounts ORDER BY name COLLATE "C"')
        return [str(row[0]) for row in rows]
