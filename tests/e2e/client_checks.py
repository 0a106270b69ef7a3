"""What every backend's real-client tests share: the awkward messages and the client runs.

The same checks run against IMAP, JMAP, Graph and Gmail upstreams, so they live here once:
the messages that stress the wire rules (dot-stuffing, 8-bit text, an empty body, a long
line), curl's list-retrieve-UIDL round, and fetchmail, mpop and getmail deliveries with the
headers each client adds taken off again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from devkit import clients
from devkit.clients import Pop3Target, strip_client_additions

SPECIAL = [
    b"From: a@example.org\nSubject: dots\n\n.\n..\n.leading dot\n...\nend\n",
    b"From: a@example.org\nSubject: 8bit\nContent-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\n",
    b"From: a@example.org\nSubject: empty body\n\n",
    b"From: a@example.org\nSubject: long line\n\n" + b"y" * 1500 + b"\n",
]


async def curl_lists_retrieves_and_uidls(
    target: Pop3Target, expected: list[bytes], work: Path
) -> None:
    """curl's LIST shows `expected`'s sizes, RETR of each brings exactly `expected`, and
    UIDL gives one unique-id per message, the same in a second session (RFC 1939 §7)."""
    listing = await asyncio.to_thread(clients.curl_list, target)
    assert listing.split() == [str(x) for n, m in enumerate(expected, 1) for x in (n, len(m))]
    retrieved = await asyncio.to_thread(clients.curl_retr_all, target, len(expected), work)
    assert retrieved == expected
    uidl = await asyncio.to_thread(clients.curl_command, target, "UIDL")
    again = await asyncio.to_thread(clients.curl_command, target, "UIDL")
    assert len(uidl.split()) == 2 * len(expected)
    assert uidl == again


async def fetchmail(target: Pop3Target, work: Path, *, keep: bool) -> list[bytes]:
    got = await asyncio.to_thread(clients.run_fetchmail, target, work, keep=keep)
    return [strip_client_additions("fetchmail", m) for m in got]


async def mpop(target: Pop3Target, work: Path, *, keep: bool) -> list[bytes]:
    got = await asyncio.to_thread(clients.run_mpop, target, work, keep=keep)
    return [strip_client_additions("mpop", m) for m in got]


async def getmail(target: Pop3Target, work: Path, *, delete: bool) -> list[bytes]:
    got = await asyncio.to_thread(clients.run_getmail, target, work, delete=delete)
    return [strip_client_additions("getmail", m) for m in got]
