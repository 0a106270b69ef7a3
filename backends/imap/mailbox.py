"""The opened IMAP folder as a `Mailbox`: listing and streaming messages, read-only.

This module owns the read side of the IMAP mapping (conformance I-2 to I-5, I-9, I-10): the
folder is EXAMINEd, messages are named `"<UIDVALIDITY>.<UID>"` (qualified by a folder tag
when several folders are merged, see `backends.imap.folders`), only UID commands are used,
and bodies are read with `BODY.PEEK` so no `\\Seen` flag is set. Large messages are streamed
in partial fetches of `fetch_chunk` octets and TOP reads only the header and a growing prefix
of the text. A connection the server closed is replaced before the next command (I-17).
Dispositions at QUIT are delegated to `backends.imap.dispose`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from backends.imap import dispose, listing, tails, wire
from backends.imap.connection import Connection, Selected
from backends.imap.folders import Folder, Folders, Listed, Window
from backends.imap.protocol import Reply
from backends.imap.readahead import ReadAhead
from popbridge.contract import (
    DisposeResult,
    Disposition,
    ListingMemory,
    RemoteMessage,
    remember_exact_sizes,
)
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable, MessageGone
from popbridge.upstream.lines import TopCut

logger = logging.getLogger(__name__)

# Loop turns a piece's FETCH may take to reach the wire (the fetch task, then the command's).
_SEND_TURNS = 4
# First guess of text octets per TOP line; doubled until enough lines have arrived.
_TOP_OCTETS_PER_LINE = 128
_TOP_MINIMUM = 4096
# `list` is a method name in ImapMailbox, so its annotations use these.
_Planned = list[tuple[int, int]]


class ImapMailbox:
    """EXAMINEd folders on one connection; identities are `"[<tag>/]<uidvalidity>.<uid>"`."""

    def __init__(
        self, connection: Connection, folders: Folders, window: Window, *,
        reconnect: Callable[[], Awaitable[Connection]] | None = None,
        opened: Selected | None = None,
    ) -> None:  # fmt: skip
        self._connection = connection
        self._opened = opened  # what the EXAMINE at login said, for the first listing
        self._reconnect = reconnect
        self._folders = folders
        self._window = window
        self._chunk = connection.settings.fetch_chunk
        self._sizes: dict[tuple[int, int], int] = {}
        self._unindexed: list[Listed] | None = None  # the last listing, until first read from
        self._memory: ListingMemory | None = None
        # in the folders but left out of the last listing on purpose (keyword, window)
        self.withheld: set[str] = set()
        self._ahead = ReadAhead()
        self._refill: asyncio.Task[dict[int, bytes]] | None = None
        self._closed = False

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> list[RemoteMessage]:
        """Visible messages, oldest first (RFC 3501 2.3.1.2), \\Deleted excluded (I-3);
        from the last listing in `memory` where the server allows (`backends.imap.listing`)."""
        await self._settle()
        if hidden_keyword is not None and not wire.is_keyword(hidden_keyword):
            raise BackendFailure(f"hidden keyword {hidden_keyword!r} is not an IMAP atom")
        opened, self._opened = self._opened, None
        chosen = await listing.list_maildrop(
            self._connection, self._folders, self._window, keyword=hidden_keyword,
            memory=memory, opened=opened, withheld=self.withheld,
        )  # fmt: skip
        self._memory = memory
        self._unindexed = chosen  # a device that only polls UIDL never needs the index
        return [entry.message for entry in chosen]

    def _index(self) -> None:
        """Sizes and read-ahead order of the last listing, built once it is read from."""
        chosen, self._unindexed = self._unindexed, None
        if chosen is not None:
            self._sizes = {(entry.folder, entry.uid): entry.message.size for entry in chosen}
            self._ahead.listed([(entry.folder, entry.uid) for entry in chosen], self._sizes)

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The exact sizes of listed messages from their last octets (`backends.imap.tails`),
        folder by folder, saved with the listing so they are read once per message."""
        self._index()
        await self._settle()
        await self._reconnected()
        wanted: dict[int, tuple[Folder, list[tuple[int, int]]]] = {}
        for identity in identities:
            located = self._folders.locate(identity)
            size = None if located is None else self._sizes.get((located[0].index, located[1]))
            if located is not None and size is not None:
                folder, uid = located
                wanted.setdefault(folder.index, (folder, []))[1].append((uid, size))
        measured: dict[str, int] = {}
        for folder, sized in wanted.values():
            await self._enter_folder(folder)
            sizes = dict(sized)
            for uid, added in (await tails.read(self._connection, sized)).items():
                measured[folder.identity(uid)] = sizes[uid] + added
        await remember_exact_sizes(self._memory, measured)
        return measured

    async def _examine(self, folder: Folder) -> Selected:
        return await self._connection.select(read_only=True, folder=folder.name)

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        """Stream the message in pieces of at most `fetch_chunk` octets (header+prefix for TOP)."""
        self._index()
        if body_lines is None and (held := self._held(identity)) is not None:
            yield held
            return
        await self._settle()
        await self._reconnected()
        folder, uid = await self._enter(identity)
        if body_lines is not None:
            async for piece in self._top(uid, body_lines):
                yield piece
            return
        size = self._sizes.get((folder.index, uid))
        if size is not None and size <= self._chunk:
            yield await self._whole((folder.index, uid))
            return
        async for piece in self._pieces(uid, size):
            yield piece

    async def _pieces(self, uid: int, size: int | None) -> AsyncIterator[bytes]:
        """Partial fetches of `fetch_chunk` octets, the next one in flight while the caller
        sends the current one: at most two pieces are held, and the upstream's time to
        produce a piece overlaps the client's time to take the previous one."""
        offset = 0
        pending = await self._request(uid, offset)
        try:
            while piece := await pending:
                offset += len(piece)
                # A short piece is the end unless the listed size says more is due (then
                # the next, empty, piece confirms it).
                if len(piece) < self._chunk and (size is None or offset >= size):
                    yield piece
                    return
                pending = await self._request(uid, offset)
                yield piece
        finally:
            if not pending.done():  # the client went away in mid-message
                pending.cancel()
                await asyncio.wait([pending])

    async def _request(self, uid: int, offset: int) -> asyncio.Future[bytes]:
        """Start fetching a piece; return once its command is on the wire, so the server
        produces it while the caller encodes and sends the piece before. (Started and left,
        the command went out only when the caller next waited: after all that work.)"""
        sent = self._connection.commands_sent
        pending = asyncio.ensure_future(self._piece(uid, offset))
        for _ in range(_SEND_TURNS):
            if self._connection.commands_sent != sent or pending.done():
                break
            await asyncio.sleep(0)  # the task, then the one it starts to write the command
        return pending

    async def _piece(self, uid: int, offset: int) -> bytes:
        # RFC 3501 6.4.5: BODY.PEEK[]<offset.length> never sets \Seen; a start past the
        # end returns an empty string.
        fetched = await self._fetch_one(uid, f"BODY.PEEK[]<{offset}.{self._chunk}>")
        return self._section(fetched, uid, "", offset)

    async def _top(self, uid: int, lines: int) -> AsyncIterator[bytes]:
        """Header, then text in growing pieces until `lines` full lines arrived (I-10)."""
        want = min(self._chunk, max(_TOP_MINIMUM, (lines + 1) * _TOP_OCTETS_PER_LINE))
        request = (
            "(BODY.PEEK[HEADER])"
            if lines == 0
            else f"(BODY.PEEK[HEADER] BODY.PEEK[TEXT]<0.{want}>)"
        )
        fetched = await self._fetch_one(uid, request)
        yield self._section(fetched, uid, "HEADER", None)
        if lines == 0:
            return
        offset, cut = 0, TopCut(lines, in_body=True)
        while True:
            text = self._section(fetched, uid, "TEXT", offset)
            end = cut.cut(text)
            if end is not None:
                yield text[:end]
                return
            if text:
                yield text
            offset += len(text)
            if len(text) < want:
                return
            want = min(self._chunk, want * 2)
            fetched = await self._fetch_one(uid, f"BODY.PEEK[TEXT]<{offset}.{want}>")

    def _held(self, identity: str) -> bytes | None:
        """A body read ahead for `identity`, and the next batch asked for when few are left."""
        located = self._folders.locate(identity)
        if located is None:
            return None
        folder, uid = located
        body = self._ahead.take((folder.index, uid))
        if body is not None and (self._refill is None or self._refill.done()):
            planned = self._ahead.refill(whole_limit=self._chunk)
            if planned:
                self._refill = asyncio.create_task(self._fetch_ahead(planned))
        return body

    async def _reconnected(self) -> None:
        """Replace a connection the server closed (conformance I-17: RFC 3501 section 5.4
        allows logging out after 30 idle minutes, and a POP3 client may think longer) or that
        a failed command left unusable, before the next command; nothing was sent on it.
        The snapshot stays: `_enter` and dispose EXAMINE/SELECT again and compare UIDVALIDITY
        (I-7), so a UID can never name another message."""
        if self._connection.usable or self._reconnect is None:
            return
        old = self._connection
        old.abort()
        try:
            self._connection = await self._reconnect()
        except AuthFailed as error:  # an expired token, a changed password: not this RETR's
            raise BackendUnavailable(f"{old.peer}: logging in again failed: {error}") from None
        logger.info("%s: reconnected: the previous connection was closed", old.peer)

    async def _settle(self) -> None:
        """Let a background read-ahead finish before the connection is used otherwise."""
        if self._refill is not None:
            await asyncio.wait([self._refill])
            self._refill = None

    async def _fetch_ahead(self, planned: _Planned) -> dict[int, bytes]:
        """One UID FETCH for `planned`; holds every body it brought, returns them by UID."""
        try:
            reply = await self._connection.run(
                "FETCH", wire.uid_set(uid for _, uid in planned), "(BODY.PEEK[])", uid=True,
                check=False,
            )  # fmt: skip
            bodies = self._bodies(reply) if reply.ok else {}
        except Exception as error:  # a failed read-ahead must never fail the session
            # the foreground fetch of each message reports the failure when it is asked for
            logger.debug("%s: read-ahead failed: %r", self._connection.peer, error)
            return {}
        for key in planned:
            if (body := bodies.get(key[1])) is not None:
                self._ahead.hold(key, body)
        return bodies

    async def _whole(self, key: tuple[int, int]) -> bytes:
        """A small message in one piece, fetched together with the next ones when in order."""
        planned = self._ahead.plan(key, whole_limit=self._chunk)
        if len(planned) > 1:
            await self._fetch_ahead(planned)
            if (own := self._ahead.take(key)) is not None:
                return own
        # a single message, or one the batch did not bring: ask for it alone (I-9)
        return self._section(await self._fetch_one(key[1], "BODY.PEEK[]"), key[1], "", None)

    @staticmethod
    def _bodies(reply: Reply) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for fetched in wire.parse_fetches(reply.data):
            body = fetched.body("")
            if fetched.uid is not None and body is not None:
                found[fetched.uid] = body
        return found

    async def _fetch_one(self, uid: int, items: str) -> wire.Fetched:
        """UID FETCH one message; MessageGone if the server has no such message (I-9)."""
        reply = await self._connection.run("FETCH", str(uid), items, uid=True, check=False)
        if reply.code == "EXPUNGEISSUED":  # RFC 5530 3: the message was expunged meanwhile
            raise MessageGone(f"UID FETCH {uid}: {reply.describe()}")
        if not reply.ok:
            logger.info(
                "%s: UID FETCH %d refused: %s", self._connection.peer, uid, reply.describe()
            )
            if reply.code == "UNAVAILABLE":
                raise BackendUnavailable(f"UID FETCH {uid}: {reply.describe()}")
            if reply.result == "BAD":
                raise BackendFailure(f"UID FETCH {uid}: {reply.describe()}")
            raise MessageGone(f"UID FETCH {uid}: {reply.describe()}")
        for fetched in wire.parse_fetches(reply.data):
            if fetched.uid in (uid, None) and any(key.startswith("BODY[") for key in fetched.items):
                return fetched
        # Office 365 answers OK with no data for some UIDs (MailKit #1615); so does any
        # server for a UID that was expunged.
        raise MessageGone(f"UID FETCH {uid}: no body data in an OK reply")

    def _section(self, fetched: wire.Fetched, uid: int, section: str, origin: int | None) -> bytes:
        data = fetched.body(section, origin)
        if data is None:
            raise MessageGone(f"UID FETCH {uid}: no BODY[{section}] in the reply")
        return data

    async def _enter(self, identity: str) -> tuple[Folder, int]:
        """The identity's folder (EXAMINEd if another one is selected) and its UID."""
        located = self._folders.locate(identity)
        if located is None:
            raise MessageGone(f"identity {identity!r} is not from a listed UIDVALIDITY")
        folder, uid = located
        await self._enter_folder(folder)
        return folder, uid

    async def _enter_folder(self, folder: Folder) -> None:
        """EXAMINE `folder` unless it is selected; `MessageGone` if its UIDs changed meaning."""
        if self._connection.selected != folder.name:
            selected = await self._examine(folder)
            if selected.uidvalidity != folder.uidvalidity:
                # RFC 3501 2.3.1.1: the UIDs may now name other messages.
                raise MessageGone(f"{folder.name!r}: UIDVALIDITY changed since the listing")

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        """Apply `how` at QUIT, folder by folder; see `backends.imap.dispose`."""
        await self._settle()
        await self._reconnected()
        return await dispose.dispose(self._connection, self._folders, identities, how)

    async def close(self) -> None:
        """LOGOUT, never CLOSE (RFC 3501 6.4.2 would expunge); idempotent, never raises."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.wait([self._refill])
            self._refill = None
        self._ahead.forget()
        if not self._closed:
            self._closed = True
            await self._connection.logout()

    def __repr__(self) -> str:
        folders = ", ".join(f"{f.name}:{f.uidvalidity}" for f in self._folders)
        return f"<ImapMailbox {self._connection.peer} {folders}>"
