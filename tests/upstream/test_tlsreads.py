"""TLS read sizing over real loopback TLS connections: idle connections keep small read
buffers, bulk transfers get asyncio's large one back, and every byte still arrives.

Sizes are read from asyncio's TLS layer of the live transport (what the module changes);
nothing here measures time or memory.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from asyncio import sslproto
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from devkit.tlsca import TestPki, make_test_pki
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.connection import TLS_READ_SIZE, Pop3Protocol
from popbridge.frontend.tls import TlsSettings
from popbridge.pop3.engine import Pop3Engine
from popbridge.session.throttle import ThrottlePolicy
from popbridge.upstream import tlsreads
from popbridge.upstream.tlsreads import BULK, ReadSizing, set_read_size

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: many TLS records, many socket reads


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= len(PAYLOAD) and not self.done.done():
            self.done.set_result(None)


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
async def tls_pair(pki: TestPki) -> AsyncIterator[tuple[asyncio.Transport, Collect]]:
    """A client TLS transport, and the protocol of the server that receives its bytes."""
    made: asyncio.Future[Collect] = asyncio.get_running_loop().create_future()

    def server_protocol() -> Collect:
        made.set_result(Collect())
        return made.result()

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.cert_file, pki.key_file)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(server_protocol, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(pki.ca_file))
    transport, _ = await loop.create_connection(
        asyncio.Protocol, "127.0.0.1", port, ssl=client_context, server_hostname="127.0.0.1"
    )
    collect = await asyncio.wait_for(made, 30)
    await asyncio.wait_for(collect.made, 30)
    yield transport, collect
    transport.close()
    server.close()
    await server.wait_closed()


def read_buffer(transport: asyncio.BaseTransport) -> int:
    """How many octets asyncio's TLS layer of `transport` reads from its socket at once."""
    layer: Any = transport._ssl_protocol  # type: ignore[attr-defined]
    return len(layer.get_buffer(-1))


async def test_every_server_read_is_small_and_every_byte_arrives(
    tls_pair: tuple[asyncio.Transport, Collect],
) -> None:
    client, server = tls_pair
    assert server.transport is not None
    assert read_buffer(server.transport) == BULK  # asyncio's default, before any sizing
    assert set_read_size(server.transport, 4096)
    assert read_buffer(server.transport) == 4096
    client.write(PAYLOAD)  # 1 MiB through a 4 KiB read buffer: more reads, the same bytes
    await asyncio.wait_for(server.done, 30)
    assert bytes(server.data) == PAYLOAD


async def test_a_plain_transport_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        assert not set_read_size(transport, 4096)
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def test_bulk_spans_read_large_until_all_have_ended_and_settled(
    tls_pair: tuple[asyncio.Transport, Collect], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = tls_pair
    monkeypatch.setattr(tlsreads, "SETTLE", 0.0)
    sizing = ReadSizing(client, 8192)
    assert read_buffer(client) == 8192
    sizing.begin()
    sizing.begin()  # two FETCHes in flight (a read-ahead)
    assert read_buffer(client) == BULK
    sizing.end()
    await asyncio.sleep(0.01)
    assert read_buffer(client) == BULK  # one transfer still runs
    sizing.end()
    assert read_buffer(client) == BULK  # not before it settled
    sizing.begin()  # the next transfer starts before it settled: no reallocation
    sizing.end()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if read_buffer(client) == 8192:
            break
    assert read_buffer(client) == 8192


async def test_the_frontend_reads_commands_through_small_tls_reads(
    tls_pair: tuple[asyncio.Transport, Collect],
) -> None:
    client, _ = tls_pair
    protocol = Pop3Protocol(Pop3Engine())
    protocol.tls_started(client)
    assert protocol.transport is client
    assert read_buffer(client) == TLS_READ_SIZE


async def test_hundreds_of_pop3s_sessions_hold_only_small_tls_read_buffers(pki: TestPki) -> None:
    """Every server-side TLS layer of 300 concurrent POP3S connections reads in 4 KiB: idle
    sessions do not hold asyncio's 256 KiB each (with TLS upstream too, that was 570 KB)."""
    servers = Servers()
    backend = MemoryBackend()
    backend.user("alice", "secret", b"Subject: x\r\n\r\nbody\r\n")
    listener = ListenerConfig(
        host="127.0.0.1", port=0, mode="implicit", tls=TlsSettings(pki.cert_file, pki.key_file)
    )
    config = Config(
        source="t", backend_type="memory", listeners=(listener,),
        server=ServerConfig(
            max_connections=1000, throttle=ThrottlePolicy(max_connections_per_address=1000)
        ),
    )  # fmt: skip
    server = await servers.start(config, backend)
    port = server.addresses[0][1]
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    writers: list[asyncio.StreamWriter] = []
    try:

        async def greeted() -> None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
            writers.append(writer)
            assert (await reader.readline()).startswith(b"+OK")

        await asyncio.gather(*(greeted() for _ in range(300)))
        layers = [
            o for o in gc.get_objects() if isinstance(o, sslproto.SSLProtocol) and o._server_side
        ]
        assert len(layers) >= 300
        assert {len(layer.get_buffer(-1)) for layer in layers} == {TLS_READ_SIZE}
    finally:
        for writer in writers:
            writer.close()
        await servers.stop()
