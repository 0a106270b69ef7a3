"""How much asyncio's TLS layer reads from a socket at once, per connection.

asyncio's TLS transport (`asyncio.sslproto.SSLProtocol`) receives into a buffer of its class's
`max_size`, 256 KiB, allocated and zeroed for every connection: a thousand idle sessions with
TLS on both sides would hold 500 MB of read buffers that only bulk transfers need. This module
sizes that buffer per connection: small for connections that carry commands and short replies,
large only while a bulk transfer is in flight (`ReadSizing`), back to small once it has been
quiet for a moment. With any other TLS transport (another event loop) it changes nothing.
Backends use it for their upstream connections, the POP3 front end for its clients' (which
send only commands).
"""

from __future__ import annotations

import asyncio
import mmap
from asyncio import sslproto
from typing import Any, Final

BULK: Final = 256 * 1024  # asyncio's own size: what throughput was measured with
SETTLE: Final = 1.0  # seconds without bulk transfer before the buffer shrinks again


def set_read_size(transport: asyncio.BaseTransport, size: int) -> bool:
    """Make `transport`'s TLS layer read at most `size` octets at once; False if it is not
    asyncio's TLS transport. Call between reads (from a callback or a task), never inside one."""
    found = getattr(transport, "_ssl_protocol", None)
    if not isinstance(found, sslproto.SSLProtocol) or not hasattr(found, "_ssl_buffer"):
        return False
    layer: Any = found  # the buffer attributes are asyncio's internals (Python 3.11 to 3.13)
    layer.max_size = size  # an instance attribute: other connections keep theirs
    if len(layer._ssl_buffer) != size:  # its get_buffer() only ever grows the buffer
        layer._ssl_buffer = _buffer(size)
        layer._ssl_buffer_view = memoryview(layer._ssl_buffer)
    return True


def _buffer(size: int) -> bytearray | mmap.mmap:
    """A large buffer is its own anonymous mapping: only the pages a read fills count as
    resident, and freeing it returns it to the system at once (a heap block that size would
    fragment the heap and stay with the process)."""
    return mmap.mmap(-1, size) if size >= mmap.PAGESIZE * 4 else bytearray(size)


class ReadSizing:
    """A connection's read size: `idle` octets, `BULK` while any `bulk()` span is open.

    Shrinking waits `SETTLE` seconds after the last span closed, so back-to-back transfers
    (one per message of a download) do not reallocate a large buffer each time.
    """

    def __init__(self, transport: asyncio.BaseTransport, idle: int) -> None:
        self._transport = transport
        self._idle = idle
        self._open = 0
        self._large = False
        self._shrink: asyncio.TimerHandle | None = None
        set_read_size(transport, idle)

    def rebind(self, transport: asyncio.BaseTransport) -> None:
        """The connection now runs over `transport` (after STARTTLS)."""
        self._transport = transport
        set_read_size(transport, BULK if self._open else self._idle)
        self._large = self._open > 0

    def begin(self) -> None:
        """A bulk transfer starts (a reply that may be large is awaited)."""
        self._open += 1
        if self._shrink is not None:
            self._shrink.cancel()
            self._shrink = None
        if not self._large:
            self._large = set_read_size(self._transport, BULK)

    def end(self) -> None:
        """That transfer is over; the buffer shrinks once none has run for `SETTLE` s."""
        self._open = max(0, self._open - 1)
        if self._open == 0 and self._large and self._shrink is None:
            loop = asyncio.get_running_loop()
            self._shrink = loop.call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self._shrink = None
        if self._open == 0 and not self._transport.is_closing():
            set_read_size(self._transport, self._idle)
            self._large = False
