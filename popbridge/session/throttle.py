"""Login throttling: growing delays, lockout windows, per-address connection caps.

Failed logins are counted per client address group and per user name in a sliding window
(the ledger of `popbridge.store.failures`). Each failure is answered after a delay that
doubles with the failures already counted, up to a ceiling, and past a threshold the
address or the user is locked out for the rest of the window: further logins are refused
*before* any upstream attempt, which also keeps a guessing device from locking the real
account upstream. The count holds under concurrency: an attempt reserves its place from
the moment it is checked until it is settled, an attempt that finds every place reserved
waits for one to settle, and it is checked again when it gets its login slot. A user
lockout is answered with `[AUTH]` (RFC 3206 §5: the problem is with the credentials), an
address lockout with `[SYS/TEMP]` (RFC 3206 §4). Addresses are grouped the way they are
handed out: an IPv6 client by its /64 (RFC 4291 §2.5.4), an IPv4 one by itself, both
configurable. `LOGIN-DELAY` (RFC 2449 §6.5) optionally spaces successful logins per
account (`popbridge.session.logingate` bounds the logins talking upstream at once). State
is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from popbridge.errors import AuthFailed, BridgeError, Code, LoginsBusy
from popbridge.session.logingate import LOGIN_SLOT_WAIT
from popbridge.store.failures import MAX_TRACKED, FailureLedger, Limit, MemoryFailures

log = logging.getLogger(__name__)

RESERVATION_HOLD = 300.0  # an unsettled reservation (its process died) counts this long
# Seconds between looks at the ledger while every place is taken, growing to the maximum:
# settlements of this process wake the waiters at once, other instances' are only polled.
RESERVE_POLL, RESERVE_POLL_MAX = 0.1, 1.0


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    base_delay: float = 2.0
    max_delay: float = 30.0
    window: float = 900.0
    max_failures_per_address: int = 20
    max_failures_per_user: int = 10
    max_connections_per_address: int = 50
    login_delay: int = 0  # seconds between successful logins per account; 0 = off
    ipv4_prefix: int = 32  # addresses in one such network count as one client
    ipv6_prefix: int = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a login is refused without trying it; the text is safe for the wire."""

    code: Code
    text: str


