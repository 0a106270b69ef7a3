"""PROXY protocol listeners over real loopback sockets, with the in-memory backend.

The client address a trusted proxy names is the one logs, per-address connection caps and
login throttling use; everything else (an untrusted peer, no header, a bad or late one)
is closed without a byte sent. Bytes right after the header reach the engine intact.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devkit.haproxy import v1_header, v2_header
from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from devkit.tlsca import make_test_pki
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.preface import ProxyPreface
from popbridge.frontend.proxy import networks
from popbridge.frontend.server import Pop3Server
from popbridge.frontend.tls import TlsSettings
from popbridge.session.throttle import ThrottlePolicy

LOCAL = ("127.0.0.1", 110)
StartServer = Callable[..., "asyncio.Future[Pop3Server]"]


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., object]]:
    backend = MemoryBackend()
    backend.user("alice", "secret", b"Subject: one\r\n\r\nbody\r\n")
    servers = Servers()

    async def start(
        trusted: tuple[str, ...] = ("127.0.0.1/32",), handshake_timeout: float = 30.0,
        tls: TlsSettings | None = None, **throttle: object,
    ) -> Pop3Server:  # fmt: skip
        listener = ListenerConfig(
            host="127.0.0.1", port=0, plaintext_auth=True, handshake_timeout=handshake_timeout,
            proxy_protocol=True, proxy_trusted=networks(trusted),
            mode="plain" if tls is None else "implicit", tls=tls,
        )  # fmt: skip
        policy = ThrottlePolicy(base_delay=0, **throttle)  # type: ignore[arg-type]
        config = Config(
            source="test", backend_type="memory", listeners=(listener,),
            server=ServerConfig(throttle=policy),
        )  # fmt: skip
        return await servers.start(config, backend)

    yield start
    await servers.stop()


async def proxied(
    server: Pop3Server, header: bytes, after: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(header + after)
    return reader, writer


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> bytes:
    writer.write(line.encode() + b"\r\n")
    return await reader.readline()


async def closed_silently(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # closed with the client's bytes unread: the kernel resets
        data = b""
    writer.close()
    return data == b""


async def test_the_header_names_the_client_in_the_log(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    caplog.set_level(logging.INFO)
    for header, client in [
        (v1_header(("192.0.2.7", 40001), LOCAL), "192.0.2.7:40001"),
        (v2_header(("2001:db8::7", 40002), ("2001:db8::1", 110)), "2001:db8::7:40002"),
    ]:
        reader, writer = await proxied(server, header)
        assert (await reader.readline()).startswith(b"+OK")
        assert await command(reader, writer, "USER alice") == b"+OK send PASS\r\n"
        assert (await command(reader, writer, "PASS secret")).startswith(b"+OK")
        assert (await command(reader, writer, "QUIT")).startswith(b"+OK")
        writer.close()
        lines = [r.getMessage() for r in caplog.records if f" {client}] " in r.getMessage()]
        assert any("logged in" in line for line in lines), caplog.text
        assert any("via proxy 127.0.0.1:" in line for line in lines)


async def test_bytes_after_the_header_reach_the_engine(start: StartServer) -> None:
    server = await start()
    header = v2_header(("192.0.2.8", 1), LOCAL, tlvs=b"\x04\x00\x03abc")
    reader, writer = await proxied(server, header, b"CAPA\r\n")  # one write, before the greeting
    assert (await reader.readline()).startswith(b"+OK")
    assert (await reader.readline()).startswith(b"+OK")  # CAPA's answer: nothing was lost
    writer.close()


async def test_a_local_header_keeps_the_peer_address(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    caplog.set_level(logging.INFO)
    reader, writer = await proxied(server, v2_header(None))  # the proxy's own health check
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()
    assert "via proxy" in caplog.text and " 127.0.0.1:" in caplog.text


@pytest.mark.parametrize(
    "first",
    [
        b"USER alice\r\n",  # no header at all
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",  # malformed v1
        b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",  # oversized v1
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + bytes(64),  # oversized v2
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),  # TLS without a header
        b"PROXY TCP4 192.0.2.1",  # then the client closes its side
    ],
)
async def test_anything_but_a_header_is_closed_without_a_word(
    start: StartServer, first: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    caplog.set_level(logging.INFO)
    reader, writer = await proxied(server, first)
    writer.write_eof()
    assert await closed_silently(reader, writer)
    assert "refused:" in caplog.text


async def test_a_peer_outside_proxy_trusted_is_closed_even_with_a_good_header(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(trusted=("10.0.0.0/8", "::1/128"))
    caplog.set_level(logging.INFO)
    reader, writer = await proxied(server, v1_header(("192.0.2.9", 5), LOCAL))
    assert await closed_silently(reader, writer)
    assert "outside proxy_trusted" in caplog.text


async def test_a_silent_proxy_is_closed_at_the_deadline(start: StartServer) -> None:
    server = await start(handshake_timeout=0.2)
    reader, writer = await proxied(server, b"PROXY ")
    assert await closed_silently(reader, writer)


async def test_connection_caps_count_the_named_client(start: StartServer) -> None:
    server = await start(max_connections_per_address=1)
    first = await proxied(server, v1_header(("192.0.2.10", 1), LOCAL))
    assert (await first[0].readline()).startswith(b"+OK")
    other = await proxied(server, v1_header(("192.0.2.11", 1), LOCAL))
    assert (await other[0].readline()).startswith(b"+OK")  # same socket peer, other client
    again = await proxied(server, v1_header(("192.0.2.10", 2), LOCAL))
    assert (await again[0].readline()).startswith(b"-ERR [SYS/TEMP]")
    for _, writer in (first, other, again):
        writer.close()


async def test_failed_logins_are_throttled_by_the_named_client(start: StartServer) -> None:
    server = await start(max_failures_per_address=2)
    for port in (1, 2):
        reader, writer = await proxied(server, v1_header(("192.0.2.12", port), LOCAL))
        await reader.readline()
        await command(reader, writer, "USER alice")
        assert (await command(reader, writer, "PASS wrong")).startswith(b"-ERR [AUTH]")
        writer.close()
    reader, writer = await proxied(server, v1_header(("192.0.2.12", 3), LOCAL))
    await reader.readline()
    await command(reader, writer, "USER alice")
    assert (await command(reader, writer, "PASS secret")).startswith(b"-ERR [SYS/TEMP]")
    writer.close()
    reader, writer = await proxied(server, v1_header(("192.0.2.13", 1), LOCAL))
    await reader.readline()
    await command(reader, writer, "USER alice")
    assert (await command(reader, writer, "PASS secret")).startswith(b"+OK")
    writer.close()


async def test_a_tls_client_hello_in_the_same_segment_as_the_header_is_not_lost(
    start: StartServer, tmp_path: Path
) -> None:
    pki = make_test_pki(tmp_path / "pki")
    server = await start(tls=TlsSettings(pki.cert_file, pki.key_file))
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    header = v2_header(("192.0.2.20", 1), LOCAL)
    greeting = await asyncio.to_thread(_tls_greeting, server.addresses[0], context, header)
    assert greeting.startswith(b"+OK")


def _tls_greeting(address: tuple[str, int], context: ssl.SSLContext, header: bytes) -> bytes:
    """The POP3S greeting, the PROXY header and the ClientHello sent in one write."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(address, timeout=10) as sock:
        pending = header
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + outgoing.read())
                pending = b""
                incoming.write(sock.recv(65536) or b"")
        sock.sendall(outgoing.read())
        while True:
            try:
                return tls.read(1024)
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))


