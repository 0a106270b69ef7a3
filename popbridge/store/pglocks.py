"""Maildrop locks shared by every popbridge instance on one PostgreSQL database.

This module owns the cross-instance maildrop lock (RFC 1939 section 4; RFC 2449 section
8.1.2 `[IN-USE]`). Each lock is a PostgreSQL session-level advisory lock on a 64-bit key
derived from the account name, taken with `pg_try_advisory_lock` on one dedicated
connection per process, held as long as the POP3 session holds its lease. Nothing can be
left behind by a crashed instance: the server drops a connection's advisory locks when the
connection ends, which the kernel causes at once when a process dies, and TCP keepalives
(about 25 seconds) when a whole host or its network does. Advisory locks are re-entrant per
connection, so this process refuses a key it already holds before asking the server, and
if the connection breaks the held keys are taken again on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import asyncpg

from popbridge.store import StoreUnavailable
from popbridge.store.locks import Lease

logger = logging.getLogger(__name__)

HEARTBEAT: Final = 15.0  # seconds between checks that the lock connection still works
# Server-side detection of a dead peer: a backend whose client vanished without a FIN
# (host crash, partition) is dropped, and its advisory locks with it, in about 25 s.
KEEPALIVE: Final = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",
}
FAILURES: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # e.g. a query on a half-dead connection
    OSError,
    TimeoutError,
)


def lock_id(namespace: str, key: str) -> int:
    """A signed 64-bit advisory-lock key for `key` in `namespace` (collisions: 2**-64)."""
    digest = hashlib.sha256(f"popbridge-{namespace}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def guarded(what: str) -> AsyncIterator[None]:
    """Turn a database failure into `StoreUnavailable` (`-ERR [SYS/TEMP]`, RFC 3206 4)."""
    try:
        yield
    except FAILURES as error:
        logger.warning("PostgreSQL store: %s failed: %s: %s", what, type(error).__name__, error)
        raise StoreUnavailable(f"PostgreSQL store: {what}: {type(error).__name__}") from error


class PostgresLocks:
    """`MaildropLocks` as advisory locks on one dedicated connection."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], *, heartbeat: float = HEARTBEAT):
        self._connect = connect
        self._heartbeat = heartbeat
        self._connection: Any = None
        self._held: dict[str, int] = {}
        self._mutex = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def backend_pid(self) -> int | None:
        """The server process holding our locks (tests kill it to play a crash)."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return None
        return int(connection.get_server_pid())

    async def try_acquire(self, key: str) -> Lease | None:
        # Shielded: a session cancelled mid-query must not leave a lock that nobody will
        # release; if the caller goes away, a lock taken meanwhile is given back.
        attempt = asyncio.ensure_future(self._acquire(key))
        try:
            taken = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._undo(done, key))
            raise
        if not taken:
            return None
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="popbridge-lock-heartbeat")
        return _PgLease(self, key)

    async def _acquire(self, key: str) -> bool:
        lock = lock_id("maildrop", key)
        async with self._mutex:
            if key in self._held:
                return False
            async with guarded("maildrop lock"):
                connection = await self._ensure()
                try:
                    taken = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock))
                except BaseException:
                    await self._repair()  # the lock may or may not have been granted
                    raise
            if taken:
                self._held[key] = lock
            return taken

    def _undo(self, attempt: asyncio.Future[bool], key: str) -> None:
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            task = asyncio.ensure_future(self.release(key))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def release(self, key: str) -> None:
        """Give the lock back; never raises (it runs when sessions end, however they end)."""
        await asyncio.shield(self._release(key))

    async def _release(self, key: str) -> None:
        async with self._mutex:
            lock = self._held.pop(key, None)
            connection = self._connection
            if lock is None or connection is None or connection.is_closed():
                return  # a closed connection already released it server-side
            try:
                await connection.fetchval("SELECT pg_advisory_unlock($1)", lock)
            except FAILURES as error:
                # The lock may still be held (it is re-entrant: a later acquire would nest
                # it), so drop the connection, which frees everything, and re-take the rest.
                logger.warning("maildrop unlock failed (%s), reconnecting", type(error).__name__)
                await self._repair()

    async def _repair(self) -> None:
        """Drop a broken or doubtful connection; while locks are held, re-take them at once."""
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None
        if self._held:
            try:
                await self._ensure()
            except FAILURES as error:  # the heartbeat tries again
                logger.warning("maildrop lock connection lost: %s", type(error).__name__)

    async def _ensure(self) -> Any:
        """The lock connection, reconnecting (and re-taking held locks) if it was lost."""
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        connection = await self._connect()
        try:
            for key, lock in list(self._held.items()):
                if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                    # Another instance took it while we were cut off: two sessions may now
                    # share this maildrop until ours ends. Nothing safer is possible here.
                    logger.warning("maildrop lock of %r was lost while disconnected", key)
                    del self._held[key]
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        return connection

    async def _watch(self) -> None:
        """Notice a broken lock connection while sessions hold locks, and repair it."""
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                async with self._mutex:
                    if self._held:
                        await self._check()
            except Exception:  # the heartbeat must outlive any surprise
                logger.exception("maildrop lock heartbeat failed")

    async def _check(self) -> None:
        try:
            connection = await self._ensure()
            await connection.fetchval("SELECT 1")
        except FAILURES as error:
            logger.warning("maildrop lock connection failed: %s; retrying", type(error).__name__)
            await self._repair()

    async def close(self) -> None:
        """Stop the heartbeat and close the connection: the server frees every lock."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        async with self._mutex:
            connection, self._connection = self._connection, None
            self._held.clear()
            if connection is not None and not connection.is_closed():
                try:
                    await asyncio.wait_for(connection.close(), 5)
                except FAILURES:
                    connection.terminate()


class _PgLease:
    def __init__(self, owner: PostgresLocks, key: str) -> None:
        self._owner: PostgresLocks | None = owner
        self._key = key

    async def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            await owner.release(self._key)
