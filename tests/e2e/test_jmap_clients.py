"""Real POP3 clients through the bridge to a real Cyrus over JMAP: poplib, curl, fetchmail,
mpop and getmail6 each retrieve every message byte for byte, and their deletions reach the
JMAP side (seen over IMAP) only through QUIT.

This module owns the JMAP counterpart of `tests/e2e/test_clients.py`: one Cyrus for the
module (`devkit.cyrus`), and bridges started in-process with the JMAP backend found
through the backend registry, exactly as `popbridge serve` finds it.
"""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import clients
from devkit.clients import Pop3Target
from devkit.cyrus import Cyrus, start_cyrus
from devkit.dovecot import generate_message, wire_form
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, MaildropConfig, ServerConfig
from popbridge.contract import Disposition, DispositionKind, load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy
from tests.e2e.client_checks import (
    SPECIAL,
    curl_lists_retrieves_and_uidls,
    fetchmail,
    getmail,
    mpop,
)

pytestmark = [pytest.mark.clients, pytest.mark.cyrus]

USER, PASSWORD = "alice", "secret"

StartBridge = Callable[..., Awaitable[Pop3Server]]
NO_DELAY = ThrottlePolicy(base_delay=0)  # no pause after a failed login


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = start_cyrus({USER: PASSWORD})
    yield server
    server.stop()


@pytest.fixture
def expected(cyrus: Cyrus) -> list[bytes]:
    """alice's INBOX: generated messages plus awkward ones, in the CRLF form JMAP serves."""
    cyrus.reset_mailbox(USER)
    messages = [wire_form(generate_message(n, 3000)) for n in range(1, 9)]
    messages += [wire_form(m) for m in SPECIAL]
    cyrus.seed(USER, messages)
    return messages


@pytest.fixture
async def bridge(cyrus: Cyrus) -> AsyncIterator[StartBridge]:
    """Start bridges on free ports in front of Cyrus' JMAP; all stop when the test ends."""
    started = Servers()

    async def start(*, maildrop: MaildropConfig | None = None, **backend: Any) -> Pop3Server:
        settings = {"type": "jmap", "url": cyrus.http_url, "timeout": 10, **backend}
        config = Config(
            source="test",
            backend_type="jmap",
            backend_settings=settings,
            listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
            server=ServerConfig(throttle=NO_DELAY),
            maildrop=maildrop or MaildropConfig(),
        )
        return await started.start(config, load_backend("jmap", settings, source="test"))

    yield start
    await started.stop()


def target(server: Pop3Server) -> Pop3Target:
    host, port = server.addresses[0]
    return Pop3Target(host, port, USER, PASSWORD)


def remaining(cyrus: Cyrus, folder: str = "INBOX") -> list[str]:
    return [m.subject for m in cyrus.stored(USER, folder)]


async def test_poplib_retrieves_all_then_deletes(
    bridge: StartBridge, cyrus: Cyrus, expected: list[bytes]
) -> None:
    server = await bridge()
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=False)
    assert fetched == expected
    assert not any("\\Seen" in m.flags for m in cyrus.stored(USER))  # reading set no $seen
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=True)
    assert fetched == expected
    assert remaining(cyrus) == []


def told_and_sent(server: Pop3Server) -> tuple[int, int, int]:
    """poplib: STAT's octets, LIST 1's size and the octets RETR 1 sent (RFC 1939 §11)."""
    host, port = server.addresses[0]
    client = poplib.POP3(host, port, timeout=60)
    try:
        client.user(USER)
        client.pass_(PASSWORD)
        _count, total = client.stat()
        scan = client.list(1)  # "+OK 1 <octets>"
        assert isinstance(scan, bytes)
        listed = int(scan.split()[2])
        _reply, _lines, octets = client.retr(1)
        return total, listed, octets
    finally:
        client.quit()


async def test_a_large_message_without_a_final_line_end_is_told_as_sent(
    bridge: StartBridge, cyrus: Cyrus
) -> None:
    # Cyrus ignores Range: the size is measured by downloading all 2.3 MB, not guessed
    cyrus.reset_mailbox(USER)
    raw = b"Subject: large\r\n\r\n" + (b"x" * 76 + b"\r\n") * 30_000 + b"no line end"
    cyrus.seed(USER, [raw])
    server = await bridge()
    assert await asyncio.to_thread(told_and_sent, server) == (len(raw) + 2,) * 3


async def test_curl_lists_retrieves_and_uidls(
    bridge: StartBridge, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    await curl_lists_retrieves_and_uidls(target(server), expected, tmp_path)


async def test_curl_dele_moves_to_trash_at_its_quit(
    bridge: StartBridge, cyrus: Cyrus, expected: list[bytes]
) -> None:
    server = await bridge(maildrop=MaildropConfig(Disposition(DispositionKind.TRASH)))
    await asyncio.to_thread(clients.curl_command, target(server), "DELE 1")
    assert len(remaining(cyrus)) == len(expected) - 1
    assert remaining(cyrus, "Trash") == ["test message 1"]


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
async def test_fetchmail(
    bridge: StartBridge, cyrus: Cyrus, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await fetchmail(target(server), tmp_path, keep=keep) == expected
    stored = cyrus.stored(USER)
    assert len(stored) == (len(expected) if keep else 0)
    assert all("\\Seen" not in m.flags for m in stored)


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
async def test_mpop_pipelining(
    bridge: StartBridge, cyrus: Cyrus, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await mpop(target(server), tmp_path, keep=keep) == expected
    assert len(remaining(cyrus)) == (len(expected) if keep else 0)


async def test_getmail_delete(
    bridge: StartBridge, cyrus: Cyrus, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    assert await getmail(target(server), tmp_path, delete=True) == expected
    assert remaining(cyrus) == []
