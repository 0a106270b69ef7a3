"""Throttle arithmetic with a fake clock: doubling delays, windows, caps, bounds."""

from __future__ import annotations

import asyncio

import pytest

from popbridge.errors import AuthFailed, Code, LoginsBusy
from popbridge.session import throttle as t
from popbridge.store import StoreUnavailable, failures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fail(throttle: t.Throttle, address: str, user: str) -> float:
    """One attempt that the upstream refuses; returns the delay it was answered after."""
    ticket, _keys = await throttle.reserve(throttle._limits(address, user), 0)
    return await throttle.settle(ticket, failed=True)


async def refusal(throttle: t.Throttle, address: str, user: str) -> t.Refusal | None:
    """Why an attempt now is refused before the upstream, or None (the place is freed)."""
    try:
        ticket, _keys = await throttle.reserve(throttle._limits(address, user), 0)
    except t.Throttled as throttled:
        return throttled.refusal
    await throttle.settle(ticket, failed=False)
    return None


async def succeed(throttle: t.Throttle, address: str, user: str, account: str) -> None:
    async with throttle.attempt(address, user) as attempt:
        attempt.succeeded(account)


async def test_delays_double_up_to_the_ceiling() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(base_delay=1, max_delay=5), Clock())
    assert [await fail(throttle, "a", "u") for _ in range(5)] == [1, 2, 4, 5, 5]


async def test_failures_expire_with_the_window() -> None:
    clock = Clock()
    throttle = t.Throttle(t.ThrottlePolicy(window=60, max_failures_per_user=2), clock)
    await fail(throttle, "a", "User")
    await fail(throttle, "b", "user")
    refused = await refusal(throttle, "c", "USER")
    assert refused is not None and refused.code is Code.AUTH
    clock.now += 61
    assert await refusal(throttle, "c", "user") is None


async def test_success_clears_the_user_but_not_the_address() -> None:
    throttle = t.Throttle(
        t.ThrottlePolicy(max_failures_per_address=2, max_failures_per_user=2), Clock()
    )
    await fail(throttle, "a", "u")
    await succeed(throttle, "a", "u", "u")
    await fail(throttle, "a", "v")
    refused = await refusal(throttle, "a", "w")
    assert refused is not None and refused.code is Code.SYS_TEMP


def test_connection_cap_per_address() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(max_connections_per_address=2), Clock())
    assert throttle.connect("a") and throttle.connect("a") and not throttle.connect("a")
    assert throttle.connect("b")
    throttle.disconnect("a")
    assert throttle.connect("a")
    throttle.disconnect("b")
    throttle.disconnect("b")  # extra disconnects never go negative
    assert throttle.connect("b")


async def test_login_delay_window() -> None:
    clock = Clock()
    throttle = t.Throttle(t.ThrottlePolicy(login_delay=10), clock)
    assert not throttle.too_soon("acct")
    await succeed(throttle, "a", "u", "acct")
    assert throttle.too_soon("acct")
    clock.now += 10
    assert not throttle.too_soon("acct")
    assert not t.Throttle(t.ThrottlePolicy(), clock).too_soon("acct")


async def test_tracking_is_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(failures, "MAX_TRACKED", 3)
    monkeypatch.setattr(t, "MAX_TRACKED", 3)
    throttle = t.Throttle(t.ThrottlePolicy(max_failures_per_address=1, login_delay=5), Clock())
    for name in "abcd":
        await fail(throttle, name, name)  # one address key stays: the user's is forgotten
        await throttle.succeeded("user " + name, name)
    assert len(throttle.ledger._keys) <= 3  # type: ignore[attr-defined]
    assert await refusal(throttle, "a", "x") is None  # forgotten: the oldest went first
    assert await refusal(throttle, "d", "d") is not None
    assert not throttle.too_soon("a") and throttle.too_soon("d")


