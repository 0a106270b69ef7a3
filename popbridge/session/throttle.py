"""Login throttling: growing delays, lockout windows, per-address connection caps.

Failed logins are counted per client address and per user name in a sliding window. Each
failure is answered after a delay that doubles with the failures already counted, up to a
ceiling, and past a threshold the address or the user is locked out for the rest of the
window: further logins are refused *before* any upstream attempt, which also keeps a
guessing device from locking the real account upstream. A user lockout is answered with
`[AUTH]` (RFC 3206 section 5: the problem is with the credentials), an address lockout
with `[SYS/TEMP]` (RFC 3206 section 4). `LOGIN-DELAY` (RFC 2449 section 6.5) optionally
spaces successful logins per account. `LoginGate` bounds the logins talking to the upstream
at once. State is per process and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from popbridge.errors import Code, LoginsBusy

MAX_TRACKED = 100_000  # keys remembered at most; the oldest are forgotten first
LOGINS_IN_FLIGHT = 8
LOGIN_SLOT_WAIT = 30.0  # seconds a login waits for a slot before [SYS/TEMP]


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    base_delay: float = 2.0
    max_delay: float = 30.0
    window: float = 900.0
    max_failures_per_address: int = 20
    max_failures_per_user: int = 10
    max_connections_per_address: int = 50
    login_delay: int = 0  # seconds between successful logins per account; 0 = off


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a login is refused without trying it; the text is safe for the wire."""

    code: Code
    text: str


class _Window:
    """Failure times per key within the last `window` seconds, bounded in keys."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str) -> int:
        events = self._events.get(key)
        if events is None:
            return 0
        horizon = self._clock() - self._window
        while events and events[0] < horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str) -> None:
        self._events.setdefault(key, deque()).append(self._clock())
        self._events.move_to_end(key)
        while len(self._events) > MAX_TRACKED:
            self._events.popitem(last=False)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)


class Throttle:
    """Decides whether a login may be tried and how long a failure waits."""

    def __init__(self, policy: ThrottlePolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._by_address = _Window(policy.window, clock)
        self._by_user = _Window(policy.window, clock)
        self._last_login: OrderedDict[str, float] = OrderedDict()
        self._connections: dict[str, int] = {}

    def refuse(self, address: str, user: str) -> Refusal | None:
        """A reason to refuse this login before trying it, or None."""
        if self._by_address.count(address) >= self.policy.max_failures_per_address:
            return Refusal(Code.SYS_TEMP, "too many failed logins from your address, try later")
        if self._by_user.count(user.casefold()) >= self.policy.max_failures_per_user:
            return Refusal(Code.AUTH, "too many failed logins, account temporarily locked")
        return None

    def failed(self, address: str, user: str) -> float:
        """Record a failure; returns the delay before answering it."""
        previous = max(self._by_address.count(address), self._by_user.count(user.casefold()))
        self._by_address.add(address)
        self._by_user.add(user.casefold())
        if self.policy.base_delay <= 0:
            return 0.0
        return float(min(self.policy.max_delay, self.policy.base_delay * 2 ** min(previous, 16)))

    def too_soon(self, account: str) -> bool:
        """RFC 2449 section 8.1.1: a successful login within LOGIN-DELAY of the last one."""
        if self.policy.login_delay <= 0:
            return False
        last = self._last_login.get(account)
        return last is not None and self._clock() - last < self.policy.login_delay

    def succeeded(self, address: str, user: str, account: str) -> None:
        self._by_user.clear(user.casefold())
        if self.policy.login_delay > 0:
            self._last_login[account] = self._clock()
            self._last_login.move_to_end(account)
            while len(self._last_login) > MAX_TRACKED:
                self._last_login.popitem(last=False)

    def connect(self, address: str) -> bool:
        """Count a new connection; False when the address is over its cap."""
        count = self._connections.get(address, 0)
        if count >= self.policy.max_connections_per_address:
            return False
        self._connections[address] = count + 1
        return True

    def disconnect(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)


class LoginGate:
    """At most `limit` logins open upstream mailboxes at once; the others wait their turn.

    A login is the costly step of a session: upstream connect and authentication, then a
    listing parsed on the one event loop. A burst of them (devices polling on the same
    minute) would otherwise take turns with every running download in each pass of the
    loop, and the upstream would see the whole burst at once. A login that waits longer
    than `wait` for a slot is answered `[SYS/TEMP]` (RFC 3206 section 4): try again later.
    """

    def __init__(self, limit: int = LOGINS_IN_FLIGHT, wait: float = LOGIN_SLOT_WAIT) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; LoginsBusy if none came in time."""
        if self._slots.locked():  # the deadline (a loop timer) only for a login that waits
            try:
                async with asyncio.timeout(self._wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise LoginsBusy(f"no login slot within {self._wait:g} s") from None
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()
