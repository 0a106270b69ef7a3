"""Warm upstream connections against a real Dovecot over verified IMAPS.

They are made only while logins overlap, each is handed to one login, which authenticates on
it with its own credentials (a wrong password still fails), one the server side lost is never
handed out, unused ones are dropped, and `warm_connections = 0` turns them off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from backends.imap.backend import ImapBackend
from backends.imap.config import ImapSettings, parse_settings
from backends.imap.connection import Connection, connect
from backends.imap.mailbox import ImapMailbox
from backends.imap.warm import WarmConnections
from devkit.dovecot import Dovecot
from popbridge.contract import Credentials, Mailbox
from popbridge.errors import AuthFailed, ConfigError
from tests.conftest import USERS

pytestmark = pytest.mark.dovecot

BOUND = 10.0  # seconds: a bound against hanging, never a timing assertion


class Counted:
    """`connect`, counting the connections made."""

    def __init__(self) -> None:
        self.made = 0

    async def __call__(self, settings: ImapSettings) -> Connection:
        self.made += 1
        return await connect(settings)


def backend(
    dovecot: Dovecot, counted: Counted, *, lifetime: float = 60.0, **extra: Any
) -> ImapBackend:
    settings = {
        "host": dovecot.host, "port": dovecot.imaps_port, "tls": "implicit",
        "ca_file": str(dovecot.pki.ca_file), "timeout": 10, **extra,
    }  # fmt: skip
    found = ImapBackend(parse_settings(settings, source="test"))
    size = found.settings.warm_connections
    found.warm = WarmConnections(found.settings, counted, size=size, lifetime=lifetime)
    return found


def login(user: str, secret: str | None = None) -> Credentials:
    return Credentials(user=user, secret=USERS[user] if secret is None else secret)


async def until(condition: Any) -> None:
    for _ in range(int(BOUND / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def close_all(mailboxes: Sequence[Mailbox]) -> None:
    await asyncio.gather(*(mailbox.close() for mailbox in mailboxes))


@contextlib.asynccontextmanager
async def overlapping(
    bridge: ImapBackend, users: Sequence[str] = ("alice", "bob")
) -> AsyncIterator[list[Mailbox]]:
    """Logins of `users` at once (a storm: warm connections get made); on exit every
    mailbox opened is closed (the test may add its own) and the warm ones are dropped."""
    opened: list[Mailbox] = list(await asyncio.gather(*(bridge.open(login(u)) for u in users)))
    try:
        yield opened
    finally:
        await close_all(opened)
        bridge.warm.close()


async def test_overlapping_logins_warm_connections_each_login_authenticates(
    dovecot: Dovecot,
) -> None:
    for user in USERS:
        dovecot.reset_mailbox(user)
    dovecot.append("carol", b"Subject: one\r\n\r\nfor carol\r\n")
    dovecot.append("carol", b"Subject: two\r\n\r\nfor carol\r\n")
    counted = Counted()
    bridge = backend(dovecot, counted, warm_connections=3)
    async with overlapping(bridge) as opened:
        await until(lambda: bridge.warm.ready == 3)
        assert counted.made == 2 + 3
        warm = {id(connection) for connection, _ in bridge.warm._ready}
        # a wrong password fails on a warm connection exactly as on a new one
        with pytest.raises(AuthFailed):
            await bridge.open(login("carol", "not her password"))
        carol = await bridge.open(login("carol"))
        opened.append(carol)
        assert isinstance(carol, ImapMailbox)
        assert id(carol._connection) in warm
        # logged in as carol on it: her folder, her two messages
        assert len(await carol.list()) == 2


async def test_a_lone_login_makes_one_connection(dovecot: Dovecot) -> None:
    counted = Counted()
    bridge = backend(dovecot, counted, warm_connections=4)
    for _ in range(3):
        mailbox = await bridge.open(login("bob"))
        await mailbox.close()
    assert counted.made == 3
    assert bridge.warm.ready == 0


async def test_a_lost_warm_connection_is_never_handed_out(dovecot: Dovecot) -> None:
    counted = Counted()
    bridge = backend(dovecot, counted, warm_connections=2)
    async with overlapping(bridge) as opened:
        await until(lambda: bridge.warm.ready == 2)
        for connection, _ in list(bridge.warm._ready):
            connection.transport.abort()  # lost while waiting, as when the server closes it
        await until(lambda: all(not c.usable for c, _ in bridge.warm._ready))
        made = counted.made
        opened.append(await bridge.open(login("carol")))
        assert counted.made > made  # it connected anew


async def test_unused_warm_connections_are_dropped(dovecot: Dovecot) -> None:
    counted = Counted()
    bridge = backend(dovecot, counted, lifetime=0.05, warm_connections=2)
    async with overlapping(bridge):
        await until(lambda: counted.made == 4 and not bridge.warm._warming)
        await until(lambda: bridge.warm.ready == 0)


async def test_zero_turns_warm_connections_off(dovecot: Dovecot) -> None:
    counted = Counted()
    bridge = backend(dovecot, counted, warm_connections=0)
    opened = list(await asyncio.gather(*(bridge.open(login(u)) for u in USERS)))
    await close_all(opened)
    assert counted.made == len(USERS)
    assert bridge.warm.ready == 0


def test_warm_connections_setting() -> None:
    base = {"host": "127.0.0.1", "tls": "none"}
    assert parse_settings(base, source="t").warm_connections == 0
    assert parse_settings({**base, "warm_connections": 8}, source="t").warm_connections == 8
    with pytest.raises(ConfigError, match="warm_connections"):
        parse_settings({**base, "warm_connections": -1}, source="t")
