"""What the benchmark measures: mailbox sizes per profile, seeding, and one run of each scenario.

A scenario run talks to one server (direct Dovecot POP3, Dovecot imapc, or popbridge) through
the clients in ``bench.clients`` and returns an ``Outcome``: named figures (seconds, MB,
counts) plus what was retrieved, so correctness is checked on every run. The runner calls
these in turn for each server; nothing here knows about ordering or medians. Concurrent
scenarios use one user per session, because popbridge locks each maildrop (and Dovecot allows
10 connections per user and IP). Every client speaks POP3S when its target has a TLS context.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.clients import CONNECT, AsyncClient, LeanClient, Tally, listing_count, poplib_session
from bench.peers import Popbridge
from bench.usage import tree_pss_kb
from devkit.dovecot import Dovecot, generate_message

PASSWORD = "bench-secret"
OPEN_CONCURRENCY = 25  # logins in flight while (d) builds up its idle sessions
# popbridge's default max_failures_per_address: each login holds a place there until it
# settles, so more sessions per address would measure that cap, not the bridge
SESSIONS_PER_ADDRESS = 20
KB, MB = 1000, 1_000_000


@dataclass(frozen=True)
class Profile:
    """Mailbox sizes and repetitions; ``full`` is the documented benchmark."""

    name: str
    runs: int
    bulk: tuple[int, int]  # (a) messages, octets each on disk
    many: tuple[int, int]  # (b) messages, octets each
    huge: int  # (c) octets of the one big message
    idle: int  # (d) sessions held
    busy: tuple[int, int, int]  # (e) sessions, messages each, octets each
    giant: int  # (g) messages of (b)'s size
    idle_runs: int = 1


PROFILES = {
    "full": Profile("full", 5, (1000, 20_000), (10_000, 2_000), 20 * 1024 * 1024, 1000,
                    (200, 10, 20_000), 100_000),
    "quick": Profile("quick", 3, (200, 20_000), (2_000, 2_000), 5 * 1024 * 1024, 200,
                     (50, 5, 20_000), 20_000),
    "smoke": Profile("smoke", 1, (20, 2_000), (50, 2_000), 64 * 1024, 10, (5, 3, 2_000), 100),
}  # fmt: skip


def session_user(index: int) -> str:
    return f"s{index:04d}"


def source_address(index: int) -> str:
    """Client address of concurrent session ``index``: 127.0.0.2, .3, ... (25 sessions each).

    Real deployments see many devices; one address for 1,000 sessions would only measure
    per-address caps (popbridge's default is 50 connections per address).
    """
    return f"127.0.0.{2 + index // SESSIONS_PER_ADDRESS}"


def users(profile: Profile) -> dict[str, str]:
    names = ["bulk", "many", "huge", "giant"]
    names += [session_user(i) for i in range(max(profile.idle, profile.busy[0]))]
    return dict.fromkeys(names, PASSWORD)


def seed(backend: Dovecot, profile: Profile) -> None:
    """Write every mailbox as Maildir files (no IMAP APPEND: seconds, not minutes)."""
    backend.seed_generated("bulk", *profile.bulk)
    count, size = profile.many
    small = [generate_message(i % 50 + 1, size) for i in range(50)]
    backend.seed("many", [small[i % 50] for i in range(count)])
    backend.seed("giant", [small[i % 50] for i in range(profile.giant)])
    backend.seed_generated("huge", 1, profile.huge)
    sessions, messages, size = profile.busy
    busy = [generate_message(i + 1, size) for i in range(messages)]
    for i in range(max(profile.idle, sessions)):
        backend.seed(session_user(i), busy if i < sessions else busy[:2])


@dataclass
class Target:
    """One server under test, as a scenario sees it."""

    name: str
    port: int
    bridge: Popbridge | None = None  # set for popbridge: memory comes from its /proc
    tree_root: int | None = None  # set for Dovecot: PSS of the master and its children
    tls: ssl.SSLContext | None = None  # set when the clients speak POP3S


@dataclass
class Outcome:
    """Figures of one run on one server, and whether everything was retrieved."""

    figures: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    failed: int = 0
    messages: int = 0
    expected: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, tally: Tally, seeded: int) -> None:
        """Count one session; it failed unless it got all ``seeded`` messages, whole."""
        self.sessions += 1
        self.messages += tally.messages
        self.expected += seeded
        if not tally.ok or tally.expected_messages != seeded:
            self.failed += 1
            self.problems.append(f"retrieved {tally}, {seeded} seeded")


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# ----------------------------------------------------------------- (a), (b), (c): one session


def bulk(target: Target, profile: Profile) -> Outcome:
    """(a) One session STAT + UIDL + RETR of every message, lean client then poplib."""
    outcome, lean, pop = Outcome(), Tally(), Tally()

    def session() -> None:
        client = LeanClient(target.port, tls=target.tls)
        client.login("bulk", PASSWORD)
        client.retrieve_all(lean)
        client.quit()

    outcome.figures["a.lean"] = _timed(session)
    outcome.figures["a.poplib"] = _timed(
        lambda: poplib_session(target.port, "bulk", PASSWORD, pop, target.tls)
    )
    outcome.add(lean, profile.bulk[0])
    outcome.add(pop, profile.bulk[0])
    return outcome


def _logins(target: Target, key: str, user: str, seeded: int, *, stat: bool = False) -> Outcome:
    """Connect, log in and UIDL ``user``'s mailbox twice (QUIT is not timed): ``KEY.first``
    and ``KEY.repeat``. The runner starts popbridge afresh before these scenarios, so its
    first login finds nothing remembered about the mailbox, and the repeat login whatever
    the first one left behind. With ``stat``, the first session then sends STAT, timed
    alone as ``KEY.stat``: popbridge measures the exact size of every never-seen message
    there, once (a login and UIDL do not need sizes)."""
    outcome = Outcome()
    for login in ("first", "repeat"):
        started = time.perf_counter()
        client = LeanClient(target.port, tls=target.tls)
        client.login(user, PASSWORD)
        listed = listing_count(client.command(b"UIDL", multi=True))
        outcome.figures[f"{key}.{login}"] = time.perf_counter() - started
        if stat and login == "first":
            started = time.perf_counter()
            client.command(b"STAT")
            outcome.figures[f"{key}.stat"] = time.perf_counter() - started
        client.quit()
        outcome.add(Tally(listed, 0, 0, listed), seeded)
    return outcome


def many(target: Target, profile: Profile) -> Outcome:
    """(b) Log in and UIDL a large mailbox: a first and a repeat login."""
    return _logins(target, "b", "many", profile.many[0], stat=True)


def giant(target: Target, profile: Profile) -> Outcome:
    """(g) The same on a mailbox ten times (b)'s: a first and a repeat login."""
    return _logins(target, "g", "giant", profile.giant)


def huge(target: Target, profile: Profile) -> Outcome:
    """(c) RETR of one big message (lean client, RETR alone timed) and a poplib session."""
    outcome, lean, pop = Outcome(), Tally(), Tally()
    client = LeanClient(target.port, tls=target.tls)
    client.login("huge", PASSWORD)
    before = _reset_peak(target.bridge)
    outcome.figures["c.retr"] = _timed(lambda: client.retrieve_all(lean))
    if target.bridge is not None:
        peak = target.bridge.status_kb()["VmHWM"]
        outcome.figures["c.rss_growth"] = (peak - before) * 1024 / MB
    client.quit()
    outcome.figures["c.poplib"] = _timed(
        lambda: poplib_session(target.port, "huge", PASSWORD, pop, target.tls)
    )
    outcome.add(lean, 1)
    outcome.add(pop, 1)
    return outcome


def _reset_peak(bridge: Popbridge | None) -> int:
    """Current RSS (kB) after resetting the peak, so VmHWM later is this run's peak."""
    if bridge is None:
        return 0
    if not bridge.reset_peak():
        raise RuntimeError("cannot reset VmHWM (write to /proc/PID/clear_refs refused)")
    return bridge.status_kb()["VmRSS"]


# ----------------------------------------------------------------- (d), (e): many sessions


def _memory_kb(target: Target) -> int:
    if target.bridge is not None:
        return target.bridge.status_kb()["VmRSS"]
    assert target.tree_root is not None
    return tree_pss_kb(target.tree_root)


def idle(target: Target, profile: Profile) -> Outcome:
    """(d) Hold ``profile.idle`` authenticated sessions; memory of the POP3 side."""
    return asyncio.run(_idle(target, profile))


async def _idle(target: Target, profile: Profile) -> Outcome:
    outcome, limit = Outcome(), asyncio.Semaphore(OPEN_CONCURRENCY)
    before = _memory_kb(target)

    async def open_one(index: int) -> AsyncClient:
        async with limit:
            client = await AsyncClient.connect(target.port, source_address(index), target.tls)
            await client.login(session_user(index), PASSWORD)
            return client

    started = time.perf_counter()
    opened = await asyncio.gather(
        *(open_one(i) for i in range(profile.idle)), return_exceptions=True
    )
    outcome.figures["d.open"] = time.perf_counter() - started
    clients = [c for c in opened if isinstance(c, AsyncClient)]
    await asyncio.sleep(1.0)  # let late allocations (log lines, buffers) settle
    # Every session must still be authenticated and answering: one STAT each.
    alive = await asyncio.gather(*(c.command(b"STAT") for c in clients), return_exceptions=True)
    after = _memory_kb(target)
    outcome.figures["d.mem"] = (after - before) * 1024 / MB
    if target.bridge is not None:
        outcome.figures["d.rss"] = after * 1024 / MB
    await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
    errors = [e for e in [*opened, *alive] if isinstance(e, BaseException)]
    outcome.sessions, outcome.failed = profile.idle, len(errors)
    outcome.figures["d.errors"] = float(len(errors))
    outcome.problems += sorted({repr(e)[:200] for e in errors})
    return outcome


def busy(target: Target, profile: Profile) -> Outcome:
    """(e) All sessions at once: login, STAT, UIDL, RETR each message, QUIT."""
    return asyncio.run(_busy(target, profile))


async def _busy(target: Target, profile: Profile) -> Outcome:
    outcome, sessions = Outcome(), profile.busy[0]
    clients: list[AsyncClient] = []

    async def one(index: int) -> Tally:
        client = await AsyncClient.connect(target.port, source_address(index), target.tls)
        clients.append(client)
        tally = Tally()
        await client.login(session_user(index), PASSWORD)
        await client.retrieve_all(tally)
        await client.quit()
        return tally

    started = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    outcome.figures["e.wall"] = time.perf_counter() - started
    for result in done:
        if isinstance(result, Tally):
            outcome.add(result, profile.busy[1])
        else:
            outcome.sessions, outcome.failed = outcome.sessions + 1, outcome.failed + 1
            outcome.problems.append(repr(result)[:200])
    outcome.expected = sessions * profile.busy[1]  # failed sessions count as missing too
    latencies = [(verb, seconds) for c in clients for verb, seconds in c.latencies]
    _latency_figures(outcome, latencies)
    logins = [sum(s for verb, s in c.latencies if verb in _LOGIN) for c in clients]
    outcome.figures["e.login_p99"] = percentile(logins, 99) * 1000
    return outcome


_LOGIN = (CONNECT, b"USER", b"PASS")


def _latency_figures(outcome: Outcome, latencies: Sequence[tuple[bytes, float]]) -> None:
    every = [s for verb, s in latencies if verb != CONNECT]
    logins = [s for verb, s in latencies if verb == b"PASS"]
    retrs = [s for verb, s in latencies if verb == b"RETR"]
    transaction = [s for verb, s in latencies if verb not in _LOGIN]
    outcome.figures["e.p50"] = percentile(every, 50) * 1000
    outcome.figures["e.p99"] = percentile(every, 99) * 1000
    outcome.figures["e.txn_p99"] = percentile(transaction, 99) * 1000
    outcome.figures["e.retr_p99"] = percentile(retrs, 99) * 1000
    outcome.figures["e.pass_p99"] = percentile(logins, 99) * 1000
    outcome.figures["e.errors"] = float(outcome.failed)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable[[Target, Profile], Outcome]
    repeat: Callable[[Profile], int]
    fresh: bool = False  # popbridge is started afresh before each of its runs


# (a) and (c) take well under a second a run, and their ratios move by up to 40 % from one
# run to the next on 2 shared cores (c on 2026-12-05: 1.05 to 1.44 within one benchmark):
# twice the runs, for a median that says more than the noise.
SCENARIOS = (
    Scenario("a", "one session STAT+UIDL+RETR of every message", bulk, lambda p: 2 * p.runs),
    Scenario("b", "login to UIDL on a large mailbox", many, lambda p: p.runs, fresh=True),
    Scenario("c", "RETR of one large message", huge, lambda p: 2 * p.runs),
    Scenario("d", "idle authenticated sessions held", idle, lambda p: p.idle_runs),
    Scenario("e", "concurrent sessions retrieving", busy, lambda p: p.runs),
    # (g) at most 3 timed runs: imapc takes about 20 s per login on 100,000 messages
    Scenario(
        "g", "login to UIDL on a very large mailbox", giant, lambda p: min(p.runs, 3), fresh=True
    ),
)
