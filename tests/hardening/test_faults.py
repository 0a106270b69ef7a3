"""Faults at every point of a POP3 session, against a real Dovecot.

A TCP proxy between the bridge and Dovecot cuts, stalls or slows the IMAP connection at one
precise point: during login, during the listing, in the middle of a RETR body, and at every
step of UPDATE (before STORE, between STORE and EXPUNGE, after EXPUNGE before its OK). Then
the upstream restarts under a session, the client vanishes after each command, and the bridge
process is killed with SIGKILL in the middle of UPDATE and started again. In every case the
client gets `-ERR [SYS/TEMP]`, or a clean close in mid-body, within the backend deadline
rather than a hang; only messages the client DELE'd and QUIT on may disappear or be flagged
`\\Deleted`; and the next session sees exactly the surviving messages with the same UIDLs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import (
    Dovecot,
    _launch,
    _wait_ready,
    free_port,
    generate_message,
    start_dovecot,
    wire_form,
)
from devkit.faultproxy import Action, Direction, Fault, FaultProxy, Trigger
from tests.conftest import StartBridge
from tests.hardening.conftest import UPSTREAM_TIMEOUT
from tests.hardening.pop3client import Pop3Client, logged_in
from tests.hardening.processes import popbridge_serve, serve_config
from tests.hardening.upstream import (
    BIG,
    SMALL,
    assert_next_session_consistent,
    assert_nothing_lost,
    flags,
    seed,
)

pytestmark = pytest.mark.dovecot

UP, DOWN = Direction.UP, Direction.DOWN
CUT, STALL, SLOW = Action.CUT, Action.STALL, Action.SLOW
UNAVAILABLE = b"-ERR [SYS/TEMP] mail store temporarily unavailable"
NOT_REMOVED = b"-ERR [SYS/TEMP] some deleted messages not removed"


def stuffed(message: bytes) -> bytes:
    """`message` as RETR sends it: CRLF line ends, lines starting with "." doubled."""
    lines = wire_form(message).split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def on_up(action: Action, pattern: bytes, target: Direction = UP) -> Fault:
    """`action` once the bridge sends `pattern`; on its reply when `target` is DOWN."""
    return Fault(action, Trigger(UP, pattern=pattern), target=target)


BEFORE_MAILDROP_OPENS = {
    "cut-mid-greeting": Fault(CUT, Trigger(DOWN, after=10)),
    "stall-before-greeting": Fault(STALL, Trigger(DOWN, after=0)),
    "cut-at-authenticate": on_up(CUT, b"AUTHENTICATE"),
    "stall-authenticate-reply": on_up(STALL, b"AUTHENTICATE", DOWN),
    "cut-authenticate-reply": on_up(CUT, b"AUTHENTICATE", DOWN),
    "cut-at-examine": on_up(CUT, b"EXAMINE"),
    "cut-at-listing-search": on_up(CUT, b"UID SEARCH"),
    "stall-listing-fetch-reply": on_up(STALL, b"UID FETCH", DOWN),
    "cut-listing-fetch-reply": on_up(CUT, b"UID FETCH", DOWN),
}


@pytest.mark.parametrize("fault", BEFORE_MAILDROP_OPENS.values(), ids=BEFORE_MAILDROP_OPENS)
async def test_fault_during_login_or_listing(
    faulty: tuple[str, int], proxy: FaultProxy, seeded: Dovecot, fault: Fault
) -> None:
    before = await flags(seeded)
    proxy.arm(fault)
    client = await Pop3Client.connect(faulty)
    assert await client.login() == UNAVAILABLE
    assert proxy.fired == [fault]
    # the lock was released and nothing is left half-open: the same connection can retry
    assert (await client.login()).startswith(b"+OK maildrop has 5 messages")
    assert await client.command(b"QUIT") == b"+OK bye"
    after = await assert_nothing_lost(seeded, before, deletable=set())
    assert after == before
    await assert_next_session_consistent(faulty, seeded, after)


async def test_fault_before_the_first_body_chunk_is_a_clean_err(
    faulty: tuple[str, int], proxy: FaultProxy, seeded: Dovecot
) -> None:
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert await client.command(b"DELE 3") == b"+OK message 3 deleted"
    proxy.arm(on_up(CUT, b"BODY.PEEK[]"))
    assert await client.command(b"RETR 2") == UNAVAILABLE
    assert await client.command(b"NOOP") == b"+OK"  # the session itself still answers
    # that upstream connection is gone: the next RETR logs in again (conformance I-17)
    assert (await client.command(b"RETR 4")).startswith(b"+OK")
    assert await client.lines()
    assert await client.command(b"QUIT") == b"+OK bye"
    assert await client.until_closed() == b""
    after = await assert_nothing_lost(seeded, before, deletable={3})
    assert after == {uid: names for uid, names in before.items() if uid != 3}
    await assert_next_session_consistent(faulty, seeded, after)


MID_BODY = {
    "cut-at-second-chunk": on_up(CUT, b"BODY.PEEK[]<16384."),
    "stall-third-chunk-reply": on_up(STALL, b"BODY.PEEK[]<32768.", DOWN),
    "cut-mid-literal": Fault(CUT, Trigger(DOWN, pattern=b"line 300 of message 1")),
}


@pytest.mark.parametrize("fault", MID_BODY.values(), ids=MID_BODY)
async def test_fault_mid_body_closes_the_connection_cleanly(
    faulty: tuple[str, int], proxy: FaultProxy, seeded: Dovecot, fault: Fault
) -> None:
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert await client.command(b"DELE 2") == b"+OK message 2 deleted"
    proxy.arm(fault)
    whole = stuffed(generate_message(1, BIG))
    size = len(wire_form(generate_message(1, BIG)))
    assert await client.command(b"RETR 1") == b"+OK %d octets" % size
    body = await client.until_closed()  # the deadline, not a hang, ends it
    assert proxy.fired == [fault]
    assert 0 < len(body) < len(whole) and whole.startswith(body)  # a prefix, no terminator
    after = await assert_nothing_lost(seeded, before, deletable=set())  # no QUIT: no UPDATE
    await assert_next_session_consistent(faulty, seeded, after)


async def test_slow_fragmented_upstream_still_delivers_every_byte(
    faulty: tuple[str, int], proxy: FaultProxy, seeded: Dovecot
) -> None:
    # From the listing on, every reply arrives in 7-byte pieces: literals, FETCH lines and
    # tagged replies are split at every possible place, all within the 2 s deadline.
    proxy.arm(Fault(SLOW, Trigger(UP, pattern=b"UID SEARCH"), DOWN, slow_bytes=7, slow_delay=0))
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert proxy.fired
    for number in (2, 3):
        assert (await client.command(b"RETR %d" % number)).startswith(b"+OK")
        retrieved = b"".join(line + b"\r\n" for line in await client.lines())
        assert retrieved == wire_form(generate_message(number, SMALL))
    assert await client.command(b"QUIT") == b"+OK bye"
    assert await flags(seeded) == before


# (fault at QUIT, the reply to QUIT, what became of the DELE'd messages upstream)
UPDATE_FAULTS = {
    "no-fault": (None, b"+OK bye", "expunged"),
    "cut-at-select": (on_up(CUT, b" SELECT "), NOT_REMOVED, "untouched"),
    "cut-select-reply": (on_up(CUT, b" SELECT ", DOWN), NOT_REMOVED, "untouched"),
    "cut-before-store": (on_up(CUT, b"UID STORE"), NOT_REMOVED, "untouched"),
    "stall-store-reply": (on_up(STALL, b"UID STORE", DOWN), NOT_REMOVED, "flagged"),
    "cut-between-store-and-expunge": (on_up(CUT, b"UID EXPUNGE"), NOT_REMOVED, "flagged"),
    "stall-before-expunge": (on_up(STALL, b"UID EXPUNGE"), NOT_REMOVED, "flagged"),
    "cut-after-expunge-before-ok": (on_up(CUT, b"UID EXPUNGE", DOWN), NOT_REMOVED, "expunged"),
    "stall-expunge-reply": (on_up(STALL, b"UID EXPUNGE", DOWN), NOT_REMOVED, "expunged"),
    "cut-at-verification": (on_up(CUT, b"UID SEARCH UID"), NOT_REMOVED, "expunged"),
}


@pytest.mark.parametrize(("fault", "reply", "outcome"), UPDATE_FAULTS.values(), ids=UPDATE_FAULTS)
async def test_fault_during_update(
    faulty: tuple[str, int],
    proxy: FaultProxy,
    seeded: Dovecot,
    fault: Fault | None,
    reply: bytes,
    outcome: str,
) -> None:
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert await client.command(b"RETR 3") == b"+OK %d octets" % before_size(3)
    await client.lines()
    assert await client.command(b"DELE 2") == b"+OK message 2 deleted"
    assert await client.command(b"DELE 4") == b"+OK message 4 deleted"
    proxy.arm(*([fault] if fault else []))
    assert await client.command(b"QUIT") == reply
    assert await client.until_closed() == b""
    assert proxy.fired == ([fault] if fault else [])
    after = await assert_nothing_lost(seeded, before, deletable={2, 4})
    expected = {
        "untouched": before,
        "flagged": before | {uid: before[uid] | {"\\Deleted"} for uid in (2, 4)},
        "expunged": {uid: names for uid, names in before.items() if uid not in (2, 4)},
    }[outcome]
    assert after == expected
    await assert_next_session_consistent(faulty, seeded, after)


def before_size(number: int) -> int:
    return len(wire_form(generate_message(number, SMALL)))


@pytest.fixture
def own_dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    """A Dovecot of this test's own, which it may stop and start again."""
    instance = start_dovecot(tmp_path / "dovecot", {"alice": "secret"})
    try:
        seed(instance)
        yield instance
    finally:
        instance.stop()


