"""Load and abuse: many connections, slowloris, a pipelined flood, and the connection caps.

Against in-process bridges over the in-memory backend (fast, exact), a bridge process for the
memory bound (its RSS is read from /proc), and one smaller run against a real Dovecot. Each
abuse runs while a well-behaved client is served; the tests assert that it is answered and
that nothing is lost, never how fast: every wait is a deadline against hangs only.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import Dovecot, free_port, generate_message, start_dovecot, wire_form
from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.pop3.wire import normalised_size
from popbridge.session.throttle import ThrottlePolicy
from tests.conftest import StartBridge
from tests.hardening.pop3client import Pop3Client, logged_in
from tests.hardening.processes import BridgeProcess, memory_usage

CONNECTIONS = 1000
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"
TOO_MANY = b"-ERR [SYS/TEMP] too many connections, try again later"
TOO_MANY_HERE = b"-ERR [SYS/TEMP] too many connections from your address, try again later"
Start = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start in-process bridges over a given in-memory backend; all stop at the end."""
    servers = Servers()

    async def start(backend: MemoryBackend, **server: Any) -> Pop3Server:
        server.setdefault("throttle", ThrottlePolicy(base_delay=0))
        config = Config(
            source="test",
            backend_type="memory",
            listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
            server=ServerConfig(**server),
        )
        return await servers.start(config, backend)

    yield start
    await servers.stop()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for both ends of every connection in this one process (RLIMIT_NOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * CONNECTIONS + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "hard limit too low"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def users(count: int, *messages: bytes) -> MemoryBackend:
    backend = MemoryBackend()
    for index in range(count):
        backend.user(f"user{index}", f"pw{index}", *messages)
    return backend


async def connect_all(address: tuple[str, int], count: int) -> list[Pop3Client]:
    """`count` open connections, connected a hundred at a time (the listen backlog)."""
    clients: list[Pop3Client] = []
    for start in range(0, count, 100):
        batch = min(100, count - start)
        clients += await asyncio.gather(*(Pop3Client.connect(address) for _ in range(batch)))
    return clients


async def test_thousand_concurrent_sessions(start: Start, many_files: None) -> None:
    backend = users(CONNECTIONS, MESSAGE)
    server = await start(
        backend,
        max_connections=CONNECTIONS,
        throttle=ThrottlePolicy(base_delay=0, max_connections_per_address=CONNECTIONS),
    )
    address = server.addresses[0]
    clients = await connect_all(address, CONNECTIONS)  # all open at once
    assert {client.greeting for client in clients} == {b"+OK popbridge ready"}
    extra = await Pop3Client.connect(address)  # the cap holds at exactly max_connections
    assert extra.greeting == TOO_MANY
    assert await extra.until_closed() == b""
    logins = await asyncio.gather(
        *(c.login(b"user%d" % i, b"pw%d" % i) for i, c in enumerate(clients))
    )
    octets = normalised_size(MESSAGE)
    assert set(logins) == {b"+OK maildrop has 1 messages (%d octets)" % octets}
    assert len(backend.opened) == CONNECTIONS  # one maildrop per user, all locked at once
    quits = await asyncio.gather(*(client.command(b"QUIT") for client in clients))
    assert set(quits) == {b"+OK bye"}
    await asyncio.gather(*(client.close() for client in clients))
    assert all(store.mutations == [] for store in backend.stores.values())


async def slowloris(client: Pop3Client, trickle: bool) -> bytes:
    """Send a byte at a time (or nothing), never a line end; what arrives until the close."""
    closed = asyncio.ensure_future(client.until_closed())
    for byte in b"USER alice" * 100 if trickle else b"":
        if closed.done():
            break
        client.writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    try:
        return await closed
    except ConnectionResetError:  # a byte sent just after the close drew a reset
        return b""


async def test_slowloris_is_closed_by_the_idle_timer_and_blocks_nobody(start: Start) -> None:
    backend = users(1, MESSAGE)
    server = await start(backend, idle_timeout=1.0)
    address = server.addresses[0]
    abusers = await connect_all(address, 40)
    attacks = [asyncio.ensure_future(slowloris(c, i % 4 != 0)) for i, c in enumerate(abusers)]
    client = await logged_in(address, b"user0", b"pw0")
    for _ in range(8):  # 2.4 s of work: each command resets this client's idle timer
        assert await client.command(b"NOOP") == b"+OK"
        await asyncio.sleep(0.3)
    assert await client.command(b"RETR 1") == b"+OK %d octets" % normalised_size(MESSAGE)
    assert await client.lines() == MESSAGE.split(b"\r\n")[:-1]
    assert await client.command(b"QUIT") == b"+OK bye"
    assert await asyncio.gather(*attacks) == [b""] * len(abusers)  # closed without a word


async def test_connection_caps_per_server_and_per_address(start: Start) -> None:
    backend = users(2, MESSAGE)
    policy = ThrottlePolicy(base_delay=0, max_connections_per_address=2)
    server = await start(backend, max_connections=4, throttle=policy)
    address = server.addresses[0]
    first = [await Pop3Client.connect(address) for _ in range(2)]
    refused = await Pop3Client.connect(address)
    assert refused.greeting == TOO_MANY_HERE
    assert await refused.until_closed() == b""
    others = [await Pop3Client.connect(address, source="127.0.0.2") for _ in range(2)]
    assert {c.greeting for c in first + others} == {b"+OK popbridge ready"}
    full = await Pop3Client.connect(address, source="127.0.0.3")
    assert full.greeting == TOO_MANY
    assert await full.until_closed() == b""
    assert (await first[0].login(b"user0", b"pw0")).startswith(b"+OK maildrop")
    assert await first[0].command(b"NOOP") == b"+OK"  # the admitted keep being served
    assert await first[0].command(b"QUIT") == b"+OK bye"
    await first[0].until_closed()
    for _ in range(100):  # a freed slot is usable again once the server has cleaned up
        again = await Pop3Client.connect(address)
        if again.greeting == b"+OK popbridge ready":
            break
        await asyncio.sleep(0.05)
    assert again.greeting == b"+OK popbridge ready"


FLOOD = 10_000
PADDED_RETR = b"RETR 1" + b" " * 1000 + b"\r\n"  # a valid 1008-octet command (trailing spaces)
MEMORY_BOUND = 50 * 1024 * 1024  # a correctness bound: unbounded buffering would need ~110 MB


async def unsent_when_stalled(writer: asyncio.StreamWriter) -> int:
    """The client's unsent bytes once they stop draining (the server stopped reading)."""
    last = -1
    for _ in range(300):
        await asyncio.sleep(0.1)
        unsent = writer.transport.get_write_buffer_size()
        if unsent == last:
            return unsent
        last = unsent
    raise TimeoutError("the client's send buffer never settled")


async def read_replies(client: Pop3Client, reply: bytes, count: int) -> None:
    """Read `count` copies of `reply` in pieces, comparing as they come (no 100 MB buffer)."""
    position, remaining = 0, len(reply) * count
    while remaining:
        chunk = await asyncio.wait_for(client.reader.read(min(remaining, 1 << 20)), 15)
        assert chunk, "connection closed before every reply arrived"
        expected = (reply[position:] + reply * (len(chunk) // len(reply) + 1))[: len(chunk)]
        assert chunk == expected
        position, remaining = (position + len(chunk)) % len(reply), remaining - len(chunk)


async def test_pipelined_flood_keeps_memory_bounded(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "tests.hardening.memory_server", "--port", str(port)]
    server = BridgeProcess(argv, port, tmp_path / "server.log")
    try:
        await server.start()
        client = await logged_in(server.address)
        client.writer.write(b"RETR 1\r\n")
        reply = await client.reader.readuntil(b"\r\n.\r\n")  # one reply, to know its bytes
        before = memory_usage(server.pid)["VmRSS"]
        client.writer.write(PADDED_RETR * FLOOD)  # 10 MB of commands, no reply read
        unsent = await unsent_when_stalled(client.writer)
        assert unsent > 0, "the server read 10 MB of commands it could not answer yet"
        probe = await logged_in(server.address, b"bob")  # others are still served
        assert await probe.command(b"NOOP") == b"+OK"
        assert await probe.command(b"QUIT") == b"+OK bye"
        await read_replies(client, reply, FLOOD)  # every reply, in order, once read
        assert await client.command(b"QUIT") == b"+OK bye"
        peak = memory_usage(server.pid)["VmHWM"]
        assert peak - before < MEMORY_BOUND, f"RSS grew by {(peak - before) >> 20} MB"
    finally:
        await server.stop()


CROWD = {f"user{i:02d}": f"pw {i:02d}" for i in range(20)}


@pytest.fixture
def crowd(tmp_path: Path) -> Iterator[Dovecot]:
    """A Dovecot of our own with twenty users, three 2,000-octet messages each."""
    dovecot = start_dovecot(tmp_path / "dovecot", CROWD)
    try:
        for user in CROWD:
            dovecot.seed_generated(user, 3, 2000)
        yield dovecot
    finally:
        dovecot.stop()


async def crowd_session(address: tuple[str, int], user: str) -> None:
    """Log in, STAT, RETR 2 (every byte checked), DELE 2, QUIT."""
    client = await logged_in(address, user.encode(), CROWD[user].encode())
    sizes = [len(wire_form(generate_message(i, 2000))) for i in (1, 2, 3)]
    assert await client.command(b"STAT") == b"+OK 3 %d" % sum(sizes)
    assert await client.command(b"RETR 2") == b"+OK %d octets" % sizes[1]
    assert await client.lines() == wire_form(generate_message(2, 2000)).split(b"\r\n")[:-1]
    assert await client.command(b"DELE 2") == b"+OK message 2 deleted"
    assert await client.command(b"QUIT") == b"+OK bye"


@pytest.mark.dovecot
async def test_concurrent_sessions_and_slowloris_on_a_real_dovecot(
    bridge: StartBridge, crowd: Dovecot
) -> None:
    server = await bridge(
        port=crowd.imap_port,
        server=ServerConfig(idle_timeout=1.0, throttle=ThrottlePolicy(base_delay=0)),
    )
    address = server.addresses[0]
    abusers = await connect_all(address, 10)
    attacks = [asyncio.ensure_future(slowloris(c, i % 2 == 0)) for i, c in enumerate(abusers)]
    await asyncio.gather(*(crowd_session(address, user) for user in CROWD))
    assert await asyncio.gather(*attacks) == [b""] * len(abusers)
    for user in CROWD:  # exactly the DELE'd message is gone, for every user
        assert set(await asyncio.to_thread(crowd.uids, user)) == {1, 3}
