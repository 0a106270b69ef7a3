"""Failed-login counters with reservations: the ledger the login throttle decides on.

This module owns how failed logins are counted per key (a client's address group, a user
name) within a sliding window, and the reservations that make the count hold under
concurrency. A login attempt reserves a place on each of its keys *before* it talks to the
upstream; a reservation counts as a failure until it is settled, as a failure or not.
`reserve` grants a place only while recorded failures plus places already reserved stay
below the key's limit, so however many attempts race, no more than the limit can be out
upstream with a wrong password at once. A reservation that is never settled (its process
died) stops counting after `hold` seconds. `MemoryFailures` serves one process; the
PostgreSQL store has a shared ledger (`popbridge.store.pgfailures`) for several.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

MAX_TRACKED = 100_000  # keys remembered at most; the oldest are forgotten first


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `most` failures of `key` in the window, reserved places included."""

    key: str
    most: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `reserve` decided: a `ticket`, a `locked` key, or neither (all places taken)."""

    ticket: str | None = None
    locked: str | None = None
    keys: tuple[str, ...] = field(default=())

    @property
    def busy(self) -> bool:
        return self.ticket is None and self.locked is None


class FailureLedger(Protocol):
    async def reserve(self, limits: Sequence[Limit], *, window: float, hold: float) -> Outcome:
        """Reserve a place on every key at once, or say which key is locked or that none
        is free now; the keys are checked in order and a locked key is named first."""
        ...

    async def settle(self, ticket: str, *, failed: bool) -> list[int]:
        """End a reservation: a failure (recorded now) or not; returns the ticket's keys'
        recorded failures afterwards. Settling twice, or an unknown ticket, does nothing."""
        ...

    async def counts(self, keys: Sequence[str], *, window: float) -> list[int]:
        """Recorded failures per key within the window (reservations not included)."""
        ...

    async def forget(self, key: str) -> None:
        """Drop `key`'s recorded failures (a successful login clears its user)."""
        ...


class _Key:
    """One key's recorded failure times and open reservations."""

    __slots__ = ("failures", "pending")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()
        self.pending: dict[str, float] = {}  # ticket -> when it was reserved


class MemoryFailures:
    """The ledger in this process's memory, bounded in keys."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._tickets: dict[str, tuple[str, ...]] = {}
        self._ids = itertools.count(1)

    def _entry(self, key: str, window: float, hold: float) -> _Key:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key()
            while len(self._keys) > MAX_TRACKED:
                self._keys.popitem(last=False)  # its tickets still settle their other keys
        self._keys.move_to_end(key)
        now = self._clock()
        while entry.failures and entry.failures[0] < now - window:
            entry.failures.popleft()
        for ticket, since in list(entry.pending.items()):
            if since < now - hold:  # never settled: stop counting it
                del entry.pending[ticket]
        return entry

    async def reserve(self, limits: Sequence[Limit], *, window: float, hold: float) -> Outcome:
        entries = [(limit, self._entry(limit.key, window, hold)) for limit in limits]
        for limit, entry in entries:
            if len(entry.failures) >= limit.most:
                return Outcome(locked=limit.key)
        if any(len(e.failures) + len(e.pending) >= limit.most for limit, e in entries):
            return Outcome()
        ticket = str(next(self._ids))
        now = self._clock()
        for _limit, entry in entries:
            entry.pending[ticket] = now
        keys = tuple(limit.key for limit in limits)
        self._tickets[ticket] = keys
        return Outcome(ticket=ticket, keys=keys)

    async def settle(self, ticket: str, *, failed: bool) -> list[int]:
        keys = self._tickets.pop(ticket, ())
        now = self._clock()
        counts = []
        for key in keys:
            entry = self._keys.get(key)
            if entry is None:
                continue
            entry.pending.pop(ticket, None)
            if failed:
                entry.failures.append(now)
            counts.append(len(entry.failures))
        return counts

    async def counts(self, keys: Sequence[str], *, window: float) -> list[int]:
        horizon = self._clock() - window
        result = []
        for key in keys:
            entry = self._keys.get(key)
            result.append(0 if entry is None else sum(1 for t in entry.failures if t >= horizon))
        return result

    async def forget(self, key: str) -> None:
        entry = self._keys.get(key)
        if entry is not None:
            entry.failures.clear()
            if not entry.pending:
                del self._keys[key]
