"""The invariant every fault test ends with: nothing lost upstream, and the next session agrees.

`assert_nothing_lost` compares alice's IMAP UIDs and flags after a fault with those before it:
a message may be gone, or carry a new `\\Deleted`, only if the client DELE'd it *and* sent QUIT;
every other message must be there with exactly its old flags (RETR uses BODY.PEEK, so not even
`\\Seen` may appear). `assert_next_session_consistent` then logs in through the bridge and
checks that the listing is exactly the surviving, not-`\\Deleted` UIDs, in UID order, with
UIDLs `<UIDVALIDITY>.<UID>`: the same UIDLs the earlier sessions saw.
"""

from __future__ import annotations

import asyncio
import re

from devkit.dovecot import Dovecot, generate_message
from tests.hardening.pop3client import logged_in

Flags = dict[int, set[str]]
BIG = 100_000  # message 1: several partial fetches with fetch_chunk = 16384
SMALL = 600
FETCH_CHUNK = 16384


def seed(dovecot: Dovecot, count: int = 5, user: str = "alice") -> list[bytes]:
    """Message 1 is big, the others small; UIDs 1..count in a freshly reset mailbox."""
    messages = [generate_message(1, BIG)] + [
        generate_message(i, SMALL) for i in range(2, count + 1)
    ]
    dovecot.seed(user, messages)
    return messages


async def flags(dovecot: Dovecot, user: str = "alice") -> Flags:
    return await asyncio.to_thread(dovecot.uids, user)


def uidvalidity(dovecot: Dovecot, user: str = "alice") -> int:
    client = dovecot.imap(user)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.response("UIDVALIDITY")
    finally:
        client.logout()
    found = re.fullmatch(rb"[0-9]+", data[0] or b"")
    assert found is not None, data
    return int(found.group())


async def assert_nothing_lost(
    dovecot: Dovecot, before: Flags, deletable: set[int], user: str = "alice"
) -> Flags:
    """Only UIDs in `deletable` may have vanished or gained `\\Deleted`; returns the new state."""
    after = await flags(dovecot, user)
    assert set(after) <= set(before), f"new messages appeared: {set(after) - set(before)}"
    for uid, old in before.items():
        if uid in deletable:
            assert uid not in after or after[uid] in (old, old | {"\\Deleted"}), (uid, after)
        else:
            assert after.get(uid) == old, f"UID {uid} changed: {old} -> {after.get(uid)}"
    return after


async def assert_next_session_consistent(
    address: tuple[str, int], dovecot: Dovecot, after: Flags, user: str = "alice"
) -> None:
    """A new session lists exactly the surviving, not-\\Deleted messages, with stable UIDLs."""
    validity = await asyncio.to_thread(uidvalidity, dovecot, user)
    visible = sorted(uid for uid, names in after.items() if "\\Deleted" not in names)
    client = await logged_in(address, user.encode(), dovecot.users[user].encode())
    uidls = await client.uidls()
    assert uidls == {n: f"{validity}.{uid}".encode() for n, uid in enumerate(visible, 1)}
    assert await client.command(b"QUIT") == b"+OK bye"
    await client.close()
    assert await flags(dovecot, user) == after, "a session without DELE changed the mailbox"
