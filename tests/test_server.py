"""The asyncio server over real loopback sockets, with the in-memory backend: poplib,
pipelining, idle timeout, connection cap, and shutdown without UPDATE."""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest

from devkit.memory_backend import MemoryBackend, MemoryMailbox
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.contract import Credentials
from popbridge.frontend.server import Pop3Server
from popbridge.pop3.wire import normalise, normalised_size
from popbridge.session.session import Services
from popbridge.session.throttle import ThrottlePolicy

MESSAGES = [
    b"Subject: one\r\n\r\nbody\r\n",
    b"Subject: two\n\n.starts with dot\n",
    b"X: 3\r\n\r\n" + (b"z" * 70 + b"\n") * 4000,
]
TOTAL = sum(normalised_size(m) for m in MESSAGES)

MakeServer = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    backend.user("alice", "secret", *MESSAGES).chunk_size = 65536
    return backend


@pytest.fixture
async def make_server(
    backend: MemoryBackend,
) -> AsyncIterator[MakeServer]:
    servers = Servers()

    async def start(**server_options: object) -> Pop3Server:
        options: dict[str, object] = {"throttle": ThrottlePolicy(base_delay=0), **server_options}
        config = Config(
            source="test",
            backend_type="memory",
            listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
            server=ServerConfig(**options),  # type: ignore[arg-type]
        )
        return await servers.start(config, backend)

    yield start
    await servers.stop()


