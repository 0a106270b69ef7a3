"""The failed-login ledger shared by every popbridge instance on one PostgreSQL database.

This module owns `FailureLedger` (`popbridge.store.failures`) in the `login_failures`
table: one row per key and attempt, `pending` while the attempt is out upstream, then a
recorded failure (or deleted). `reserve` takes a transaction-scoped advisory lock per key
(in sorted order, so two instances never wait on each other in a cycle), counts, and
inserts its rows in the same transaction, so two instances can never both take the last
place of a key. Times are the database server's, so instances with skewed clocks agree.
A reservation whose instance died stops counting after `hold` seconds.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from typing import Any, Final

from popbridge.store.failures import Limit, Outcome
from popbridge.store.pglocks import guarded, lock_id

ACQUIRE_TIMEOUT: Final = 15.0
SWEEP_EVERY: Final = 200  # settlements between sweeps of rows of keys nobody asks about
SWEEP_AGE: Final = 86_400.0  # seconds: no window or hold is longer than a day

_COUNT = (
    "SELECT key, count(*) FILTER (WHERE NOT pending), count(*) FILTER (WHERE pending)"
    " FROM login_failures WHERE key = ANY($1::text[]) GROUP BY key"
)
_EXPIRE = (
    "DELETE FROM login_failures WHERE key = ANY($1::text[]) AND at < statement_timestamp()"
    " - make_interval(secs => CASE WHEN pending THEN $3::float8 ELSE $2::float8 END)"
)


class PostgresFailures:
    """The shared `FailureLedger`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._settled = itertools.count(1)

    async def reserve(self, limits: Sequence[Limit], *, window: float, hold: float) -> Outcome:
        keys = [limit.key for limit in limits]
        async with (
            guarded("login failures"),
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection,
            connection.transaction(),
        ):
            for key in sorted(set(keys)):
                await connection.execute(
                    "SELECT pg_advisory_xact_lock($1)", lock_id("failures", key)
                )
            await connection.execute(_EXPIRE, keys, float(window), float(hold))
            found = {row[0]: (int(row[1]), int(row[2])) for row in await connection.fetch(
                _COUNT, keys
            )}  # fmt: skip
            for limit in limits:
                if found.get(limit.key, (0, 0))[0] >= limit.most:
                    return Outcome(locked=limit.key)
            if any(sum(found.get(limit.key, (0, 0))) >= limit.most for limit in limits):
                return Outcome()
            ticket = secrets.token_hex(12)
            await connection.executemany(
                "INSERT INTO login_failures (key, ticket, pending, at)"
                " VALUES ($1, $2, true, statement_timestamp())",
                [(key, ticket) for key in keys],
            )
        return Outcome(ticket=ticket, keys=tuple(keys))

    async def settle(self, ticket: str, *, failed: bool) -> list[int]:
        async with (
            guarded("login failures"),
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection,
        ):
            if failed:
                rows = await connection.fetch(
                    "UPDATE login_failures SET pending = false, at = statement_timestamp()"
                    " WHERE ticket = $1 AND pending RETURNING key",
                    ticket,
                )
            else:
                rows = await connection.fetch(
                    "DELETE FROM login_failures WHERE ticket = $1 AND pending RETURNING key",
                    ticket,
                )
            keys = [str(row[0]) for row in rows]
            counts = await connection.fetch(
                "SELECT key, count(*) FROM login_failures WHERE key = ANY($1::text[])"
                " AND NOT pending GROUP BY key",
                keys,
            )
            if next(self._settled) % SWEEP_EVERY == 0:
                await connection.execute(
                    "DELETE FROM login_failures WHERE at < statement_timestamp()"
                    " - make_interval(secs => $1::float8)",
                    SWEEP_AGE,
                )
        by_key = {str(row[0]): int(row[1]) for row in counts}
        return [by_key.get(key, 0) for key in keys]

    async def counts(self, keys: Sequence[str], *, window: float) -> list[int]:
        async with (
            guarded("login failures"),
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection,
        ):
            rows = await connection.fetch(
                "SELECT key, count(*) FROM login_failures WHERE key = ANY($1::text[])"
                " AND NOT pending"
                " AND at >= statement_timestamp() - make_interval(secs => $2::float8)"
                " GROUP BY key",
                list(keys),
                float(window),
            )
        by_key = {str(row[0]): int(row[1]) for row in rows}
        return [by_key.get(key, 0) for key in keys]

    async def forget(self, key: str) -> None:
        async with (
            guarded("login failures"),
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection,
        ):
            await connection.execute(
                "DELETE FROM login_failures WHERE key = $1 AND NOT pending", key
            )
