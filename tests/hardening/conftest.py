"""Fixtures of the hardening tests: a fault proxy in front of the shared Dovecot, and a bridge
behind it with short upstream deadlines, so every injected stall ends in seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devkit.dovecot import Dovecot
from devkit.faultproxy import FaultProxy
from tests.conftest import StartBridge
from tests.hardening.upstream import FETCH_CHUNK, seed

UPSTREAM_TIMEOUT = 2.0  # the backend `timeout`: how long an injected stall can hold a reply


@pytest.fixture
def seeded(mailbox: Dovecot) -> Dovecot:
    """alice's mailbox reset, with message 1 big and messages 2-5 small (UIDs 1-5)."""
    seed(mailbox)
    return mailbox


@pytest.fixture
async def proxy(dovecot: Dovecot) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared Dovecot's plain IMAP port, nothing armed."""
    instance = await FaultProxy(dovecot.host, dovecot.imap_port).start()
    yield instance
    await instance.close()


@pytest.fixture
async def faulty(bridge: StartBridge, proxy: FaultProxy) -> tuple[str, int]:
    """The address of a bridge whose upstream goes through `proxy`."""
    server = await bridge(
        port=proxy.port,
        timeout=UPSTREAM_TIMEOUT,
        connect_timeout=UPSTREAM_TIMEOUT,
        fetch_chunk=FETCH_CHUNK,
    )
    return server.addresses[0]
