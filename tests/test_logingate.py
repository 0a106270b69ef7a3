"""LoginGate: the cap on logins at once, the wait for a slot, and lateness-driven pacing.

Lateness is real here: a callback that blocks the event loop (`time.sleep`) makes the
gate's next look at the loop late, exactly as a busy loop would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from popbridge.errors import LoginsBusy
from popbridge.session.logingate import LoginGate, Pacing

# Looks every 10 ms; thresholds far apart from anything a test machine does by accident.
ROOMY = Pacing(interval=0.01, late=0.1, on_time=0.05)


class Logins:
    """Logins that hold their slot until released, counting how many were inside at once."""

    def __init__(self, gate: LoginGate) -> None:
        self.gate = gate
        self.inside = self.most = 0
        self.release = asyncio.Event()

    async def one(self) -> None:
        async with self.gate.slot():
            self.inside += 1
            self.most = max(self.most, self.inside)
            await self.release.wait()
            self.inside -= 1

    def start(self, count: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.one()) for _ in range(count)]


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll: the gate's state changes in its own probe task, which has no event to wait on."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def block_loop(seconds: float) -> None:
    """Hold the event loop, as a long pass of it would: the gate's next look comes late."""
    time.sleep(seconds)


async def test_a_waiting_login_gets_in_when_a_slot_frees() -> None:
    logins = Logins(LoginGate(2, wait=5.0, floor=2))
    tasks = logins.start(5)
    await asyncio.sleep(0.01)
    assert logins.inside == 2  # three wait for a slot
    logins.release.set()
    await asyncio.gather(*tasks)
    assert logins.most == 2 and logins.inside == 0
    assert logins.gate.in_flight == 0


async def test_a_login_waiting_too_long_is_refused_and_frees_nothing_it_lacked() -> None:
    gate = LoginGate(1, wait=0.05)
    logins = Logins(gate)
    task = logins.start(1)[0]
    await eventually(lambda: logins.inside == 1)
    with pytest.raises(LoginsBusy):
        async with gate.slot():
            pytest.fail("got a slot that was taken")
    logins.release.set()
    await task
    async with asyncio.timeout(1):  # the refused wait did not leak or steal the slot
        async with gate.slot():
            assert gate.in_flight == 1
    assert gate.in_flight == 0


async def test_on_an_idle_loop_waiting_logins_raise_the_number_allowed_to_the_cap() -> None:
    logins = Logins(LoginGate(8, floor=2, pacing=ROOMY))
    tasks = logins.start(20)
    await asyncio.sleep(0)
    assert logins.gate.allowed == 2  # a burst starts at the floor
    await eventually(lambda: logins.inside == 8)
    await asyncio.sleep(0.1)
    assert logins.most == 8 == logins.gate.allowed  # and never past the cap
    logins.release.set()
    await asyncio.gather(*tasks)


async def test_a_late_loop_halves_the_logins_allowed_down_to_the_floor() -> None:
    logins = Logins(LoginGate(8, floor=2, pacing=ROOMY))
    tasks = logins.start(20)
    await eventually(lambda: logins.gate.allowed == 8)
    block_loop(0.15)
    await eventually(lambda: logins.gate.allowed == 4)
    block_loop(0.15)
    await eventually(lambda: logins.gate.allowed == 2)
    logins.gate.paced(1.0)
    assert logins.gate.allowed == 2  # never below the floor
    assert logins.inside == 8  # those in keep their slots: only new ones wait
    await eventually(lambda: logins.gate.allowed > 2)  # on time again: it grows back
    logins.release.set()
    await asyncio.gather(*tasks)


async def test_without_logins_waiting_the_number_allowed_does_not_grow() -> None:
    gate = LoginGate(8, floor=2, pacing=ROOMY)
    logins = Logins(gate)
    tasks = logins.start(2)  # exactly the floor: nobody waits
    await asyncio.sleep(0.1)
    assert gate.allowed == 2
    logins.release.set()
    await asyncio.gather(*tasks)


async def test_the_pacing_probe_stops_when_no_login_is_left() -> None:
    gate = LoginGate(8, floor=2, pacing=ROOMY)
    logins = Logins(gate)
    tasks = logins.start(4)
    await eventually(lambda: gate._probe is not None)
    logins.release.set()
    await asyncio.gather(*tasks)
    await eventually(lambda: gate._probe is None)


async def test_a_cap_at_the_floor_needs_no_probe() -> None:
    gate = LoginGate(1, floor=2)
    assert gate.floor == gate.allowed == 1
    async with gate.slot():
        assert gate._probe is None


async def test_hundreds_of_logins_with_timeouts_and_cancellations_leave_every_slot_free() -> None:
    gate = LoginGate(8, wait=0.05, floor=2, pacing=Pacing(interval=0.005))

    async def login(index: int) -> str:
        try:
            async with gate.slot():
                assert gate.in_flight <= gate.limit
                await asyncio.sleep(0.001 * (index % 7))
                if index % 11 == 0:
                    block_loop(0.002)  # now and then the loop runs late
            return "in"
        except LoginsBusy:
            return "busy"

    tasks = [asyncio.create_task(login(i)) for i in range(400)]
    await asyncio.sleep(0.01)
    for task in tasks[::13]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert "in" in results
    assert gate.in_flight == 0 and not gate._waiting
    async with asyncio.timeout(1):
        async with gate.slot():
            pass


async def test_each_look_on_time_raises_the_number_allowed_by_half_up_to_the_cap() -> None:
    gate = LoginGate(32, floor=2, pacing=Pacing(interval=60.0))  # looks only when told here
    logins = Logins(gate)
    tasks = logins.start(40)
    await asyncio.sleep(0)
    steps = []
    for _ in range(9):
        gate.paced(0.0)
        steps.append(gate.allowed)
    assert steps == [3, 4, 6, 9, 13, 19, 28, 32, 32]
    await asyncio.sleep(0)
    assert logins.inside == 32  # each raise let waiting logins in at once
    gate.paced(1.0)
    assert gate.allowed == 16
    logins.release.set()
    await asyncio.gather(*tasks)