async def connect(server: Pop3Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    assert (await reader.readline()).startswith(b"+OK")
    return reader, writer


def poplib_session(port: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user("alice")
    client.pass_("secret")
    count, size = client.stat()
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    assert size == sum(sizes) and count == 3
    bodies = [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    uidls = client.uidl()[1]
    top = client.top(2, 0)[1]
    client.dele(1)
    client.quit()
    assert [len(b) for b in bodies] == sizes
    return bodies, uidls, top


async def test_poplib_session_retrieves_every_byte(
    make_server: MakeServer, backend: MemoryBackend
) -> None:
    server: Pop3Server = await make_server()
    bodies, uidls, top = await asyncio.to_thread(poplib_session, server.addresses[0][1])
    assert bodies == [normalise(m) for m in MESSAGES]
    assert uidls == [b"1 m1", b"2 m2", b"3 m3"]
    assert top == [b"Subject: two", b""]
    assert backend.stores["alice"].mutations == [("expunge", ("m1",))]


async def test_pipelined_commands_answered_in_order(
    make_server: MakeServer,
) -> None:
    server: Pop3Server = await make_server()
    reader, writer = await connect(server)
    writer.write(b"USER alice\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nBOGUS\r\nNOOP\r\nQUIT\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert data == (
        b"+OK send PASS\r\n+OK maildrop has 3 messages (%d octets)\r\n+OK 3 %d\r\n" % (TOTAL, TOTAL)
        + b"+OK 22 octets\r\nSubject: one\r\n\r\nbody\r\n.\r\n"
        + b"-ERR unknown command\r\n+OK\r\n+OK bye\r\n"
    )


async def test_idle_timeout_closes_silently_and_applies_nothing(
    make_server: MakeServer, backend: MemoryBackend
) -> None:
    server: Pop3Server = await make_server(idle_timeout=0.5)
    reader, writer = await connect(server)
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\n")
    await reader.readline(), await reader.readline(), await reader.readline()
    for _ in range(4):  # a trickle of bytes that never completes a command does not reset it
        writer.write(b"N")
        await asyncio.sleep(0.1)
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert backend.stores["alice"].mutations == []
    reader2, writer2 = await connect(server)  # the lock was released
    writer2.write(b"USER alice\r\nPASS secret\r\n")
    await reader2.readline()
    assert (await reader2.readline()).startswith(b"+OK maildrop")
    writer2.close()


async def test_commands_reset_the_idle_timer(
    make_server: MakeServer,
) -> None:
    server: Pop3Server = await make_server(idle_timeout=0.4)
    reader, writer = await connect(server)
    for _ in range(5):
        await asyncio.sleep(0.2)
        writer.write(b"CAPA\r\n")
        assert (await reader.readuntil(b".\r\n")).startswith(b"+OK")
    writer.close()


async def test_connection_cap(make_server: MakeServer) -> None:
    server: Pop3Server = await make_server(max_connections=1)
    _, first = await connect(server)
    host, port = server.addresses[0]
    reader, _ = await asyncio.open_connection(host, port)
    assert await reader.read() == b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
    first.close()


async def test_listening_socket_gets_the_configured_backlog(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel does not report a socket's backlog back; what listen() was given is seen
    # on its way through asyncio.
    loop = asyncio.get_running_loop()
    create_server, backlogs = loop.create_server, []

    async def recording(*args: Any, **kwargs: Any) -> asyncio.Server:
        backlogs.append(kwargs.get("backlog"))
        return await create_server(*args, **kwargs)

    monkeypatch.setattr(loop, "create_server", recording)
    await make_server(listen_backlog=700)
    assert backlogs == [700]


async def test_dropped_connection_releases_lock_and_applies_nothing(
    make_server: MakeServer, backend: MemoryBackend
) -> None:
    server: Pop3Server = await make_server()
    reader, writer = await connect(server)
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\n")
    for _ in range(4):
        await reader.readline()
    writer.transport.abort()
    for _ in range(50):
        if backend.opened[-1].closed:
            break
        await asyncio.sleep(0.02)
    assert backend.opened[-1].closed
    assert backend.stores["alice"].mutations == []


async def test_shutdown_cancels_sessions_without_update(
    make_server: MakeServer, backend: MemoryBackend
) -> None:
    server: Pop3Server = await make_server()
    reader, writer = await connect(server)
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\n")
    for _ in range(3):
        await reader.readline()
    await server.stop()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert backend.stores["alice"].mutations == []
    assert backend.opened[-1].closed


async def test_sasl_offer_is_what_both_listener_and_authenticator_allow(
    backend: MemoryBackend,
) -> None:
    listener = ListenerConfig(
        host="127.0.0.1", port=0, plaintext_auth=True, sasl_mechanisms=("PLAIN", "XOAUTH2")
    )
    config = Config(source="test", backend_type="memory", listeners=(listener,))
    services = Services(backend=backend, sasl_mechanisms=("PLAIN", "LOGIN"))  # e.g. mapped accounts
    server = Pop3Server(config, services)
    await server.start()
    try:
        reader, writer = await connect(server)
        writer.write(b"CAPA\r\nAUTH XOAUTH2 =\r\n")
        capa = await reader.readuntil(b"\r\n.\r\n")
        assert b"\r\nSASL PLAIN\r\n" in capa
        assert await reader.readline() == b"-ERR unsupported authentication mechanism\r\n"
        writer.close()
    finally:
        await server.stop()


async def test_client_that_stops_reading_is_closed_by_the_idle_timer(
    make_server: MakeServer, backend: MemoryBackend
) -> None:
    backend.stores["alice"].add(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 20000)  # 20 MB
    server: Pop3Server = await make_server(idle_timeout=1.0)
    _, writer = await connect(server)
    cast(
        asyncio.Transport, writer.transport
    ).pause_reading()  # never read: the server's writes back up
    writer.write(b"USER alice\r\nPASS secret\r\n" + b"RETR 4\r\n" * 5)
    for _ in range(100):
        if backend.opened and backend.opened[-1].closed:
            break
        await asyncio.sleep(0.1)
    assert backend.opened[-1].closed  # the session ended and released its mailbox
    assert backend.stores["alice"].mutations == []
    writer.close()


async def test_quit_answers_and_closes_before_a_slow_logout_ends(
    make_server: MakeServer,
    backend: MemoryBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upstream LOGOUT waits until the test has seen the client's connection end: a
    # bridge that held the client until LOGOUT finished never lets this test release it.
    logout = asyncio.Event()
    real_open = backend.open

    async def open_with_slow_logout(credentials: Credentials) -> MemoryMailbox:
        mailbox = await real_open(credentials)
        real_close = mailbox.close
        if len(backend.opened) > 1:
            return mailbox  # only the first session's LOGOUT is slow

        async def slow_close() -> None:
            await logout.wait()
            await real_close()

        monkeypatch.setattr(mailbox, "close", slow_close)
        return mailbox

    monkeypatch.setattr(backend, "open", open_with_slow_logout)
    server: Pop3Server = await make_server()
    reader, writer = await connect(server)
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
    data = await asyncio.wait_for(reader.read(), 10)  # read() returns at the server's close
    assert data.endswith(b"+OK message 1 deleted\r\n+OK bye\r\n")
    assert backend.stores["alice"].mutations == [("expunge", ("m1",))]
    # the lock is held until that LOGOUT ends (some servers store flags only then)
    reader2, writer2 = await connect(server)
    writer2.write(b"USER alice\r\nPASS secret\r\n")
    assert (await reader2.readline()).startswith(b"+OK")
    assert (await asyncio.wait_for(reader2.readline(), 10)).startswith(b"-ERR [IN-USE]")
    logout.set()
    for _ in range(200):  # the first connection's LOGOUT and release finish in the background
        writer2.write(b"PASS secret\r\n")
        reply = await asyncio.wait_for(reader2.readline(), 10)
        if not reply.startswith(b"-ERR"):
            break
        writer2.write(b"USER alice\r\n")
        await reader2.readline()
        await asyncio.sleep(0.05)
    assert reply.startswith(b"+OK maildrop has 2 messages")
    writer.close()
    writer2.close()
