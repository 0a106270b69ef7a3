"""Exact POP3 sizes of listed Emails, learned from the end of their blobs.

This module owns `Measurer`, what `JmapMailbox.measure` does. An Email's `size` (RFC 8621
section 4.1.1) counts the raw message, but RETR ends an unterminated last line with CRLF (RFC
1939 sections 3 and 11), so a listed size can be two octets short until the message's end was
read. Each blob is asked for its last two octets with a suffix range (RFC 9110 section 14.1.2,
`Range: bytes=-2`): a 206 whose Content-Range names exactly those octets of a representation of
the listed size tells what POP3 adds. A server that ignores Range answers 200 with the whole
blob (Cyrus 3.6 says `Accept-Ranges: none`); that body is read to its end, whatever its size,
counted as POP3 sends it and kept no longer than one piece: downloading a large message twice
(here and at RETR) costs bandwidth, a size two octets short would break RFC 1939 section 11 for
every client that checks it. Anything else (404, 416, a Content-Range or a length other than
asked, a reply longer than the listed size, a stall past the deadline) leaves that Email out:
its listed size stands and RETR measures it, so a size is never guessed. A few downloads run at
once, within the connection pool's own limit.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping

from backends.jmap.transport import Partial, Transport
from popbridge.errors import AuthFailed, BackendUnavailable, BridgeError
from popbridge.upstream.lines import Normaliser

logger = logging.getLogger(__name__)

SUFFIX = 2  # the octets that tell whether, and how, the last line ends
CONCURRENCY = 4  # downloads in flight; the pool (`Transport`) has four connections
PIECE = 64 * 1024  # the most of a whole-blob reply held at once
_CONTENT_RANGE = re.compile(r"bytes (\d{1,20})-(\d{1,20})/(\d{1,20})")


class Measurer:
    """Measures the Emails of one opened Mailbox; remembers how its server treats Range."""

    def __init__(self, transport: Transport, *, peer: str) -> None:
        self._transport = transport
        self._peer = peer
        self.ranges: bool | None = None  # whether the server honours Range; None: not known
        self._stopped = False  # after a stall: RETR measures, no client waits for it again

    async def sizes(self, blobs: Mapping[str, tuple[str, int]]) -> dict[str, int]:
        """The octets RETR sends for each Email (id -> (download URL, listed size)) that
        could be measured; the first download alone, to learn whether Range is honoured."""
        measured: dict[str, int] = {}
        waiting = [(identity, url, size) for identity, (url, size) in blobs.items()]
        if self.ranges is None and waiting:
            await self._one(measured, *waiting.pop(0))
        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(identity: str, url: str, size: int) -> None:
            async with gate:
                await self._one(measured, identity, url, size)

        async with asyncio.TaskGroup() as group:
            for entry in waiting:
                group.create_task(bounded(*entry))
        return measured

    async def _one(self, measured: dict[str, int], identity: str, url: str, size: int) -> None:
        if self._stopped:
            return
        try:
            octets = await self._measure(url, size)
        except (AuthFailed, BackendUnavailable) as error:
            # the server stalls or is gone: leave the rest for RETR rather than wait for each
            self._stopped = True
            logger.info("%s: sizes not measured: %s", self._peer, error)
            return
        except BridgeError as error:
            logger.info("%s: Email %r not measured: %s", self._peer, identity, error)
            return
        if octets is not None:
            measured[identity] = octets

    async def _measure(self, url: str, size: int) -> int | None:
        async with self._transport.ranged(url, f"bytes=-{SUFFIX}", chunk=PIECE) as reply:
            if reply.status == 206:
                self.ranges = True
                return await _from_tail(reply, size)
            if reply.status == 200:
                self._ignored()
                return await self._from_whole(reply, size)
            logger.info("%s: HTTP %d for a blob's last octets", self._peer, reply.status)
            return None  # 404: gone; 416: the listed size was wrong; RETR will tell

    def _ignored(self) -> None:
        if self.ranges is None:
            logger.info(
                "%s: the server ignores Range (RFC 9110 section 14.2); never-seen Emails"
                " are downloaded whole to measure their sizes",
                self._peer,
            )
        self.ranges = False

    async def _from_whole(self, reply: Partial, size: int) -> int | None:
        declared = reply.headers.get("Content-Length")
        if declared is not None and declared != str(size):
            return None  # leaving drops the connection: nothing half-read is reused
        return await _counted(reply.pieces, size)


async def _from_tail(reply: Partial, size: int) -> int | None:
    """From a 206: the listed size plus what POP3 adds after the last octets, if the reply
    is exactly the asked-for end of a representation of `size` octets (RFC 9110 14.4)."""
    first = max(0, size - SUFFIX)
    found = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", "").strip())
    if found is None or tuple(map(int, found.groups())) != (first, size - 1, size):
        return None
    tail = b""
    async for piece in reply.pieces:
        tail += piece
        if len(tail) > size - first:
            return None  # longer than asked: not read further
    if len(tail) != size - first:
        return None
    return size - len(tail) + _pop3_octets(tail)


async def _counted(pieces: AsyncIterator[bytes], size: int) -> int | None:
    """The octets POP3 sends for a whole blob of `size` octets read from `pieces`, one
    piece held at a time; None if it is not `size` octets long."""
    normaliser = Normaliser()
    seen = 0
    async for piece in pieces:
        seen += len(piece)
        if seen > size:
            return None  # longer than listed: not read further
        normaliser.feed(piece)
    normaliser.finish()
    return normaliser.octets if seen == size else None


def _pop3_octets(data: bytes) -> int:
    """How many octets `data` becomes when POP3 sends it as a message's end: CRLF line
    ends, and a CRLF after an unterminated last line (the core's own rule, RFC 1939 §3)."""
    normaliser = Normaliser()
    normaliser.feed(data)
    normaliser.finish()
    return normaliser.octets
