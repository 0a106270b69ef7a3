"""Real POP3 clients through the bridge to a real Courier IMAP and a real GNU Mailutils imap4d,
the bridge talking to each over verified TLS: poplib, curl, fetchmail, mpop and getmail6 each
retrieve every message byte for byte, and their deletions reach the IMAP side only at QUIT.

Courier has UIDPLUS, so a deletion is a `UID EXPUNGE`; imap4d has not, so a deleted message
stays upstream flagged `\\Deleted` (never a plain EXPUNGE) and no later session lists it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit import clients
from devkit.clients import Pop3Target, strip_client_additions
from devkit.dovecot import wire_form
from devkit.imap_peer import ImapPeer
from popbridge.frontend.server import Pop3Server
from tests.conftest import IMAP4D_USERS, StartBridge
from tests.e2e.client_checks import SPECIAL

pytestmark = [pytest.mark.clients]

USERS = {"courier": "alice", "imap4d": next(u for u in IMAP4D_USERS if u.startswith("alice@"))}
# What stays upstream after a POP3 DELE and QUIT: nothing, or the message flagged \Deleted.
EXPUNGES = {"courier": True, "imap4d": False}
LOGOUT_WAIT = 10.0  # seconds the bridge's LOGOUT after QUIT may take to reach imap4d


@pytest.fixture(
    params=[
        pytest.param("courier", marks=pytest.mark.courier),
        pytest.param("imap4d", marks=pytest.mark.mailutils),
    ]
)
def peer(request: pytest.FixtureRequest) -> ImapPeer:
    """The server (emptied for alice): each test runs against both."""
    server: ImapPeer = request.getfixturevalue(request.param)
    server.reset_mailbox(USERS[server.name])
    return server


@pytest.fixture
def expected(peer: ImapPeer) -> list[bytes]:
    """alice's mailbox: generated messages plus awkward ones, in the CRLF form IMAP serves."""
    generated = peer.seed_generated(USERS[peer.name], 6, 3000)
    peer.seed(USERS[peer.name], SPECIAL)
    return generated + [wire_form(m) for m in SPECIAL]


async def start(bridge: StartBridge, peer: ImapPeer) -> Pop3Server:
    """A bridge whose upstream is `peer`'s IMAPS port, verified with its test CA."""
    ca_file = str(peer.pki.ca_file)
    return await bridge(host="localhost", port=peer.imaps_port, tls="implicit", ca_file=ca_file)


def target(server: Pop3Server, peer: ImapPeer) -> Pop3Target:
    host, port = server.addresses[0]
    user = USERS[peer.name]
    return Pop3Target(host, port, user, peer.users[user])


def kept(peer: ImapPeer) -> int:
    """How many of alice's messages a later session still sees (not flagged \\Deleted)."""
    return sum("\\Deleted" not in flags for flags in peer.uids(USERS[peer.name]).values())


async def after_logout(peer: ImapPeer, done: Callable[[dict[int, set[str]]], bool]) -> None:
    """Wait until alice's messages satisfy `done`. imap4d writes flag changes to the Maildir
    when the session ends, and the bridge logs out after QUIT has been answered; the other
    servers are done by then."""
    deadline = time.monotonic() + (LOGOUT_WAIT if peer.name == "imap4d" else 0)
    while True:
        stored = await asyncio.to_thread(peer.uids, USERS[peer.name])
        if done(stored) or time.monotonic() > deadline:
            assert done(stored), stored
            return
        await asyncio.sleep(0.05)  # the bridge, in this event loop, is logging out


async def assert_deleted_as_the_server_allows(peer: ImapPeer, count: int) -> None:
    if EXPUNGES[peer.name]:
        await after_logout(peer, lambda stored: stored == {})
    else:
        await after_logout(
            peer,
            lambda stored: (
                len(stored) == count and all("\\Deleted" in flags for flags in stored.values())
            ),
        )


async def test_poplib_retrieves_all_then_deletes(
    bridge: StartBridge, peer: ImapPeer, expected: list[bytes]
) -> None:
    server = await start(bridge, peer)
    pop3 = target(server, peer)
    assert await asyncio.to_thread(clients.poplib_fetch_all, pop3, delete=False) == expected
    assert kept(peer) == len(expected)
    assert await asyncio.to_thread(clients.poplib_fetch_all, pop3, delete=True) == expected
    await assert_deleted_as_the_server_allows(peer, len(expected))
    assert await asyncio.to_thread(clients.poplib_fetch_all, pop3, delete=False) == []


async def test_curl_lists_retrieves_and_deletes_at_quit(
    bridge: StartBridge, peer: ImapPeer, expected: list[bytes], tmp_path: Path
) -> None:
    server = await start(bridge, peer)
    pop3 = target(server, peer)
    listing = await asyncio.to_thread(clients.curl_list, pop3)
    assert listing.split() == [str(x) for n, m in enumerate(expected, 1) for x in (n, len(m))]
    retrieved = await asyncio.to_thread(clients.curl_retr_all, pop3, len(expected), tmp_path)
    assert retrieved == expected
    uidl = await asyncio.to_thread(clients.curl_command, pop3, "UIDL")
    assert len(set(uidl.split()[1::2])) == len(expected)
    await asyncio.to_thread(clients.curl_command, pop3, "DELE 1")
    left = len(expected) - 1
    await after_logout(
        peer, lambda stored: sum("\\Deleted" not in f for f in stored.values()) == left
    )


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
async def test_fetchmail(
    bridge: StartBridge, peer: ImapPeer, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await start(bridge, peer)
    pop3 = target(server, peer)
    delivered = await asyncio.to_thread(clients.run_fetchmail, pop3, tmp_path, keep=keep)
    assert [strip_client_additions("fetchmail", m) for m in delivered] == expected
    if keep:
        stored = peer.uids(USERS[peer.name])
        assert len(stored) == len(expected)
        assert all("\\Seen" not in flags for flags in stored.values())  # RETR sets no \Seen
        assert await asyncio.to_thread(clients.run_fetchmail, pop3, tmp_path, keep=keep) == []
    else:
        await assert_deleted_as_the_server_allows(peer, len(expected))


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
async def test_mpop_pipelining(
    bridge: StartBridge, peer: ImapPeer, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await start(bridge, peer)
    pop3 = target(server, peer)
    delivered = await asyncio.to_thread(clients.run_mpop, pop3, tmp_path, keep=keep)
    assert [strip_client_additions("mpop", m) for m in delivered] == expected
    if keep:
        assert kept(peer) == len(expected)
        assert await asyncio.to_thread(clients.run_mpop, pop3, tmp_path, keep=keep) == []
    else:
        await assert_deleted_as_the_server_allows(peer, len(expected))


async def test_getmail_delete(
    bridge: StartBridge, peer: ImapPeer, expected: list[bytes], tmp_path: Path
) -> None:
    server = await start(bridge, peer)
    pop3 = target(server, peer)
    delivered = await asyncio.to_thread(clients.run_getmail, pop3, tmp_path, delete=True)
    assert [strip_client_additions("getmail", m) for m in delivered] == expected
    await assert_deleted_as_the_server_allows(peer, len(expected))
