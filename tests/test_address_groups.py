"""Per-address limits over real sockets: clients in one network count as one client.

Every 127.0.0.0/8 address reaches the loopback interface, so connections from several
source addresses stand in for an attacker's many addresses in one network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy

FULL = b"-ERR [SYS/TEMP] too many connections from your address, try again later\r\n"


@pytest.fixture
async def server() -> AsyncIterator[Pop3Server]:
    backend = MemoryBackend()
    backend.user("alice", "secret")
    policy = ThrottlePolicy(base_delay=0, max_connections_per_address=2, ipv4_prefix=24)
    config = Config(
        source="t", backend_type="memory",
        listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
        server=ServerConfig(throttle=policy),
    )  # fmt: skip
    servers = Servers()
    yield await servers.start(config, backend)
    await servers.stop()


async def greeting(server: Pop3Server, source: str) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*server.addresses[0], local_addr=(source, 0))
    return await reader.readline(), writer


async def test_the_connection_cap_holds_for_a_whole_network(server: Pop3Server) -> None:
    first, a = await greeting(server, "127.0.9.2")
    second, b = await greeting(server, "127.0.9.3")
    third, c = await greeting(server, "127.0.9.4")  # another address, the same /24
    elsewhere, d = await greeting(server, "127.0.10.2")
    assert first.startswith(b"+OK") and second.startswith(b"+OK")
    assert third == FULL
    assert elsewhere.startswith(b"+OK")
    for writer in (a, b, c, d):
        writer.close()
