"""How many logins open upstream mailboxes at once: a cap, and fewer while the loop runs late.

A login is the costly step of a session: upstream connect, TLS and authentication, then a
listing parsed on the one event loop. A burst of them (devices polling on the same minute)
takes turns with every running download in each pass of the loop, and the upstream would
see the whole burst at once. `LoginGate` lets at most `max_logins_in_flight` logins talk to
the upstream at once; the others wait their turn, and one that waits longer than `wait` is
answered `[SYS/TEMP]` (RFC 3206 section 4): try again later.

Below that cap, how many logins may overlap depends on where their time goes. Against a
distant upstream a login mostly waits for round trips, and overlapping many costs nothing.
When the process itself is the limit (its CPU, or a machine it shares with the upstream),
more logins at once finish no sooner: they only lengthen every pass of the loop, and every
session that is downloading waits through those passes. So while logins are in flight, a
probe measures how late the loop runs a timer: late, and the number allowed is halved
(never below `floor`); on time while logins wait, it grows by half, at least one (never
above the cap), so a burst against a distant upstream reaches the cap within a few looks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from popbridge.errors import LoginsBusy
from popbridge.telemetry import metrics

LOGINS_IN_FLIGHT: Final = 8
LOGIN_SLOT_WAIT: Final = 30.0  # seconds a login waits for a slot before [SYS/TEMP]
LOGINS_FLOOR: Final = 2  # logins always allowed at once, however late the loop runs


@dataclass(frozen=True, slots=True)
class Pacing:
    """When the gate looks at the loop, and what counts as late or on time (seconds)."""

    interval: float = 0.01
    # A timer 2 ms late: every session's next step waits about as long, in each pass of the
    # loop. Measured with scenario (e) of bench/ (200 logins at once, each then downloading):
    # at 5 ms downloads waited up to 35 ms (p99), at 2 ms about 12 ms; logins no longer.
    late: float = 0.002
    on_time: float = 0.0012  # epoll rounds its timeout up to the millisecond


class LoginGate:
    """At most `allowed` logins at once: `floor` <= `allowed` <= `limit`, set by loop lateness."""

    def __init__(
        self, limit: int = LOGINS_IN_FLIGHT, wait: float = LOGIN_SLOT_WAIT, *,
        floor: int = LOGINS_FLOOR, pacing: Pacing = Pacing(),
    ) -> None:  # fmt: skip
        self.limit = limit
        self.floor = min(floor, limit)
        self.allowed = self.floor  # grows while the loop keeps time and logins wait
        metrics.LOGINS_ALLOWED.set(self.allowed)
        self.in_flight = 0
        self._wait = wait
        self._pacing = pacing
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._probe: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; LoginsBusy if none came in time."""
        if self.in_flight < self.allowed and not self._waiting:
            self.in_flight += 1
        else:
            await self._queue()  # a granted slot was counted for us by `_admit`
        self._watch()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._admit()

    async def _queue(self) -> None:
        granted = asyncio.get_running_loop().create_future()
        self._waiting.append(granted)
        self._admit()
        try:
            async with asyncio.timeout(self._wait):
                await granted
        except BaseException as error:
            if granted.done() and not granted.cancelled():
                self.in_flight -= 1  # granted just as we stopped waiting: hand it on
                self._admit()
            else:
                granted.cancel()
                with contextlib.suppress(ValueError):  # unless `_admit` dropped it already
                    self._waiting.remove(granted)
            if isinstance(error, TimeoutError):
                raise LoginsBusy(f"no login slot within {self._wait:g} s") from None
            raise

    def _admit(self) -> None:
        """Give free slots to the longest-waiting logins still waiting."""
        while self._waiting and self.in_flight < self.allowed:
            granted = self._waiting.popleft()
            if not granted.done():
                self.in_flight += 1
                granted.set_result(None)

    def _watch(self) -> None:
        if self._probe is None and self.floor < self.limit:
            self._probe = asyncio.get_running_loop().create_task(self._measure())

    async def _measure(self) -> None:
        """While logins are in flight or waiting, time the loop and set `allowed` by it."""
        loop, pacing = asyncio.get_running_loop(), self._pacing
        try:
            while self.in_flight or self._waiting:
                due = loop.time() + pacing.interval
                await asyncio.sleep(pacing.interval)
                self.paced(loop.time() - due)
        finally:
            self._probe = None

    def paced(self, lateness: float) -> None:
        """One look at the loop: it ran a timer `lateness` seconds after it was due."""
        if lateness > self._pacing.late:
            self.allowed = max(self.floor, self.allowed // 2)
        elif lateness < self._pacing.on_time and self._waiting and self.allowed < self.limit:
            self.allowed = min(self.limit, self.allowed + max(1, self.allowed // 2))
            self._admit()
        metrics.LOGINS_ALLOWED.set(self.allowed)
