"""Real POP3 clients through the bridge to a real Dovecot: poplib, curl, fetchmail, mpop
and getmail6 each retrieve every message byte for byte, and their deletions reach the
IMAP side only through QUIT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devkit import clients
from devkit.clients import Pop3Target
from devkit.dovecot import Dovecot, wire_form
from popbridge.frontend.server import Pop3Server
from tests.conftest import StartBridge
from tests.e2e.client_checks import (
    SPECIAL,
    curl_lists_retrieves_and_uidls,
    fetchmail,
    getmail,
    mpop,
)

pytestmark = [pytest.mark.dovecot, pytest.mark.clients]


@pytest.fixture
def expected(mailbox: Dovecot) -> list[bytes]:
    """alice's mailbox: generated messages plus awkward ones, in the CRLF form IMAP serves."""
    generated = mailbox.seed_generated("alice", 8, 3000)
    mailbox.seed("alice", SPECIAL)
    return generated + [wire_form(m) for m in SPECIAL]


def target(server: Pop3Server) -> Pop3Target:
    host, port = server.addresses[0]
    return Pop3Target(host, port, "alice", "secret")


async def test_poplib_retrieves_all_then_deletes(
    bridge: StartBridge, mailbox: Dovecot, expected: list[bytes]
) -> None:
    server = await bridge()
    assert (
        await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=False) == expected
    )
    assert (
        await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=True) == expected
    )
    assert mailbox.uids("alice") == {}


async def test_curl_lists_and_retrieves_on_one_connection(
    bridge: StartBridge, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    await curl_lists_retrieves_and_uidls(target(server), expected, tmp_path)


async def test_curl_dele_is_applied_at_its_quit(
    bridge: StartBridge, mailbox: Dovecot, expected: list[bytes]
) -> None:
    server = await bridge()
    await asyncio.to_thread(clients.curl_command, target(server), "DELE 1")
    assert sorted(mailbox.uids("alice")) == list(range(2, len(expected) + 1))


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
async def test_fetchmail(
    bridge: StartBridge, mailbox: Dovecot, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await fetchmail(target(server), tmp_path, keep=keep) == expected
    remaining = mailbox.uids("alice")
    assert len(remaining) == (len(expected) if keep else 0)
    assert all("\\Seen" not in flags for flags in remaining.values())


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
async def test_mpop_pipelining(
    bridge: StartBridge, mailbox: Dovecot, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await mpop(target(server), tmp_path, keep=keep) == expected
    assert len(mailbox.uids("alice")) == (len(expected) if keep else 0)


async def test_getmail_delete(
    bridge: StartBridge, mailbox: Dovecot, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    assert await getmail(target(server), tmp_path, delete=True) == expected
    assert mailbox.uids("alice") == {}
