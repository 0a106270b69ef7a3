"""The opened Gmail label as a `Mailbox`: listing, measuring exact sizes, and streaming.

This module owns the read side of the Gmail mapping. Identities are message ids (Gmail:
"the immutable ID of the message", lowercase hex, short enough to be the UIDL itself). The
listing comes from `backends.gmail.sync`: a message never measured is listed with its
`sizeEstimate` and `exact=False`, and `measure` counts it (one download) when the core is
about to tell a client its size, saving the count in the listing memory. RETR and TOP
download `format=raw` (the only form of the whole message the API offers, base64url inside
a JSON reply, no range requests) and decode it as it arrives (`backends.gmail.rawstream`):
memory stays bounded by the piece size whatever the message's size, but even TOP makes
Gmail send the whole message, and we stop reading once the header and the lines TOP needs
arrived (dropping that connection). The
reply's `labelIds` (which Gmail writes before `raw`, and leaves out when there are none)
tell whether the message is still in the maildrop label before anything is sent.
Downloading never removes UNREAD. Dispositions at QUIT are delegated to
`backends.gmail.dispose`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection

from backends.gmail import dispose
from backends.gmail.labels import Labels
from backends.gmail.listing import label_set, message_path
from backends.gmail.rawstream import RawScanner
from backends.gmail.sync import Lister, measure_sizes
from backends.gmail.transport import Transport
from popbridge.contract import (
    DisposeResult,
    Disposition,
    ListingMemory,
    ListingState,
    RemoteMessage,
    remember_exact_sizes,
)
from popbridge.errors import MessageGone
from popbridge.upstream.lines import Normaliser, TopCut

logger = logging.getLogger(__name__)

TOP_PIECE = 64 * 1024  # TOP reads in smaller pieces: it usually needs only the first ones


class GmailMailbox:
    """One label of one Gmail user; identities are message ids."""

    def __init__(self, transport: Transport, labels: Labels, label_id: str, user: str) -> None:
        self._transport = transport
        self._user = user  # the account's address, as users.getProfile names it
        self._labels = labels
        self._label = label_id
        self._sizes: dict[str, int] = {}  # identity -> the exact size a client may be told
        self._unsure: set[str] = set()  # listed, size not measured yet
        self._memory: ListingMemory | None = None  # where `measure` saves what it counted
        # in the label but hidden by the last listing (see popbridge.contract.withheld_by)
        self.withheld: frozenset[str] = frozenset()
        self._closed = False

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> list[RemoteMessage]:
        """Every message with the maildrop label, oldest first (internalDate, then id); those
        with the label named `hidden_keyword` left out. Sizes not measured before are Gmail's
        estimates, not exact."""
        found = self._labels.find(hidden_keyword) if hidden_keyword is not None else None
        hidden = found.id if found is not None else None
        state = await memory.load() if memory is not None else None
        lister = Lister(self._transport, self._label, hidden_keyword, self._user)
        listed, token = await lister.listing(hidden, state)
        self._unsure = {m.identity for m in listed if not m.exact}
        self._sizes = {m.identity: m.size for m in listed if m.exact}
        self._memory = memory
        self.withheld = token.withheld
        if memory is not None:
            await memory.save(ListingState(token.dump(), tuple(listed)))
        return listed

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The exact sizes of these listed messages: each one not measured yet is downloaded
        once and counted, `max_in_flight` at a time, and saved in the listing memory. One that
        left the label is left out; a download that fails is an error, after what was
        measured before it is saved."""
        wanted = [i for i in dict.fromkeys(identities) if i in self._sizes or i in self._unsure]
        measured: dict[str, int] = {}
        try:
            todo = [i for i in wanted if i not in self._sizes]
            await measure_sizes(self._transport, self._label, todo, measured)
        finally:
            self._sizes.update(measured)
            self._unsure -= measured.keys()
            await remember_exact_sizes(self._memory, measured)
        return {i: self._sizes[i] for i in wanted if i in self._sizes}

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        """Stream the message as LIST counted it; MessageGone if it left the label."""
        path = message_path(identity)
        chunk = self._transport.settings.fetch_chunk
        if body_lines is not None:
            chunk = min(chunk, TOP_PIECE)
        cut = TopCut(body_lines) if body_lines is not None else None
        scanner, normaliser = RawScanner(), Normaliser()
        params = {"format": "raw", "fields": "labelIds,raw"}
        async with self._transport.stream(path, "messages.get", params=params) as raw:
            checked = False
            async for piece in raw:
                data = normaliser.feed(scanner.feed(piece))
                if not checked and scanner.in_raw:
                    if self._label not in label_set(scanner.fields):
                        raise MessageGone(f"message {identity} left the maildrop label")
                    checked = True
                end = cut.cut(data) if cut is not None else None
                for offset in range(0, len(data) if end is None else end, chunk):
                    yield data[offset : min(offset + chunk, len(data) if end is None else end)]
                if end is not None:
                    return  # leaving the stream early drops its connection
            scanner.finish()
        tail = normaliser.finish()
        if tail:
            yield tail
        announced = self._sizes.get(identity)
        if announced is not None and announced != normaliser.octets:
            logger.warning("message %s sent as %d octets, listed as %d",
                           identity, normaliser.octets, announced)  # fmt: skip

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        """Apply `how` at QUIT; see `backends.gmail.dispose`."""
        return await dispose.dispose(self._transport, self._labels, self._label, identities, how)

    async def close(self) -> None:
        """Close the connection pool; nothing is written upstream. Idempotent, never raises."""
        if not self._closed:
            self._closed = True
            await self._transport.close()

    def __repr__(self) -> str:
        return f"<GmailMailbox label={self._label}>"
