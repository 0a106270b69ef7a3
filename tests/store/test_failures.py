"""The failed-login ledger: one contract, in memory and on a real PostgreSQL.

Reservations count until settled, a settled failure counts for the window, a lockout is
named before a full ledger, a success forgets the user, and a reservation nobody settles
(its instance died) stops counting after its hold. On PostgreSQL two store objects are
two instances: what one reserves, the other sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)
from popbridge.store import pgfailures
from popbridge.store.failures import FailureLedger, Limit, MemoryFailures
from popbridge.store.postgres import PostgresStore, open_postgres_store

WINDOW, HOLD = 900.0, 300.0
USER = [Limit("user u", 2)]
Ledgers = Callable[[], Awaitable[FailureLedger]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def reserve(ledger: FailureLedger, limits: list[Limit] = USER) -> str | None:
    outcome = await ledger.reserve(limits, window=WINDOW, hold=HOLD)
    return outcome.ticket


@pytest.fixture(params=["memory", "postgres"])
async def ledgers(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Ledgers]:
    """Ledgers sharing one state: the same object in memory, instances on PostgreSQL."""
    if request.param == "memory":
        shared = MemoryFailures()

        async def same() -> FailureLedger:
            return shared

        yield same
        return
    server: Postgres = request.getfixturevalue("postgres")
    database = await create_database(server)
    stores: list[PostgresStore] = []

    async def instance() -> FailureLedger:
        stores.append(await open_postgres_store(server.dsn(database)))
        return stores[-1].failures

    yield instance
    for store in stores:
        await store.close()
    await drop_database(server, database)


async def test_reservations_count_until_settled(ledgers: Ledgers) -> None:
    one, two = await ledgers(), await ledgers()
    first, second = await reserve(one), await reserve(two)
    assert first and second and first != second
    assert (await one.reserve(USER, window=WINDOW, hold=HOLD)).busy  # both places reserved
    assert await two.settle(first, failed=False) == [0]
    assert await two.settle(first, failed=False) == []  # settling twice does nothing
    assert await one.settle(second, failed=True) == [1]
    third = await reserve(two)
    assert third is not None and await one.settle(third, failed=True) == [2]
    outcome = await two.reserve([Limit("address a", 5), *USER], window=WINDOW, hold=HOLD)
    assert outcome.locked == "user u"
    assert await one.counts(["user u", "x"], window=WINDOW) == [2, 0]
    await two.forget("user u")
    assert await reserve(one) is not None


async def test_the_first_locked_key_is_named(ledgers: Ledgers) -> None:
    ledger = await ledgers()
    limits = [Limit("address a", 1), Limit("user v", 1)]
    ticket = await reserve(ledger, limits)
    assert ticket is not None
    await ledger.settle(ticket, failed=True)
    outcome = await ledger.reserve(limits, window=WINDOW, hold=HOLD)
    assert outcome.locked == "address a" and not outcome.busy


async def test_concurrent_reservations_never_exceed_the_limit(ledgers: Ledgers) -> None:
    instances = [await ledgers() for _ in range(3)]
    outcomes = await asyncio.gather(
        *(instances[n % 3].reserve(USER, window=WINDOW, hold=HOLD) for n in range(60))
    )
    assert sum(1 for outcome in outcomes if outcome.ticket) == 2


async def test_an_unsettled_reservation_stops_counting_after_its_hold() -> None:
    clock = Clock()
    ledger = MemoryFailures(clock)
    assert await reserve(ledger) and await reserve(ledger)
    assert await reserve(ledger) is None
    clock.now += HOLD + 1
    assert await reserve(ledger) is not None


async def test_postgres_reservations_of_a_dead_instance_expire(
    postgres: Postgres,  # noqa: F811
) -> None:
    database = await create_database(postgres)
    store = await open_postgres_store(postgres.dsn(database))
    try:
        assert await reserve(store.failures) and await reserve(store.failures)
        connection = await asyncpg.connect(postgres.dsn(database))
        try:  # the instance holding them died long ago
            await connection.execute("UPDATE login_failures SET at = at - interval '1 hour'")
        finally:
            await connection.close()
        assert await reserve(store.failures) is not None
    finally:
        await store.close()
        await drop_database(postgres, database)


async def test_postgres_sweeps_rows_nobody_asks_about(
    postgres: Postgres,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgfailures, "SWEEP_EVERY", 1)
    database = await create_database(postgres)
    store = await open_postgres_store(postgres.dsn(database))
    try:
        old = await reserve(store.failures, [Limit("user gone", 5)])
        assert old is not None
        await store.failures.settle(old, failed=True)
        connection = await asyncpg.connect(postgres.dsn(database))
        try:
            await connection.execute("UPDATE login_failures SET at = at - interval '2 days'")
            fresh = await reserve(store.failures)
            assert fresh is not None
            await store.failures.settle(fresh, failed=True)  # and sweeps
            keys = await connection.fetch("SELECT key FROM login_failures")
        finally:
            await connection.close()
        assert [row[0] for row in keys] == ["user u"]
    finally:
        await store.close()
        await drop_database(postgres, database)
