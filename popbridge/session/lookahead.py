"""The next RETR's answer, prepared while the client still reads the current one.

Clients that download a whole maildrop (fetchmail, getmail, mail programs, scan-to-mail
archives) send RETR 1, RETR 2, ... and wait for each complete answer before the next command,
so every message costs a client round trip plus all the bridge does for it: the upstream read
and the byte-stuffing. After a RETR the session therefore fetches and encodes the following
message in the background, while the answer it just sent travels to the client and is
processed there; the next RETR only checks that the prepared answer is for its message and
writes it. Nothing reaches the client before its command, and the snapshot is consulted when
the command arrives, so a DELE in between still gets its answer (RFC 1939 section 5). The
backend reads with its usual fetch, which never sets \\Seen (RFC 3501 section 6.4.5), and a
failed preparation is dropped silently: the RETR then fetches again and reports the failure
itself. It is bounded: one small message per session, within a process-wide byte budget, and
the mailbox is never used by two calls at once: every other use first waits (`settle`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

from popbridge.contract import Mailbox, close_chunks
from popbridge.pop3.wire import BodyEncoder
from popbridge.telemetry import metrics
from popbridge.upstream.budget import Budget

logger = logging.getLogger(__name__)

# Larger messages gain little: their transfer time dwarfs one round trip, and they stream.
MAX_OCTETS: Final = 64 << 10
PROCESS_OCTETS: Final = 32 << 20


PROCESS_BUDGET = Budget(PROCESS_OCTETS)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A RETR answer after its status line: `wire` is the stuffed body and terminator,
    `octets` the message size before stuffing (what RETR counts, RFC 1939 section 11)."""

    identity: str
    wire: bytes
    octets: int


class Lookahead:
    """At most one answer in preparation or ready for one session's mailbox."""

    def __init__(
        self, mailbox: Mailbox, *, max_octets: int = MAX_OCTETS, budget: Budget = PROCESS_BUDGET,
        log: logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:  # fmt: skip
        self.mailbox = mailbox
        self._log = log or logging.LoggerAdapter(logger)
        self._max_octets = max_octets
        self._budget = budget
        self._task: asyncio.Task[Prepared | None] | None = None
        self._reserved = 0

    def start(self, identity: str, size: int) -> None:
        """Prepare the answer for `identity` (listed `size`) if it is small enough to hold."""
        if self._task is not None or size > self._max_octets or size > self._budget.available():
            return
        self._reserved = size
        self._budget.used += size
        self._task = asyncio.create_task(self._prepare(identity, size))

    async def take(self, identity: str) -> Prepared | None:
        """The answer for `identity`, once ready; None if another one was prepared (dropped)."""
        prepared = await self.settle()
        return metrics.lookahead(prepared if prepared and prepared.identity == identity else None)

    async def settle(self) -> Prepared | None:
        """Wait for a preparation in progress and hand it over; the mailbox is then free."""
        task, self._task = self._task, None
        if task is None:
            return None
        try:
            return await task
        finally:
            self._budget.used -= self._reserved
            self._reserved = 0

    async def idle(self) -> Prepared | None:
        """Wait for a preparation in progress to end and show its answer, kept for `take`;
        the mailbox is free once this returns."""
        task = self._task
        if task is None:
            return None
        await asyncio.wait([task])
        return None if task.cancelled() else task.result()

    async def _prepare(self, identity: str, size: int) -> Prepared | None:
        try:
            return await self._encode(identity, size)
        except Exception as error:  # the RETR fetches again and reports it to the client
            self._log.debug("preparing %r ahead failed: %r", identity, error)
            return None

    async def _encode(self, identity: str, size: int) -> Prepared | None:
        encoder = BodyEncoder()
        pieces: list[bytes] = []
        chunks = self.mailbox.fetch(identity)
        try:
            async for chunk in chunks:
                pieces.append(encoder.feed(chunk))
                if encoder.octets > 2 * size + 4096:  # the listed size was wrong: stream it
                    return None
        finally:
            await close_chunks(chunks)
        pieces.append(encoder.finish())
        return Prepared(identity, b"".join(pieces), encoder.octets)
