"""The incremental IMAP listing against a scripted server that refuses or garbles its commands.

This module owns what real servers will not do on cue: a refused `CHANGEDSINCE`, an ESEARCH
answer naming more UIDs than the folder holds, a reply without the ESEARCH line, and a
HIGHESTMODSEQ that went back. Each must end in a full listing (never a wrong one), and the
remembered exact sizes must survive it without a single partial FETCH.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from backends.imap import create
from backends.imap.listing import Mark, Token
from devkit.fake_imap import FakeImap, reply
from popbridge.contract import Credentials, ListingMemory, ListingState, RemoteMessage
from popbridge.store.listings import MemoryListings

ALICE = Credentials("alice", "pw")
CAPABILITIES = "IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS CONDSTORE ESEARCH"
LISTED = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"


def examine(exists: int, uidnext: int, modseq: int) -> Any:
    return reply(
        f"* {exists} EXISTS", "* OK [UIDVALIDITY 42] v", f"* OK [UIDNEXT {uidnext}] n",
        f"* OK [HIGHESTMODSEQ {modseq}] m", "{tag} OK [READ-ONLY] done",
    )  # fmt: skip


def items(uids: list[int]) -> str:
    lines = [
        f'* {uid} FETCH (UID {uid} RFC822.SIZE 100 INTERNALDATE "01-Jan-2025 10:00:00 +0000" '
        f"BODY[HEADER.FIELDS (MESSAGE-ID)] {{2}}\r\n\r\n)"
        for uid in uids
    ]
    return "".join(f"{line}\r\n" for line in lines)


def remembered(count: int = 3) -> tuple[MemoryListings, ListingState]:
    """A memory of UIDs 1..count with exact sizes 102 (each lacked a final CRLF)."""
    listings = MemoryListings()
    when = datetime(2025, 1, 1, 10, tzinfo=UTC)
    messages = tuple(RemoteMessage(f"42.{uid}", 102, None, when) for uid in range(1, count + 1))
    token = Token(None, False, {"INBOX": Mark(42, 9, count + 1, count)}).dumps()
    return listings, ListingState(token, messages)


async def listed(server: FakeImap, listings: MemoryListings) -> list[RemoteMessage]:
    table = {"type": "imap", "host": "127.0.0.1", "port": server.port, "tls": "none",
             "timeout": 2}  # fmt: skip
    mailbox = await create(table, source="fake.toml").open(ALICE)
    try:
        return list(await mailbox.list(memory=listings.for_account("alice")))
    finally:
        await mailbox.close()


def fetches(refuse_changes: bool) -> Any:
    def handler(_server: FakeImap, tag: str, args: str) -> bytes:
        if "CHANGEDSINCE" in args:
            text = f"{tag} NO not today" if refuse_changes else f"{tag} OK done"
            return f"{text}\r\n".encode()
        assert LISTED in args and "BODY.PEEK[]<" not in args
        return f"{items([1, 2])}{tag} OK done\r\n".encode()

    return handler


@pytest.mark.parametrize(
    ("exists", "modseq", "search", "why"),
    [
        (3, 10, None, "refused CHANGEDSINCE"),
        (2, 9, '* ESEARCH (TAG "{tag}") UID ALL 1:50', "a set larger than EXISTS"),
        (2, 9, "* SEARCH 1 2", "no ESEARCH line"),
        (2, 8, None, "HIGHESTMODSEQ went back"),
    ],
)
async def test_what_the_shortcut_cannot_trust_means_a_full_listing(
    exists: int, modseq: int, search: str | None, why: str
) -> None:
    listings, state = remembered()
    await listings.for_account("alice").save(state)

    def searched(_server: FakeImap, tag: str, args: str) -> bytes:
        found = (search or "").replace("{tag}", tag) if "RETURN" in args else "* SEARCH 1 2"
        return f"{found}\r\n{tag} OK done\r\n".encode()

    replies = {"EXAMINE": examine(exists, 4, modseq), "UID FETCH": fetches(refuse_changes=True),
               "UID SEARCH": searched}  # fmt: skip
    async with FakeImap(capabilities=CAPABILITIES, replies=replies) as server:
        result = await listed(server, listings)
    assert result == list(state.messages[:2]), why  # remembered exact sizes, nothing probed
    assert server.verbs.count("UID SEARCH") >= 1  # the full listing's
    saved = await listings.for_account("alice").load()
    assert saved is not None and saved.messages == state.messages[:2]
    assert Token.loads(saved.token) == Token(None, False, {"INBOX": Mark(42, modseq, 4, exists)})


class Saves(MemoryListings):
    """Memory that counts what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[ListingState] = []

    def for_account(self, account: str) -> ListingMemory:
        inner = super().for_account(account)
        saved = self.saved

        class Counted:
            async def load(self) -> ListingState | None:
                return await inner.load()

            async def save(self, state: ListingState) -> None:
                saved.append(state)
                await inner.save(state)

        return Counted()


async def test_an_unchanged_folder_is_listed_from_memory_alone() -> None:
    listings, state = Saves(), remembered()[1]
    await listings.for_account("alice").save(state)
    async with FakeImap(capabilities=CAPABILITIES, replies={"EXAMINE": examine(3, 4, 9)}) as server:
        assert await listed(server, listings) == list(state.messages)
    assert listings.saved == [state]  # nothing written again: the store row stays as it is
    assert [v for v in server.verbs if v.startswith("UID")] == []
    assert "(CONDSTORE)" in server.received[1].decode()  # EXAMINE asked for HIGHESTMODSEQ
