"""The transport side of one client connection: bytes between socket and engine.

`Pop3Protocol` is an asyncio protocol that feeds received bytes straight into the engine
(no stream reader in between, so nothing can hide plaintext across a STLS upgrade: RFC
2595 section 4, the CVE-2011-0411 class), pauses reading while the engine holds more than
a bounded backlog, and tracks write flow control. It reads into a small buffer of its own:
a plain protocol would get a fresh 256 KiB bytes object per read, allocated and shrunk
(mmap, mremap, munmap) for every few-byte command; under TLS, the TLS layer's own reads are
sized for commands too. `BufferedOutput` gathers the replies to
pipelined commands into few writes and waits when the client is not reading (conformance
S-7). Both are plain objects the server's connection task drives.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

from popbridge.pop3.engine import Pop3Engine
from popbridge.telemetry import metrics
from popbridge.upstream.tlsreads import set_read_size

READ_BACKLOG: Final = 65536  # engine bytes before reading pauses (> the longest SASL line)
READ_SIZE: Final = 4096  # one read; commands are lines of at most 255 octets (RFC 2449)
# One TLS read from the client: asyncio's default, 256 KiB per connection, is sized for bulk
# transfer, and clients send only commands (a thousand idle sessions would hold 250 MB).
TLS_READ_SIZE: Final = 4096
FLUSH_THRESHOLD: Final = 65536


class Pop3Protocol(asyncio.BufferedProtocol):
    """Feeds the engine; the connection task waits on `wait_readable` and `writable`."""

    def __init__(self, engine: Pop3Engine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self._deadline = math.inf  # while waiting for a command: when the client is idle
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.connected.done():
            self.connected.set_result(None)

    def tls_started(self, transport: asyncio.Transport) -> None:
        """Bytes now come through TLS on `transport`, read in pieces sized for commands."""
        self.transport = transport
        set_read_size(transport, TLS_READ_SIZE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.engine.receive(data)
        self._readable.set()
        if self.engine.buffered > READ_BACKLOG and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._readable.set()
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def wait_readable(self, deadline: float = math.inf) -> None:
        """Wait for bytes from the client; TimeoutError once the loop's clock passes `deadline`.

        One timer per connection, moved only when it fires before the deadline: arming and
        cancelling one around every command cost more than the rest of a short command.
        """
        if not self._readable.is_set():
            loop = asyncio.get_running_loop()
            if deadline <= loop.time():
                raise TimeoutError
            self._deadline = deadline
            if self._timer is None or self._timer.when() > deadline:
                self._arm(loop, deadline)
            try:
                await self._readable.wait()
            finally:
                self._deadline = math.inf
        self._readable.clear()
        if self._timed_out:
            self._timed_out = False
            raise TimeoutError

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._deadline_reached, loop)

    def _deadline_reached(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._deadline == math.inf:
            return  # no one waits: the next wait arms a timer again
        if loop.time() < self._deadline:  # a command came in since: wait for the new deadline
            self._arm(loop, self._deadline)
            return
        self._timed_out = True
        self._readable.set()

    def can_write(self) -> bool:
        """True when a write would not have to wait: flow control is open, the peer there."""
        return self._writable.is_set() and not self.lost

    async def writable(self) -> None:
        await self._writable.wait()
        if self.lost:
            raise ConnectionResetError("client went away")

    def resume_reading(self) -> None:
        """The engine caught up: read again (called when it needs data)."""
        if self._paused and not self.lost and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()


class BufferedOutput:
    """Collects reply bytes so pipelined answers leave in few writes, then drains."""

    def __init__(self, protocol: Pop3Protocol, *, write_timeout: float) -> None:
        self._protocol = protocol
        self._write_timeout = write_timeout
        self._pending: list[bytes] = []
        self._size = 0
        self.sent = 0  # octets handed to the transport, for the status page

    def write(self, data: bytes) -> None:
        if data:
            self._pending.append(data)
            self._size += len(data)

    async def drain(self) -> None:
        if self._size >= FLUSH_THRESHOLD:
            await self.flush()

    async def flush(self) -> None:
        transport = self._protocol.transport
        if self._pending and transport is not None and not transport.is_closing():
            transport.write(b"".join(self._pending))
            self.sent += self._size
            metrics.sent(self._size)
        self._pending.clear()
        self._size = 0
        if self._protocol.can_write():
            return  # the usual case: no deadline timer to arm and cancel for every reply
        # A client that stops reading is as idle as one that stops writing (RFC 1939
        # section 3): past the idle timeout, TimeoutError closes it without UPDATE.
        async with asyncio.timeout(self._write_timeout):
            await self._protocol.writable()
