"""The pre-login deadline over real sockets: hundreds of clients that never log in are cut.

A connection must log in within `login_timeout` of its connect; silence does not extend it,
and neither does a stream of commands (CAPA, USER, NOOP refused in AUTHORIZATION). A session
that logged in is then only subject to the idle timer, so it survives the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, ServerConfig, parse_config
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy

SILENT, CHATTY = 300, 200


@pytest.fixture
async def server() -> AsyncIterator[Pop3Server]:
    backend = MemoryBackend()
    backend.user("alice", "secret", b"Subject: hi\r\n\r\nhello\r\n")
    throttle = ThrottlePolicy(base_delay=0, max_connections_per_address=2000)
    config = Config(
        source="t", backend_type="memory",
        listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
        server=ServerConfig(login_timeout=1.0, max_connections=2000, throttle=throttle),
    )  # fmt: skip
    servers = Servers()
    yield await servers.start(config, backend)
    await servers.stop()


async def silent(server: Pop3Server) -> bytes:
    """Connect, read the greeting, say nothing; returns what came before the close."""
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    try:
        await reader.readline()
        return await reader.read()
    finally:
        writer.close()


async def chatty(server: Pop3Server, stop: asyncio.Event) -> bool:
    """Keep sending commands without logging in; True once the server closed on us."""
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    try:
        await reader.readline()
        while not stop.is_set():
            writer.write(b"CAPA\r\nUSER nobody\r\nNOOP\r\n")
            await writer.drain()
            if not await reader.readuntil(b".\r\n"):
                return True
            await reader.readline(), await reader.readline()
            await asyncio.sleep(0.2)
        return False
    except (asyncio.IncompleteReadError, ConnectionError):
        return True
    finally:
        writer.close()


async def test_clients_that_never_log_in_are_cut_and_a_logged_in_one_is_not(
    server: Pop3Server,
) -> None:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    await reader.readline()
    writer.write(b"USER alice\r\nPASS secret\r\n")
    await reader.readline()
    assert (await reader.readline()).startswith(b"+OK maildrop")
    stop = asyncio.Event()
    async with asyncio.timeout(60):  # far beyond the deadline, far below the idle timer
        quiet = [asyncio.create_task(silent(server)) for _ in range(SILENT)]
        talking = [asyncio.create_task(chatty(server, stop)) for _ in range(CHATTY)]
        assert await asyncio.gather(*quiet) == [b""] * SILENT  # closed without a word
        assert all(await asyncio.gather(*talking))
    writer.write(b"STAT\r\n")  # the logged-in session outlived every one of them
    assert (await reader.readline()).startswith(b"+OK 1 ")
    writer.write(b"QUIT\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()


def test_login_timeout_is_configured_in_server() -> None:
    listeners = [{"port": 1110}]
    backend = {"type": "imap", "host": "imap.example.net"}
    config = parse_config({"listeners": listeners, "backend": backend}, source="c.toml")
    assert config.server.login_timeout == 60
    config = parse_config(
        {"listeners": listeners, "backend": backend, "server": {"login_timeout": 15}},
        source="c.toml",
    )
    assert config.server.login_timeout == 15