def stop_upstream(dovecot: Dovecot) -> None:
    """Stop the master and its children, keeping directory, mail and ports for a restart."""
    assert dovecot.process is not None
    dovecot.process.terminate()
    dovecot.process.wait(timeout=15)


def start_upstream(dovecot: Dovecot) -> None:
    """Start Dovecot again from the same config: same directory, same ports."""
    process = _launch(dovecot.directory, True)
    ports = [dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port]
    dovecot.process, dovecot.pid = process, process.pid
    _wait_ready(process, ports)


async def test_upstream_restart(bridge: StartBridge, own_dovecot: Dovecot) -> None:
    # Dovecot's imap processes may outlive a stopped master; the proxy resets their
    # connections the way a restarted or failed-over server does.
    proxy = await FaultProxy(own_dovecot.host, own_dovecot.imap_port).start()
    try:
        await restart_scenario(bridge, own_dovecot, proxy)
    finally:
        await proxy.close()


async def restart_scenario(bridge: StartBridge, own_dovecot: Dovecot, proxy: FaultProxy) -> None:
    server = await bridge(
        port=proxy.port, timeout=UPSTREAM_TIMEOUT, connect_timeout=UPSTREAM_TIMEOUT
    )
    address = server.addresses[0]
    before = await flags(own_dovecot)
    first = await logged_in(address)
    uidls = await first.uidls()
    assert await first.command(b"DELE 1") == b"+OK message 1 deleted"
    assert await first.command(b"QUIT") == b"+OK bye"
    held = await logged_in(address)  # open across the restart
    await asyncio.to_thread(stop_upstream, own_dovecot)
    proxy.cut_all()
    down = await Pop3Client.connect(address)
    assert await down.login() == UNAVAILABLE
    assert await down.command(b"QUIT") == b"+OK bye"
    await asyncio.to_thread(start_upstream, own_dovecot)
    # its IMAP connection died with the upstream: RETR logs in again (conformance I-17)
    size = int((await held.command(b"LIST 2")).split()[2])
    assert (await held.command(b"RETR 2")).startswith(b"+OK")
    assert sum(len(line) + 2 for line in await held.lines()) == size
    assert await held.command(b"DELE 1") == b"+OK message 1 deleted"
    assert await held.command(b"QUIT") == b"+OK bye"  # over the new connection
    after = await assert_nothing_lost(own_dovecot, before, deletable={1, 2})
    assert after == {uid: names for uid, names in before.items() if uid not in (1, 2)}
    await assert_next_session_consistent(address, own_dovecot, after)
    again = await logged_in(address)
    assert list((await again.uidls()).values()) == list(uidls.values())[2:]
    assert await again.command(b"QUIT") == b"+OK bye"