async def test_a_connection_waiting_for_its_header_is_closed_on_shutdown(
    start: StartServer,
) -> None:
    server = await start()
    reader, writer = await proxied(server, b"PROXY TCP4 ")
    await asyncio.sleep(0)
    await server.stop()
    assert await closed_silently(reader, writer)


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: object) -> None:
        super().__init__()
        self.peer, self.aborted, self.protocol = peer, False, None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]


def feed(preface: ProxyPreface, data: bytes) -> None:
    buffer = preface.get_buffer(-1)
    buffer[: len(data)] = data
    preface.buffer_updated(len(data))


async def test_the_preface_edges() -> None:
    inner = asyncio.Protocol()
    trusted = networks(["127.0.0.1/32"])
    # a header completing after the waiting task was cancelled: closed, not handed over
    preface = ProxyPreface(inner, trusted, 30)
    transport = FakeTransport(("127.0.0.1", 5))
    preface.connection_made(transport)
    preface.header.cancel()
    feed(preface, b"PROXY UNKNOWN\r\n")
    assert transport.aborted and transport.protocol is None
    # once accepted, a late failure (a stray timer) leaves the POP3 protocol's transport alone
    preface = ProxyPreface(inner, trusted, 30)
    transport = FakeTransport(("127.0.0.1", 5))
    preface.connection_made(transport)
    feed(preface, b"PROXY UNKNOWN\r\n")
    assert transport.protocol is inner and (await preface.header).source is None
    preface.fail("late")
    assert not transport.aborted
    # a peer that is not an address (a Unix socket) is never trusted
    preface = ProxyPreface(inner, trusted, 30)
    transport = FakeTransport("/run/popbridge.sock")
    preface.connection_made(transport)
    assert await preface.accepted("s-1") is None and transport.aborted
