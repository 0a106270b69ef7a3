"""A TCP proxy that breaks the upstream on cue: the fault-injection harness of the hardening tests.

It sits between the bridge and a real server (Dovecot) and forwards bytes both ways until an
armed `Fault` fires. A fault has a `Trigger` (a byte count in one direction, or a byte pattern
such as ``b"UID EXPUNGE"`` seen in one direction) and an action on a target direction: `CUT`
drops the bytes from the trigger point on and aborts both sides, `STALL` holds them forever
(the connection stays open, so only the peer's own deadline ends it), `SLOW` forwards them a
few bytes at a time. When the target is the other direction, the action applies to the next
bytes that arrive there: "cut after the server has seen UID EXPUNGE, before its reply reaches
the bridge". Each armed fault fires once, on whichever connection reaches its trigger first,
so the session after a fault goes through cleanly. Every byte seen is recorded per
connection, so a test can also assert exactly what the bridge sent upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any


class Direction(enum.Enum):
    UP = "client->server"  # what the bridge sends to the IMAP server
    DOWN = "server->client"  # what the IMAP server answers


class Action(enum.Enum):
    CUT = "cut"
    STALL = "stall"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class Trigger:
    """Fires at byte `after` of `direction`, or where `pattern` first appears in it."""

    direction: Direction
    pattern: bytes | None = None
    after: int | None = None

    def __post_init__(self) -> None:
        if (self.pattern is None) == (self.after is None):
            raise ValueError("a trigger needs exactly one of pattern and after")


@dataclass(frozen=True, slots=True)
class Fault:
    """`action` on `target` (default: the trigger's own direction) once `when` fires."""

    action: Action
    when: Trigger
    target: Direction | None = None
    slow_bytes: int = 1  # SLOW: bytes per write
    slow_delay: float = 0.001  # SLOW: seconds between writes

    @property
    def aims_at(self) -> Direction:
        return self.target or self.when.direction


@dataclass(eq=False)
class Link:
    """One proxied connection: what each side sent, and the action pending on each side."""

    number: int
    seen: dict[Direction, bytearray] = field(
        default_factory=lambda: {d: bytearray() for d in Direction}
    )
    pending: dict[Direction, Fault] = field(default_factory=dict)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def abort(self) -> None:
        """A cut: both sides reset at once, buffered bytes dropped."""
        for writer in self.writers:
            writer.transport.abort()
        self.closed.set()

    def close(self) -> None:
        """An orderly end (one side closed): what was already forwarded still arrives."""
        for writer in self.writers:
            writer.close()
        self.closed.set()


class FaultProxy:
    """Listens on 127.0.0.1; `arm` faults, `upstream` may be changed between connections."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.links: list[Link] = []
        self.fired: list[Fault] = []
        self.triggered = asyncio.Event()
        self._armed: list[Fault] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def arm(self, *faults: Fault) -> None:
        """Replace the armed faults; `triggered` is cleared."""
        self._armed = list(faults)
        self.triggered.clear()

    def disarm(self) -> None:
        self._armed = []

    def sent(self, direction: Direction = Direction.UP) -> bytes:
        """Everything seen in `direction` on every connection so far, in connection order."""
        return b"".join(bytes(link.seen[direction]) for link in self.links)

    async def wait_triggered(self, within: float = 15.0) -> Fault:
        """The fault that fired; TimeoutError if none fires `within` seconds."""
        await asyncio.wait_for(self.triggered.wait(), within)
        return self.fired[-1]

    def cut_all(self) -> None:
        """Reset every open connection now (a server that went away with its sessions)."""
        for link in self.links:
            link.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(len(self.links) + 1, writers=[writer])
        self.links.append(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            link.abort()  # the upstream is down: the bridge sees a connection that closes
            return
        link.writers.append(up_writer)
        pumps = [
            self._spawn(self._pump(link, Direction.UP, reader, up_writer)),
            self._spawn(self._pump(link, Direction.DOWN, up_reader, writer)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await link.closed.wait()
        for pump in pumps:
            pump.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(
        self,
        link: Link,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(65536):
                start = len(link.seen[direction])
                link.seen[direction] += data
                if not await self._forward(link, direction, data, start, writer):
                    return
        except (ConnectionError, OSError):
            link.abort()
            return
        link.close()  # EOF on one side ends both (a stalled peer is released too)

    async def _forward(
        self,
        link: Link,
        direction: Direction,
        data: bytes,
        start: int,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Forward `data` subject to the faults; False once the link was cut."""
        pending = link.pending.get(direction)
        if pending is None:
            fault, cut_at = self._fire(link, direction, data, start)
            if fault is None:
                return await _write(writer, data)
            if not await _write(writer, data[:cut_at]):
                return False
            if fault.aims_at is not direction:
                link.pending[fault.aims_at] = fault
                return await _write(writer, data[cut_at:])
            pending, data = fault, data[cut_at:]
            link.pending[direction] = fault
        return await _apply(link, pending, data, writer)

    def _fire(
        self, link: Link, direction: Direction, data: bytes, start: int
    ) -> tuple[Fault | None, int]:
        """The first armed fault `data` triggers, and the offset in `data` where it does."""
        best: tuple[Fault | None, int] = (None, len(data))
        for fault in self._armed:
            if fault.when.direction is not direction:
                continue
            offset = _trigger_offset(fault.when, link.seen[direction], start)
            if offset is not None and offset <= best[1]:
                best = (fault, offset)
        if best[0] is not None:
            self._armed.remove(best[0])
            self.fired.append(best[0])
            self.triggered.set()
        return best


def _trigger_offset(trigger: Trigger, seen: bytearray, start: int) -> int | None:
    """Where in the newest chunk (which begins at `seen[start]`) the trigger fires, if it does."""
    if trigger.after is not None:
        return trigger.after - start if start <= trigger.after < len(seen) else None
    assert trigger.pattern is not None
    found = seen.find(trigger.pattern, max(0, start - len(trigger.pattern) + 1))
    return None if found < 0 else max(found - start, 0)


async def _apply(link: Link, fault: Fault, data: bytes, writer: asyncio.StreamWriter) -> bool:
    if fault.action is Action.CUT:
        link.abort()
        return False
    if fault.action is Action.STALL:
        return True  # held for good; the pump keeps reading so it notices the peer leaving
    for offset in range(0, len(data), fault.slow_bytes):
        if not await _write(writer, data[offset : offset + fault.slow_bytes]):
            return False
        await asyncio.sleep(fault.slow_delay)
    return True


async def _write(writer: asyncio.StreamWriter, data: bytes) -> bool:
    if not data:
        return True
    if writer.is_closing():
        return False
    writer.write(data)
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        return False
    return True