SEQUENCE = [b"USER alice", b"PASS secret", b"STAT", b"UIDL", b"RETR 1", b"DELE 1", b"DELE 2"]


@pytest.mark.parametrize("last", range(len(SEQUENCE)), ids=[c.decode() for c in SEQUENCE])
async def test_client_drop_after_each_command_applies_nothing(
    faulty: tuple[str, int], seeded: Dovecot, last: int
) -> None:
    before = await flags(seeded)
    client = await Pop3Client.connect(faulty)
    for command in SEQUENCE[:last]:
        assert (await client.command(command)).startswith(b"+OK")
        if command in (b"UIDL", b"RETR 1"):
            await client.lines()
    client.writer.write(SEQUENCE[last] + b"\r\n")
    client.abort()  # gone without reading the reply, and without QUIT
    after = await assert_nothing_lost(seeded, before, deletable=set())
    assert after == before
    await assert_next_session_consistent(faulty, seeded, after)


async def test_quit_without_line_end_then_close_applies_nothing(
    faulty: tuple[str, int], seeded: Dovecot
) -> None:
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert await client.command(b"DELE 1") == b"+OK message 1 deleted"
    client.writer.write(b"QUIT")
    client.writer.write_eof()
    assert await client.until_closed() == b""  # never executed, never answered
    assert await assert_nothing_lost(seeded, before, deletable=set()) == before