class Throttled(Exception):
    """A login refused before any upstream attempt."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


ADDRESS_LOCKED = Refusal(Code.SYS_TEMP, "too many failed logins from your address, try later")
USER_LOCKED = Refusal(Code.AUTH, "too many failed logins, account temporarily locked")


def address_group(address: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The network `address` is counted in: its /`ipv6_prefix` for IPv6 (one site or home
    gets a /64 or more), its /`ipv4_prefix` for IPv4 (also when IPv4-mapped, RFC 4291
    §2.5.5.2); anything that is not an IP address stands for itself."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # without an RFC 4007 zone
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network((ip, prefix), strict=False))


class Throttle:
    """Decides whether a login may be tried and how long a failure waits."""

    def __init__(
        self, policy: ThrottlePolicy, clock: Callable[[], float] = time.monotonic,
        ledger: FailureLedger | None = None,
    ) -> None:  # fmt: skip
        self.policy = policy
        self._clock = clock
        self.ledger: FailureLedger = ledger if ledger is not None else MemoryFailures(clock)
        self._settled = asyncio.Event()  # set when a reservation of this process settles
        self._last_login: OrderedDict[str, float] = OrderedDict()
        self._connections: dict[str, int] = {}

    def group(self, address: str) -> str:
        return address_group(address, self.policy.ipv4_prefix, self.policy.ipv6_prefix)

    def _limits(self, address: str, user: str) -> list[Limit]:
        policy = self.policy
        return [
            Limit("address " + self.group(address), policy.max_failures_per_address),
            Limit("user " + user.casefold(), policy.max_failures_per_user),
        ]

    def attempt(self, address: str, user: str) -> Attempt:
        """One login attempt: `async with` it around the upstream round trips."""
        return Attempt(self, self._limits(address, user))

    async def reserve(self, limits: list[Limit], wait: float) -> tuple[str, tuple[str, ...]]:
        """A ticket holding a place on every key; `Throttled` if a key is locked out,
        `LoginsBusy` if no place freed within `wait` seconds."""
        deadline = asyncio.get_running_loop().time() + wait
        poll = RESERVE_POLL
        while True:
            outcome = await self.ledger.reserve(
                limits, window=self.policy.window, hold=RESERVATION_HOLD
            )
            if outcome.ticket is not None:
                return outcome.ticket, outcome.keys
            if outcome.locked is not None:
                raise Throttled(_refusal(outcome.locked))
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise LoginsBusy("every failed-login place is reserved")
            settled = self._settled
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), min(left, poll))
            poll = min(poll * 2, RESERVE_POLL_MAX)

    async def settle(self, ticket: str, *, failed: bool) -> float:
        """End a reservation; returns the delay before answering a failure."""
        try:
            counts = await asyncio.shield(self.ledger.settle(ticket, failed=failed))
        finally:
            self._settled.set()  # wake the attempts waiting for a place
            self._settled = asyncio.Event()
        if not failed or self.policy.base_delay <= 0:
            return 0.0
        previous = max(counts, default=1) - 1
        return float(min(self.policy.max_delay, self.policy.base_delay * 2 ** min(previous, 16)))

    async def recheck(self, limits: list[Limit]) -> None:
        """`Throttled` if a key got locked out while the attempt waited (other instances)."""
        counts = await self.ledger.counts([lim.key for lim in limits], window=self.policy.window)
        for limit, count in zip(limits, counts, strict=True):
            if count >= limit.most:
                raise Throttled(_refusal(limit.key))

    def too_soon(self, account: str) -> bool:
        """RFC 2449 section 8.1.1: a successful login within LOGIN-DELAY of the last one."""
        if self.policy.login_delay <= 0:
            return False
        last = self._last_login.get(account)
        return last is not None and self._clock() - last < self.policy.login_delay

    async def succeeded(self, user_key: str, account: str) -> None:
        await self.ledger.forget(user_key)
        if self.policy.login_delay > 0:
            self._last_login[account] = self._clock()
            self._last_login.move_to_end(account)
            while len(self._last_login) > MAX_TRACKED:
                self._last_login.popitem(last=False)

    def connect(self, address: str) -> bool:
        """Count a new connection; False when the address group is over its cap."""
        group = self.group(address)
        count = self._connections.get(group, 0)
        if count >= self.policy.max_connections_per_address:
            return False
        self._connections[group] = count + 1
        return True

    def disconnect(self, address: str) -> None:
        group = self.group(address)
        count = self._connections.get(group, 0) - 1
        if count > 0:
            self._connections[group] = count
        else:
            self._connections.pop(group, None)


def _refusal(key: str) -> Refusal:
    return ADDRESS_LOCKED if key.startswith("address ") else USER_LOCKED


class Attempt:
    """A login attempt holding a place in the failure count from `__aenter__` until it ends.

    Leaving the `async with` settles it: `AuthFailed` records a failure and waits the
    failure delay before it propagates; a body that ran through records a success (the
    user's failures are cleared); any other way out (upstream down, the client gone)
    frees the place without counting.
    """

    def __init__(self, throttle: Throttle, limits: list[Limit]) -> None:
        self._throttle = throttle
        self._limits = limits
        self._ticket: str | None = None
        self._account: str | None = None

    async def __aenter__(self) -> Attempt:
        self._ticket, _keys = await self._throttle.reserve(self._limits, LOGIN_SLOT_WAIT)
        return self

    async def recheck(self) -> None:
        """Called when the attempt gets its login slot, before the upstream is asked."""
        await self._throttle.recheck(self._limits)

    def succeeded(self, account: str) -> None:
        self._account = account

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:  # fmt: skip
        ticket, self._ticket = self._ticket, None
        assert ticket is not None  # __aenter__ reserved it, or raised and this never runs
        failed = isinstance(error, AuthFailed)
        # A ledger that fails now must not turn a finished login, or the way this one
        # ended, into another answer: an unsettled place stops counting after its hold.
        try:
            delay = await self._throttle.settle(ticket, failed=failed)
            if error is None and self._account is not None:
                await self._throttle.succeeded(self._limits[1].key, self._account)
        except BridgeError as trouble:
            log.warning("failed-login count not updated: %r", trouble)
            delay = self._throttle.policy.base_delay
        if failed:
            await asyncio.sleep(delay)
