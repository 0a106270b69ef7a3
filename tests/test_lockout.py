"""The lockout holds under concurrency: hundreds of wrong passwords at once, real sockets.

Each test starts a bridge with the real IMAP backend in front of a slow IMAP server that
refuses every login and counts them, then sends hundreds of concurrent POP3 logins with
wrong passwords. However they race, no more than the configured number of failures may
reach the upstream for one user, or from one address; with the PostgreSQL store the same
holds for two bridge instances sharing one database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.contract import load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.session.logingate import LoginGate
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle, ThrottlePolicy
from popbridge.store.failures import FailureLedger
from popbridge.store.postgres import open_postgres_store

ATTEMPTS = 300
LIMIT = 10


class SlowRefusingImap:
    """An IMAP server that answers every LOGIN `NO`, after `delay` seconds, and counts them."""

    def __init__(self, delay: float = 0.2) -> None:
        self.delay = delay
        self.logins = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SlowRefusingImap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1] slow server ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode(errors="replace").partition(" ")
                verb = rest.split(" ", 1)[0].strip().upper()
                if verb == "LOGIN":
                    self.logins += 1
                    await asyncio.sleep(self.delay)
                    writer.write(f"{tag} NO [AUTHENTICATIONFAILED] wrong\r\n".encode())
                elif verb == "CAPABILITY":
                    writer.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                elif verb == "LOGOUT":
                    writer.write(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                else:
                    writer.write(f"{tag} BAD unexpected\r\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


Start = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture
async def bridges() -> AsyncIterator[Start]:
    started: list[Pop3Server] = []

    async def start(
        upstream: SlowRefusingImap, policy: ThrottlePolicy, ledger: FailureLedger | None = None
    ) -> Pop3Server:
        settings: dict[str, Any] = {
            "type": "imap", "host": "127.0.0.1", "port": upstream.port, "tls": "none",
            "timeout": 30,
        }  # fmt: skip
        server = ServerConfig(max_connections=2 * ATTEMPTS, throttle=policy)
        listener = ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True)
        config = Config(source="t", listeners=(listener,), backend_type="imap",
                        backend_settings=settings, server=server)  # fmt: skip
        services = Services(
            backend=load_backend("imap", settings, source="t"),
            throttle=Throttle(policy, ledger=ledger),
            logins=LoginGate(64, floor=64),  # many at once: the race the lockout must survive
        )
        bridge = Pop3Server(config, services)
        await bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        await bridge.stop()


def policy(**limits: int) -> ThrottlePolicy:
    return ThrottlePolicy(base_delay=0, max_connections_per_address=2 * ATTEMPTS, **limits)


async def wrong_login(bridge: Pop3Server, user: str, n: int) -> bytes:
    """One client: greeting, USER, PASS with a wrong password; returns the PASS reply."""
    reader, writer = await asyncio.open_connection(*bridge.addresses[0])
    try:
        await reader.readline()
        writer.write(f"USER {user}\r\nPASS wrong-{n}\r\n".encode())
        await reader.readline()
        return await reader.readline()
    finally:
        writer.close()


async def storm(bridges: list[Pop3Server], users: Callable[[int], str]) -> list[bytes]:
    async with asyncio.timeout(120):
        return await asyncio.gather(
            *(wrong_login(bridges[n % len(bridges)], users(n), n) for n in range(ATTEMPTS))
        )


async def test_concurrent_wrong_passwords_for_one_user_stop_at_the_limit(
    bridges: Start,
) -> None:
    async with SlowRefusingImap() as upstream:
        bridge = await bridges(upstream, policy(max_failures_per_user=LIMIT))
        replies = await storm([bridge], lambda n: "victim")
    assert all(reply.startswith(b"-ERR [") for reply in replies), set(replies)
    assert 0 < upstream.logins <= LIMIT
    locked = b"-ERR [AUTH] too many failed logins, account temporarily locked\r\n"
    assert replies.count(locked) >= ATTEMPTS - LIMIT


async def test_concurrent_wrong_passwords_from_one_address_stop_at_the_limit(
    bridges: Start,
) -> None:
    async with SlowRefusingImap() as upstream:
        bridge = await bridges(upstream, policy(max_failures_per_address=LIMIT))
        replies = await storm([bridge], lambda n: f"user{n}")
    assert all(reply.startswith(b"-ERR [") for reply in replies), set(replies)
    assert 0 < upstream.logins <= LIMIT


async def test_two_instances_sharing_postgresql_stop_at_the_limit_together(
    bridges: Start,
    postgres: Postgres,  # noqa: F811
) -> None:
    database = await create_database(postgres)
    stores = [await open_postgres_store(postgres.dsn(database)) for _ in range(2)]
    try:
        async with SlowRefusingImap() as upstream:
            limits = policy(max_failures_per_user=LIMIT)
            pair = [await bridges(upstream, limits, store.failures) for store in stores]
            replies = await storm(pair, lambda n: "victim")
            assert 0 < upstream.logins <= LIMIT
            assert all(reply.startswith(b"-ERR [") for reply in replies), set(replies)
            # and the lockout is shared: a third login on either instance is refused at once
            before = upstream.logins
            assert (await wrong_login(pair[1], "VICTIM", 0)).startswith(b"-ERR [AUTH] too many")
            assert upstream.logins == before
    finally:
        for store in stores:
            await store.close()
        await drop_database(postgres, database)
