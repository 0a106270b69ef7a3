"""`ImapMailbox.measure` against a scripted server that answers the last-octets reads well,
badly, or not at all: a size is exact, or left out for RETR to measure, never guessed.

RFC 1939 sections 3 and 11: RETR ends an unterminated last line with CRLF, which IMAP's
RFC822.SIZE does not count; the listing says so (`exact=False`) and `measure` reads each
message's last octets (`backends.imap.tails`) in bands of similar sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from backends.imap import create
from backends.imap.mailbox import ImapMailbox
from devkit.fake_imap import FakeImap, Handler, reply
from popbridge.contract import Credentials
from popbridge.errors import BackendUnavailable
from popbridge.store.listings import MemoryListings

ALICE = Credentials("alice", "secret")
BODIES = {
    5: b"Subject: open\r\n\r\nno line end",  # RETR sends 2 more octets
    6: b"Subject: closed\r\n\r\nline end\r\n",  # exact as listed
    9: b"Subject: big\r\n\r\n" + b"x" * 3000,  # another band (sizes over 512 apart)
}
Tail = Callable[[int, bytes, int, int], str]  # uid, body, start, length -> the response


def server_replies(tail: Tail | None = None) -> dict[str, Handler]:
    """A folder of BODIES; `tail` shapes the answer to a last-octets read."""

    def answer(uid: int, body: bytes, start: int, length: int) -> str:
        piece = body[start : start + length]
        return f"* 1 FETCH (UID {uid} BODY[]<{start}> {{{len(piece)}}}\r\n{piece.decode()})"

    def fetch(_server: FakeImap, tag: str, args: str) -> bytes:
        if "RFC822.SIZE" in args:
            lines = [f"* {n} FETCH (UID {u} RFC822.SIZE {len(b)})" for n, (u, b) in
                     enumerate(BODIES.items(), 1)]  # fmt: skip
            return ("\r\n".join([*lines, f"{tag} OK"]) + "\r\n").encode()
        uids, _, section = args.partition(" ")
        start, length = map(int, section.split("<")[1].split(">")[0].split("."))
        lines = [(tail or answer)(uid, BODIES[uid], start, length) for uid in expanded(uids)]
        return ("\r\n".join([*lines, f"{tag} OK"]) + "\r\n").encode()

    return {"UID FETCH": fetch, "UID SEARCH": reply("* SEARCH 5 6 9", "{tag} OK")}


def expanded(uids: str) -> list[int]:
    """The UIDs of an RFC 3501 sequence set of numbers and ranges."""
    found: list[int] = []
    for part in uids.split(","):
        low, _, high = part.partition(":")
        found += range(int(low), int(high or low) + 1)
    return found


async def opened(server: FakeImap, **overrides: Any) -> ImapMailbox:
    address = {"host": "127.0.0.1", "port": server.port, "tls": "none", "timeout": 2}
    mailbox = await create({"type": "imap", **address, **overrides}, source="t").open(ALICE)
    assert isinstance(mailbox, ImapMailbox)
    return mailbox


async def measured(replies: dict[str, Handler]) -> tuple[dict[str, int], list[str]]:
    """What `measure` finds for every listed message, and the listing's inexact ones."""
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        try:
            listed = await mailbox.list()
            unsure = [m.identity for m in listed if not m.exact]
            return await mailbox.measure(unsure), unsure
        finally:
            await mailbox.close()


def identity(uid: int) -> str:
    return f"42.{uid}"  # the fake's UIDVALIDITY


async def test_every_band_is_measured() -> None:
    sizes, unsure = await measured(server_replies())
    assert unsure == [identity(5), identity(6), identity(9)]
    assert sizes == {identity(5): len(BODIES[5]) + 2, identity(6): len(BODIES[6]),
                     identity(9): len(BODIES[9]) + 2}  # fmt: skip


async def test_a_refused_read_leaves_the_listed_sizes_standing() -> None:
    replies = server_replies()
    listing = replies["UID FETCH"]

    def refuse(server: FakeImap, tag: str, args: str) -> bytes | None:
        if "RFC822.SIZE" in args:
            return listing(server, tag, args)
        return f"{tag} NO [UNAVAILABLE] not now\r\n".encode()

    replies["UID FETCH"] = refuse
    sizes, _ = await measured(replies)
    assert sizes == {}


@pytest.mark.parametrize(
    "tail",
    [
        # data shorter than the listed size says: the message changed or the server lies
        lambda uid, body, start, length: f"* 1 FETCH (UID {uid} BODY[]<{start}> {{1}}\r\nx)",
        # another message's answer, and one without a UID
        lambda uid, body, start, length: f"* 1 FETCH (UID 77 BODY[]<{start}> {{2}}\r\nab)",
        lambda uid, body, start, length: f"* 1 FETCH (BODY[]<{start}> {{2}}\r\nab)",
        # flags only (another client's change), and NIL for an expunged message
        lambda uid, body, start, length: f"* 1 FETCH (UID {uid} FLAGS (\\Seen))",
        lambda uid, body, start, length: f"* 1 FETCH (UID {uid} BODY[]<{start}> NIL)",
    ],
    ids=["short", "other-uid", "no-uid", "flags-only", "nil"],
)
async def test_an_answer_that_does_not_fit_is_left_out(tail: Tail) -> None:
    sizes, _ = await measured(server_replies(tail))
    assert sizes == {}


async def test_a_server_that_stops_answering_is_unavailable_within_the_deadline() -> None:
    replies = server_replies()
    listing = replies["UID FETCH"]

    def stall(server: FakeImap, tag: str, args: str) -> bytes | None:
        return listing(server, tag, args) if "RFC822.SIZE" in args else None  # never answers

    replies["UID FETCH"] = stall
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server, timeout=0.5)
        listed = await mailbox.list()
        with pytest.raises(BackendUnavailable):
            await mailbox.measure([m.identity for m in listed])
        await mailbox.close()


async def test_measured_sizes_are_remembered_for_the_next_session() -> None:
    memories = MemoryListings()
    async with FakeImap(replies=server_replies()) as server:
        first = await opened(server)
        listed = await first.list(memory=memories.for_account("alice"))
        await first.measure([m.identity for m in listed])
        await first.close()
        again = await opened(server)
        relisted = await again.list(memory=memories.for_account("alice"))
        await again.close()
    assert [(m.size, m.exact) for m in relisted] == [
        (len(BODIES[5]) + 2, True), (len(BODIES[6]), True), (len(BODIES[9]) + 2, True)
    ]  # fmt: skip
