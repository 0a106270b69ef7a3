"""The connection protocol's reads: a reused buffer whose bytes the engine copies at once."""

from __future__ import annotations

from popbridge.connection import READ_SIZE, Pop3Protocol
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