async def test_quit_then_vanish_still_completes_update(
    faulty: tuple[str, int], seeded: Dovecot
) -> None:
    # RFC 1939 section 6: QUIT from TRANSACTION enters UPDATE; the client need not wait.
    before = await flags(seeded)
    client = await logged_in(faulty)
    assert await client.command(b"DELE 1") == b"+OK message 1 deleted"
    assert await client.command(b"DELE 2") == b"+OK message 2 deleted"
    client.writer.write(b"QUIT\r\n")
    client.abort()
    waiter = await logged_in(faulty)  # the lock is released only once UPDATE is over
    assert await waiter.command(b"QUIT") == b"+OK bye"
    after = await assert_nothing_lost(seeded, before, deletable={1, 2})
    assert after == {uid: names for uid, names in before.items() if uid not in (1, 2)}
    await assert_next_session_consistent(faulty, seeded, after)


async def test_bridge_killed_during_update_then_restarted(
    proxy: FaultProxy, seeded: Dovecot, tmp_path: Path
) -> None:
    port = free_port()
    config = serve_config(tmp_path / "popbridge.toml", port=port, imap_port=proxy.port, timeout=30)
    bridge = popbridge_serve(config, port, tmp_path / "popbridge.log")
    before = await flags(seeded)
    try:
        await bridge.start()
        proxy.arm(on_up(STALL, b"UID EXPUNGE"))  # STORE \Deleted went through, EXPUNGE hangs
        client = await logged_in(bridge.address)
        assert await client.command(b"DELE 2") == b"+OK message 2 deleted"
        assert await client.command(b"DELE 4") == b"+OK message 4 deleted"
        client.writer.write(b"QUIT\r\n")
        await proxy.wait_triggered()
        assert await bridge.kill() == -9
        with contextlib.suppress(ConnectionResetError):
            assert await client.until_closed() == b""  # no reply to QUIT, and no hang
        after = await assert_nothing_lost(seeded, before, deletable={2, 4})
        assert after == before | {uid: before[uid] | {"\\Deleted"} for uid in (2, 4)}
        await bridge.start()  # same config, same port: a supervisor's restart
        await assert_next_session_consistent(bridge.address, seeded, after)
    finally:
        await bridge.stop()
