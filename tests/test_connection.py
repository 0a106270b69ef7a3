"""The connection protocol's reads: a reused buffer whose bytes the engine copies at once,
and the idle deadline of a wait for the client's next command."""

from __future__ import annotations

import asyncio

import pytest

from popbridge.frontend.connection import READ_SIZE, Pop3Protocol
from popbridge.pop3 import commands as c
from popbridge.pop3.engine import Pop3Engine


def deliver(protocol: Pop3Protocol, data: bytes) -> None:
    """What asyncio does for a BufferedProtocol: recv_into the buffer, then report the count."""
    buffer = protocol.get_buffer(-1)
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


async def test_reads_reuse_one_small_buffer_and_the_engine_keeps_its_own_copy() -> None:
    engine = Pop3Engine()
    protocol = Pop3Protocol(engine)
    assert len(protocol.get_buffer(-1)) == READ_SIZE
    assert protocol.get_buffer(-1).obj is protocol.get_buffer(65536).obj  # never reallocated
    deliver(protocol, b"CAPA\r\n")
    deliver(protocol, b"NOOP\r\n")  # overwrites the buffer: the first line must survive
    assert isinstance(engine.next_event(), c.Capa)


async def test_waiting_past_the_deadline_times_out_unless_bytes_are_there() -> None:
    protocol = Pop3Protocol(Pop3Engine())
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await protocol.wait_readable(loop.time() - 1)
    deliver(protocol, b"NOOP\r\n")
    await protocol.wait_readable(loop.time() - 1)  # a command is waiting: read it first


async def test_the_idle_deadline_closes_a_silent_wait() -> None:
    protocol = Pop3Protocol(Pop3Engine())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await protocol.wait_readable(started + 0.05)
    assert loop.time() - started >= 0.05
    loop.call_later(0.01, deliver, protocol, b"NOOP\r\n")
    await protocol.wait_readable(loop.time() + 0.2)  # the next wait is not timed out at once


async def test_one_timer_serves_consecutive_waits() -> None:
    protocol = Pop3Protocol(Pop3Engine())
    loop = asyncio.get_running_loop()
    for _ in range(3):  # each command moves the deadline later: the first timer stays armed
        loop.call_soon(deliver, protocol, b"NOOP\r\n")
        await protocol.wait_readable(loop.time() + 0.1)
    timer = protocol._timer
    assert timer is not None and timer.when() < loop.time() + 0.1
    later = loop.time() + 0.3
    with pytest.raises(TimeoutError):  # it fires early, moves to the deadline, then fires
        await protocol.wait_readable(later)
    assert loop.time() >= later
    loop.call_soon(deliver, protocol, b"NOOP\r\n")
    await protocol.wait_readable(loop.time() + 60)
    armed = protocol._timer
    assert armed is not None and not armed.cancelled()
    protocol.connection_lost(None)  # a closed connection leaves no timer behind
    assert protocol._timer is None and armed.cancelled()
