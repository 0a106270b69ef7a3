"""How many octets POP3 adds at the end of a message, learned without downloading it.

This module owns the exact size of a message the bridge has never listed. RFC822.SIZE counts
the message as stored, but POP3 ends a last line that lacks one with CRLF (RFC 1939 section
3), so LIST would be short by up to two octets. One partial `UID FETCH` per band of similar
sizes (`BODY.PEEK[]<start.length>`, RFC 3501 6.4.5; never sets \\Seen) returns each
message's octets from the band's start to its own end: the last two tell. Bands are at most
`TAIL_SPAN` octets wide, `LIST_BATCH` UIDs long and `BAND_OCTETS` of data in all, trading
round trips against octets and the memory one reply takes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from backends.imap import wire
from backends.imap.connection import Connection
from backends.imap.protocol import Reply

logger = logging.getLogger(__name__)

# The widest band of sizes read with one partial FETCH: each message of the band sends at
# most this many octets (plus two), and each band costs a round trip.
TAIL_SPAN = 512
LIST_BATCH = 500
# The most octets of message data one band's reply may carry: measuring holds at most two
# replies per session (one parsed, the next in flight), whatever the sizes.
BAND_OCTETS = 64 * 1024
# Loop turns a FETCH may take to reach the wire (the task, then the command's write).
_SEND_TURNS = 4


async def read(connection: Connection, sized: list[tuple[int, int]]) -> dict[int, int]:
    """The octets POP3 adds at the end of each message (UID -> 0, 1 or 2) of `sized`
    ((UID, listed size) pairs), in bands (`bands`). The next band's FETCH is on the wire
    while this one's reply is parsed, so the server reads messages while we parse."""
    extra: dict[int, int] = {}
    found = bands(sized)
    pending = await _sent(connection, found[0]) if found else None
    try:
        for index, band in enumerate(found):
            assert pending is not None
            reply = await pending
            pending = await _sent(connection, found[index + 1]) if index + 1 < len(found) else None
            extra.update(_added(connection, band, reply))
    finally:
        if pending is not None and not pending.done():  # an error above: nothing waits for it
            pending.cancel()
            await asyncio.wait([pending])
    return extra


async def _sent(connection: Connection, band: Band) -> asyncio.Future[Reply]:
    """Start one band's partial FETCH and return once it is on the wire (or queued behind
    the FETCH in flight, which aioimaplib sends first): a task only starts when we yield."""
    sent = connection.commands_sent
    pending = asyncio.ensure_future(
        connection.run(
            "FETCH", wire.uid_set(band.sizes), f"(BODY.PEEK[]<{band.start}.{band.length}>)",
            uid=True, check=False,
        )
    )  # fmt: skip
    for _ in range(_SEND_TURNS):
        if connection.commands_sent != sent or pending.done():
            break
        await asyncio.sleep(0)
    return pending


def _added(connection: Connection, band: Band, reply: Reply) -> dict[int, int]:
    """One band's reply read: each message's data ends with its last octets. A message
    whose data is not as long as its listed size says is left out (the listed size stands,
    and RETR measures it)."""
    if not reply.ok:  # the listed sizes stand; RETR measures and remembers (sizes.py)
        logger.info("%s: last octets not read: %s", connection.peer, reply.describe())
        return {}
    extra: dict[int, int] = {}
    start = band.start
    for fetched in wire.parse_fetches(reply.data):
        uid = fetched.uid
        size = band.sizes.get(uid) if uid is not None else None
        data = fetched.body("", start)
        if uid is not None and size is not None and data and len(data) == size - start:
            extra[uid] = added(bytes(data[-2:]))
    return extra


@dataclass(frozen=True, slots=True)
class Band:
    """Messages (UID -> listed size) read from `start` for `length` octets."""

    start: int
    length: int
    sizes: dict[int, int]


def bands(sized: list[tuple[int, int]]) -> list[Band]:
    """Messages of similar size share one partial FETCH whose range covers each one's last
    two octets; at most `TAIL_SPAN` + 2 octets each, `LIST_BATCH` UIDs and `BAND_OCTETS`
    octets of data each."""
    found: list[Band] = []
    ordered = sorted(sized, key=lambda pair: pair[1])
    index = 0
    while index < len(ordered):
        low = ordered[index][1]
        start = max(0, low - 2)
        sizes: dict[int, int] = {}
        high = low
        while index < len(ordered) and ordered[index][1] <= low + TAIL_SPAN:
            reach = ordered[index][1] - start  # what each message of the band would send
            if len(sizes) == LIST_BATCH or (sizes and (len(sizes) + 1) * reach > BAND_OCTETS):
                break
            uid, high = ordered[index]
            sizes[uid] = high
            index += 1
        found.append(Band(start, high - start, sizes))
    return found


def added(tail: bytes) -> int:
    """Octets POP3 adds after a message ending in `tail` (what `BodyEncoder.finish` does:
    a lone CR or LF becomes CRLF, a last line without one gets CRLF)."""
    if tail.endswith(b"\r\n"):
        return 0
    if tail.endswith((b"\r", b"\n")):
        return 1
    return 2
