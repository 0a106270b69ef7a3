"""The PostgreSQL maildrop locks' failure handling, against a scripted stand-in for the server.

The real server is in `test_postgres.py`; here a `FakeServer` keeps advisory locks per
connection the way PostgreSQL does (re-entrant, gone with the connection) and can fail
any query on demand, so every repair path runs deterministically: an unlock that fails,
a lock taken by another instance while ours was disconnected, a heartbeat that meets a
dead connection or an unexpected error, and a close that cannot say goodbye.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from popbridge.store import StoreUnavailable
from popbridge.store.pglocks import PostgresLocks, lock_id


class FakeServer:
    """Advisory locks by connection, as PostgreSQL keeps them."""

    def __init__(self) -> None:
        self.locks: dict[int, Counter[int]] = {}
        self.fail_next: list[BaseException] = []
        self.pids = iter(range(100, 10**6))
        self.refuse_connect = False

    def holder(self, lock: int) -> int | None:
        return next((pid for pid, held in self.locks.items() if held[lock] > 0), None)

    async def connect(self) -> FakeConnection:
        if self.refuse_connect:
            raise OSError("connection refused")
        return FakeConnection(self, next(self.pids))


class FakeConnection:
    def __init__(self, server: FakeServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        server.locks[pid] = Counter()
        self.closed = False
        self.fail_close = False

    def is_closed(self) -> bool:
        return self.closed

    def get_server_pid(self) -> int:
        return self.pid

    def terminate(self) -> None:
        self.closed = True
        self.server.locks.pop(self.pid, None)  # the server frees what it held

    async def close(self) -> None:
        if self.fail_close:
            raise OSError("broken pipe")
        self.terminate()

    async def fetchval(self, query: str, *args: Any) -> Any:
        if self.closed:
            raise OSError("connection is closed")
        if self.server.fail_next:
            raise self.server.fail_next.pop(0)
        held = self.server.locks[self.pid]
        if query == "SELECT 1":
            return 1
        (lock,) = args
        if "pg_try_advisory_lock" in query:
            other = self.server.holder(lock)
            if other not in (None, self.pid):
                return False
            held[lock] += 1
            return True
        if "pg_advisory_unlock" in query:
            if held[lock] == 0:
                return False
            held[lock] -= 1
            return True
        raise AssertionError(query)


KEY = "alice"
LOCK = lock_id("maildrop", KEY)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


async def test_a_failed_unlock_drops_the_connection_and_keeps_the_others(
    server: FakeServer,
) -> None:
    locks = PostgresLocks(server.connect)
    lease = await locks.try_acquire(KEY)
    other = await locks.try_acquire("bob")
    assert lease is not None and other is not None
    first = locks.backend_pid
    server.fail_next.append(TimeoutError())
    await lease.release()  # never raises
    assert server.holder(LOCK) is None  # the doubtful connection is gone, and its lock
    assert server.holder(lock_id("maildrop", "bob")) == locks.backend_pid != first
    await other.release()
    await locks.close()


async def test_a_lock_taken_elsewhere_while_disconnected_is_given_up(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    locks = PostgresLocks(server.connect)
    lease = await locks.try_acquire(KEY)
    assert lease is not None
    connection = locks._connection
    connection.terminate()  # cut off
    rival = await server.connect()
    assert await rival.fetchval("SELECT pg_try_advisory_lock($1)", LOCK)
    assert await locks.try_acquire("bob") is not None  # reconnects, re-takes what it can
    assert "lost while disconnected" in caplog.text
    assert server.holder(LOCK) == rival.pid
    await lease.release()  # no longer ours: nothing happens
    assert server.holder(LOCK) == rival.pid
    await locks.close()


async def test_a_failing_query_is_store_unavailable_and_leaves_nothing(
    server: FakeServer,
) -> None:
    locks = PostgresLocks(server.connect)
    server.fail_next.append(OSError("reset by peer"))
    with pytest.raises(StoreUnavailable):
        await locks.try_acquire(KEY)
    assert server.holder(LOCK) is None
    server.refuse_connect = True
    with pytest.raises(StoreUnavailable):
        await locks.try_acquire(KEY)
    server.refuse_connect = False
    lease = await locks.try_acquire(KEY)
    assert lease is not None
    await locks.close()
    assert server.holder(LOCK) is None


async def test_the_heartbeat_survives_failures_and_repairs(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    locks = PostgresLocks(server.connect, heartbeat=0.01)
    assert await locks.try_acquire(KEY) is not None
    server.fail_next.append(RuntimeError("surprise"))
    await _logged(caplog, "maildrop lock heartbeat failed")
    server.refuse_connect = True
    server.fail_next.append(OSError("gone"))
    await _logged(caplog, "maildrop lock connection lost")
    assert server.holder(LOCK) is None  # nobody can hold it for us while we are cut off
    server.refuse_connect = False
    for _ in range(500):  # the heartbeat keeps going and takes the lock again
        if server.holder(LOCK) is not None:
            break
        await asyncio.sleep(0.01)
    assert server.holder(LOCK) == locks.backend_pid
    locks._connection.fail_close = True
    await locks.close()  # a close that cannot say goodbye still drops the connection
    assert server.holder(LOCK) is None and locks.backend_pid is None


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for _ in range(500):
        if text in caplog.text:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never logged: {text}")
