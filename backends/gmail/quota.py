"""What one Gmail user may cost: a budget of quota units and a bound on requests in flight.

Gmail limits each user to 15,000 quota units a minute (Gmail API usage limits; every method
has a unit cost: messages.get 5, messages.list 5, history.list 2, messages.delete 10,
batchModify 50, ...). This module owns `UnitBudget`, a token bucket that refills at
`per_minute` units a minute and holds at most a minute's worth, so a burst may spend a full
minute's allowance at once and a steady load never exceeds the limit; `UserQuota` pairs it
with a semaphore for the user's requests in flight. The backend keeps one `UserQuota` per
Gmail user, shared by all of that user's sessions. A request that would have to wait longer
than its caller allows is refused with `BackendUnavailable` rather than queued for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from popbridge.errors import BackendUnavailable

# Gmail API usage limits, per-method quota usage (units per call).
UNITS = {
    "getProfile": 1,
    "labels.list": 1,
    "labels.create": 5,
    "messages.list": 5,
    "messages.get": 5,
    "messages.trash": 5,
    "messages.modify": 5,
    "messages.delete": 10,
    "messages.batchModify": 50,
    "messages.batchDelete": 50,
    "history.list": 2,
}


class UnitBudget:
    """A token bucket of quota units: at most `per_minute` held, refilled continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._level = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    @property
    def level(self) -> float:
        """The units that could be spent now."""
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self._rate)
        self._stamp = now

    def delay(self, units: int) -> float:
        """Seconds until `units` can be spent (0 if now)."""
        self._refill()
        return max(0.0, (units - self._level) / self._rate)

    async def spend(self, units: int, *, wait_at_most: float) -> None:
        """Take `units`, waiting in arrival order for the bucket to refill; BackendUnavailable
        if that would take longer than `wait_at_most` seconds, queue included."""
        try:
            async with asyncio.timeout(wait_at_most), self._lock:
                wait = self.delay(units)
                if wait > wait_at_most:
                    raise BackendUnavailable(
                        f"quota budget: {units} units would need a {wait:.1f} s wait"
                    )
                if wait > 0:
                    await asyncio.sleep(wait)
                    self._refill()
                self._level -= units
        except TimeoutError:
            raise BackendUnavailable(
                f"quota budget: no {units} units within {wait_at_most:g} s"
            ) from None


@dataclass
class UserQuota:
    """One Gmail user's budget and in-flight bound, shared by that user's sessions."""

    budget: UnitBudget
    in_flight: asyncio.Semaphore
    limit: int
    spent: int = 0
    throttled: int = field(default=0)  # rate-limit replies seen from Gmail

    def describe(self) -> str:
        level = self.budget.level
        return (
            f"{level:.0f} of {self.budget.capacity:.0f} units/minute left, {self.spent} spent,"
            f" {self.throttled} rate-limit replies, at most {self.limit} requests in flight"
        )


class Quotas:
    """Every user's `UserQuota`, made on first use."""

    def __init__(self, per_minute: int, in_flight: int) -> None:
        self._per_minute = per_minute
        self._in_flight = in_flight
        self.users: dict[str, UserQuota] = {}

    def of(self, user: str) -> UserQuota:
        key = user.casefold()
        found = self.users.get(key)
        if found is None:
            found = UserQuota(
                UnitBudget(self._per_minute), asyncio.Semaphore(self._in_flight), self._in_flight
            )
            self.users[key] = found
        return found