def test_addresses_are_grouped_by_network() -> None:
    group = t.address_group
    assert group("2001:db8:1:2:aaaa::1") == group("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert group("2001:db8:1:3::1") != group("2001:db8:1:2::1")
    assert group("fe80::1%eth0") == "fe80::/64"  # the zone does not make another client
    assert group("192.0.2.7") == "192.0.2.7/32" != group("192.0.2.8")
    assert group("::ffff:192.0.2.7") == "192.0.2.7/32"  # IPv4-mapped is the IPv4 client
    assert group("192.0.2.7", ipv4_prefix=24) == group("192.0.2.200", ipv4_prefix=24)
    assert group("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"
    assert group("/run/popbridge.sock") == "/run/popbridge.sock"


def test_connection_cap_counts_an_ipv6_64_as_one_client() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(max_connections_per_address=2), Clock())
    assert throttle.connect("2001:db8::1") and throttle.connect("2001:db8::2")
    assert not throttle.connect("2001:db8::ffff:3")  # same /64: over the cap
    assert throttle.connect("2001:db8:0:1::1")  # the next /64 is another client
    throttle.disconnect("2001:db8::2")
    assert throttle.connect("2001:db8::4")


async def test_failures_of_one_ipv6_64_lock_out_the_whole_network() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(max_failures_per_address=2), Clock())
    await fail(throttle, "2001:db8::1", "a")
    await fail(throttle, "2001:db8::2", "b")
    refused = await refusal(throttle, "2001:db8::abcd", "c")
    assert refused is not None and refused.code is Code.SYS_TEMP
    assert await refusal(throttle, "2001:db8:0:1::1", "c") is None


async def test_ipv4_prefix_is_configurable() -> None:
    policy = t.ThrottlePolicy(max_failures_per_address=1, ipv4_prefix=24)
    throttle = t.Throttle(policy, Clock())
    await fail(throttle, "198.51.100.1", "a")
    assert await refusal(throttle, "198.51.100.254", "b") is not None
    assert await refusal(throttle, "198.51.101.1", "b") is None


async def test_an_attempt_finding_every_place_held_waits_for_one() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(base_delay=0, max_failures_per_user=1), Clock())
    limits = throttle._limits("a", "u")
    ticket, _ = await throttle.reserve(limits, 0)
    with pytest.raises(LoginsBusy):  # the one place is held, and nobody settles it
        await throttle.reserve(limits, 0.05)
    waiting = asyncio.create_task(throttle.reserve(limits, 5.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await throttle.settle(ticket, failed=False)  # a right password: the place is free again
    second, _ = await waiting
    assert second != ticket


async def test_an_attempt_is_checked_again_when_it_gets_its_slot() -> None:
    ledger = failures.MemoryFailures(Clock())
    throttle = t.Throttle(t.ThrottlePolicy(max_failures_per_user=2), Clock(), ledger=ledger)
    async with throttle.attempt("a", "u") as attempt:
        # meanwhile another instance, with a higher limit, records two failures of "u"
        for _ in range(2):
            outcome = await ledger.reserve([failures.Limit("user u", 9)], window=900, hold=300)
            assert outcome.ticket is not None
            await ledger.settle(outcome.ticket, failed=True)
        with pytest.raises(t.Throttled) as refused:
            await attempt.recheck()
    assert refused.value.refusal.code is Code.AUTH


async def test_a_ticket_of_a_forgotten_key_settles_quietly(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(failures, "MAX_TRACKED", 1)
    ledger = failures.MemoryFailures(Clock())
    held = await ledger.reserve([failures.Limit("k1", 5)], window=900, hold=300)
    await ledger.reserve([failures.Limit("k2", 5)], window=900, hold=300)  # forgets k1
    assert held.ticket is not None and await ledger.settle(held.ticket, failed=True) == []
    pending = await ledger.reserve([failures.Limit("k3", 5)], window=900, hold=300)
    await ledger.forget("k3")  # a reservation in flight keeps its key
    await ledger.forget("nobody")
    assert pending.ticket is not None and await ledger.settle(pending.ticket, failed=True) == [1]


class BrokenLedger(failures.MemoryFailures):
    """Reserves, then fails on everything after: a database that went away mid-login."""

    async def settle(self, ticket: str, *, failed: bool) -> list[int]:
        raise StoreUnavailable("down")

    async def forget(self, key: str) -> None:
        raise StoreUnavailable("down")


async def test_a_ledger_failing_after_the_login_does_not_change_its_answer() -> None:
    throttle = t.Throttle(t.ThrottlePolicy(base_delay=0), Clock(), ledger=BrokenLedger())
    async with throttle.attempt("a", "u") as attempt:
        attempt.succeeded("u")  # a login that got in stays in
    with pytest.raises(AuthFailed):
        async with throttle.attempt("a", "v"):
            raise AuthFailed("wrong password")
