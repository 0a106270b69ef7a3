"""The opened JMAP Mailbox as a `Mailbox`: listing and streaming messages, read-only.

This module owns the read side of the JMAP mapping (conformance J-5 to J-10). Identities are
Email ids, which are immutable (RFC 8620 section 1.2); the core turns ids that do not fit a
UIDL (over 70 characters) into hashed UIDLs. RETR and TOP download the Email's blob (RFC 8620
section 6.2), streamed in pieces of at most `fetch_chunk` octets. JMAP has no partial
download, so TOP stops reading once the header and enough body lines arrived, and hands on
only those (dropping that connection; the next request opens another).
Downloading never sets `$seen`. A blob outlives its Email (Cyrus serves it after a destroy),
so a fetch first asks Email/get whether the Email is still in the Mailbox; it asks about the
Emails listed after it in the same request, and a later fetch of one found there downloads at
once (a client reading in order costs one download per message, as IMAP's read-ahead does).
Sizes of Emails never listed before are listed as not exact (an Email's `size` leaves out the
CRLF POP3 adds to an unterminated last line); `measure` settles them from the blobs' ends
(`backends.jmap.sizes`) and saves them with the listing, so each is measured once.
Dispositions at QUIT are delegated to `backends.jmap.dispose`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Collection

from backends.jmap import changes, dispose
from backends.jmap.api import Api
from backends.jmap.listing import hidden_ids, query_filter
from backends.jmap.sizes import Measurer
from popbridge.contract import (
    DisposeResult,
    Disposition,
    ListingMemory,
    RemoteMessage,
    remember_exact_sizes,
)
from popbridge.errors import MessageGone
from popbridge.upstream.lines import TopCut

logger = logging.getLogger(__name__)

TOP_PIECE = 64 * 1024  # TOP reads in smaller pieces: it usually needs only the first one
_MAX_ID = 255  # RFC 8620 section 1.2: an Id is 1 to 255 octets
LOCATE_AHEAD = 32  # Emails per Email/get when locating blobs, within maxObjectsInGet
_Ids = list[str]  # `list` is a method name in JmapMailbox


class JmapMailbox:
    """One JMAP Mailbox of one account; identities are Email ids."""

    def __init__(
        self,
        api: Api,
        mailbox_id: str,
        *,
        fetch_chunk: int,
        page_size: int,
    ) -> None:
        self._api = api
        self._mailbox_id = mailbox_id
        self._chunk = fetch_chunk
        self._page_size = page_size
        self._closed = False
        self._following: dict[str, str] = {}  # Email id -> the id listed after it
        self._located: dict[str, str] = {}  # Email id -> blobId, found in the Mailbox ahead
        self._memory: ListingMemory | None = None
        self._unsure: dict[str, int] = {}  # Email id -> listed size, not yet exact
        self._measurer = Measurer(api.transport, peer=str(api.session.url))
        # in the Mailbox but hidden by the keyword at the last listing (for the UID map)
        self.withheld: set[str] = set()

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> list[RemoteMessage]:
        """Every Email in the Mailbox, oldest first; `hidden_keyword` ones left out (J-5)."""
        keyword = hidden_keyword.lower() if hidden_keyword is not None else None
        condition = query_filter(self._mailbox_id, keyword)
        by_id = "id" in self._api.session.sort_options
        query = changes.Query(self._mailbox_id, keyword, condition, self._page_size, by_id)
        previous = await memory.load() if memory is not None else None
        listed = await changes.listing(self._api, query, memory)
        ids = [entry.identity for entry in listed]
        self.withheld = set()
        known = {m.identity for m in previous.messages} if previous is not None else set()
        if keyword is not None and not known.issuperset(ids):
            # Only a message never listed before could inherit a UIDL: ask which Emails
            # the keyword hides only when something arrived (RFC 8621 §4.4.1 hasKeyword).
            self.withheld = await hidden_ids(self._api, self._mailbox_id, keyword)
        self._following = dict(itertools.pairwise(ids))
        self._located.clear()
        self._memory = memory
        self._unsure = {m.identity: m.size for m in listed if not m.exact}
        return listed

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The exact sizes of listed Emails still in the Mailbox (`backends.jmap.sizes`),
        saved with the listing so that no later session measures them again."""
        wanted = [identity for identity in identities if identity in self._unsure]
        step = max(1, self._api.session.limits.max_objects_in_get)
        blobs: dict[str, tuple[str, int]] = {}
        # every Email/get before any download: Cyrus holds a lock while it writes a blob
        for start in range(0, len(wanted), step):
            for identity, blob_id in (await self._blob_ids(wanted[start : start + step])).items():
                url = self._api.session.download_url(blob_id)
                blobs[identity] = (url, self._unsure[identity])
        measured = await self._measurer.sizes(blobs)
        for identity in wanted:  # one try per session; what was left out, RETR measures
            del self._unsure[identity]
        await remember_exact_sizes(self._memory, measured)
        return measured

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        """Stream the Email's raw message; MessageGone if it left the Mailbox."""
        if not identity or len(identity) > _MAX_ID:
            raise MessageGone(f"{identity[:80]!r} is not an Email id")
        # Asked first, not alongside the download: Cyrus holds a lock while it writes a
        # blob, so an Email/get sent while a large download waits to be read never returns.
        url = self._api.session.download_url(await self._locate(identity))
        chunk = self._chunk if body_lines is None else min(self._chunk, TOP_PIECE)
        counter = None if body_lines is None else TopCut(body_lines)
        async with self._api.transport.stream(url, chunk=chunk) as pieces:
            async for piece in pieces:
                cut = counter.cut(piece) if counter is not None else None
                if cut is None:
                    yield piece
                    continue
                if cut:
                    yield piece[:cut]
                return  # leaving the stream early drops its connection

    async def _locate(self, identity: str) -> str:
        """The Email's blobId if it is still in the Mailbox (RFC 8621 section 4.2): found by
        an earlier Email/get, or by one that also looks up the Emails listed after it."""
        blob_id = self._located.pop(identity, None)
        if blob_id is not None:
            return blob_id
        found = await self._blob_ids(self._ahead(identity))
        blob_id = found.pop(identity, None)
        self._located = found  # replaced, not merged: at most LOCATE_AHEAD are kept
        if blob_id is None:
            raise MessageGone(f"Email {identity!r} is no longer in the mailbox")
        return blob_id

    def _ahead(self, identity: str) -> _Ids:
        """`identity` and the ids listed after it, as many as one Email/get may carry."""
        batch = [identity]
        limit = min(LOCATE_AHEAD, self._api.session.limits.max_objects_in_get)
        following = self._following.get(identity)
        while following is not None and len(batch) < limit:
            batch.append(following)
            following = self._following.get(following)
        return batch

    async def _blob_ids(self, ids: _Ids) -> dict[str, str]:
        """The blobId of each of `ids` that is an Email in this Mailbox."""
        arguments = {
            "accountId": self._api.account_id,
            "ids": ids,
            "properties": ["blobId", "mailboxIds"],
        }
        (response,) = await self._api.call(("Email/get", arguments))
        found: dict[str, str] = {}
        for entry in response.get("list") or []:
            if not isinstance(entry, dict) or entry.get("id") not in ids:
                continue
            mailboxes, blob_id = entry.get("mailboxIds"), entry.get("blobId")
            in_mailbox = isinstance(mailboxes, dict) and mailboxes.get(self._mailbox_id)
            if in_mailbox and isinstance(blob_id, str) and blob_id:
                found[str(entry["id"])] = blob_id
        return found

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        """Apply `how` at QUIT; see `backends.jmap.dispose`."""
        return await dispose.dispose(self._api, self._mailbox_id, identities, how)

    async def close(self) -> None:
        """Close the connection pool; nothing is written upstream. Idempotent, never raises."""
        if not self._closed:
            self._closed = True
            await self._api.transport.close()

    def __repr__(self) -> str:
        return f"<JmapMailbox {self._api.session.url} mailbox={self._mailbox_id}>"
