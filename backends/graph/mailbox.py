"""The opened Graph folder as a `Mailbox`: listing, measuring exact sizes, and streaming.

This module owns the read side of the Graph mapping. Identities are immutable message ids
(`Prefer: IdType="ImmutableId"`); the core hashes the ones that do not fit a UIDL. Graph
has no exact MIME size, so sizes are measured (see `backends.graph.spool`): a message whose
(id, changeKey) is spooled, or whose size the listing memory holds, is listed exact; any
other is listed with `exact=False` and size 0 (no estimate), and `measure` downloads it
once, counts and spools it, up to `max_in_flight` downloads at a time, and saves the size
in the listing memory. A login or UIDL therefore downloads nothing; STAT, LIST and RETR
download each never-seen message once. RETR and TOP first ask Graph whether the message is
still in the folder, then send the spooled bytes; a message that is not spooled (it did not
fit, or its size came from before a restart) is downloaded into a temporary file and sent
only if its count equals the size announced, so LIST always equals what RETR sends. On a
mismatch RETR fails with a temporary error and the size is no longer trusted, so the next
login lists it as not exact and it is measured again. Reading never sets `isRead`.
Dispositions at QUIT are delegated to `backends.graph.dispose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from backends.graph import delta, dispose
from backends.graph.dispose import message_path
from backends.graph.listing import Listed, list_messages
from backends.graph.spool import Normaliser, Spool, file_pieces, read_pieces
from backends.graph.transport import Transport, status_error
from popbridge.contract import (
    DisposeResult,
    Disposition,
    ListingMemory,
    ListingState,
    RemoteMessage,
    remember_exact_sizes,
)
from popbridge.errors import BackendUnavailable, MessageGone
from popbridge.upstream.lines import TopCut

logger = logging.getLogger(__name__)

TOP_PIECE = 64 * 1024  # TOP reads in smaller pieces: it usually needs only the first one
_MAX_ID = 1024  # longer than any Graph id; refused before it is put in a URL

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNMEASURED = 0  # the size listed, with exact=False, for a message not measured yet
_Listed = list[Listed]  # `list` is a method name in GraphMailbox
_Remote = list[RemoteMessage]


def _visible(listed: list[Listed], hidden: str | None) -> list[Listed]:
    """Without the messages carrying the category `hidden` (compared case-insensitively)."""
    if hidden is None:
        return listed
    return [m for m in listed if hidden not in {c.casefold() for c in m.categories}]


def _window(listed: _Listed, newest: int | None, days: int | None) -> _Listed:
    """The messages of the window: received in the last `days`, then the newest `newest`
    (`listed` is oldest first)."""
    if days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        listed = [m for m in listed if m.received is None or m.received >= cutoff]
    return listed if newest is None else listed[-newest:]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group, unwrapped (nested groups included)."""
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


class GraphMailbox:
    """One Graph mail folder of one mailbox; identities are immutable message ids."""

    def __init__(
        self, transport: Transport, folder_id: str, spool: Spool, stale: set[str], user: str
    ) -> None:
        self._transport = transport
        self._folder_id = folder_id
        self._spool = spool  # the backend's: shared by sessions, keyed by user and id
        self._stale = stale  # spool keys whose remembered size a download contradicted
        self._user = user.casefold()
        self._sizes: dict[str, int] = {}  # identity -> the exact size this session may tell
        self._versions: dict[str, str | None] = {}  # listed identity -> its changeKey
        self._memory: ListingMemory | None = None  # where `measure` saves what it counted
        # in the folder but hidden by the last listing (see popbridge.contract.withheld_by)
        self.withheld: frozenset[str] = frozenset()
        self._closed = False

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> list[RemoteMessage]:
        """Every message in the folder, oldest first; messages carrying the category
        `hidden_keyword` left out. Sizes measured before are exact, the others are left for
        `measure`. With `memory`, the folder is brought up to date with a delta query."""
        hidden = hidden_keyword.casefold() if hidden_keyword is not None else None
        state = await memory.load() if memory is not None else None
        settings = self._transport.settings
        windowed = settings.window_newest is not None or settings.window_days is not None
        if memory is None or windowed:
            # a window needs the whole folder each time: delta would not bring back the
            # older messages that slide into a window of the newest N
            everything = await list_messages(self._transport, self._folder_id, settings.page_size)
            listed = _visible(everything, hidden)
            listed = _window(listed, settings.window_newest, settings.window_days)
            withheld = frozenset(m.id for m in everything) - {m.id for m in listed}
            token = delta.Token(self._folder_id, hidden, "", withheld)
        else:
            listed, token = await self._synced(state, hidden)
        result = self._sized(listed, state)
        self._versions = {m.identity: m.version for m in result}
        self._sizes = {m.identity: m.size for m in result if m.exact}
        self._memory = memory
        self.withheld = token.withheld
        if memory is not None:
            await memory.save(ListingState(token.dump(), tuple(result)))
        return result

    async def _synced(
        self, state: ListingState | None, hidden: str | None
    ) -> tuple[_Listed, delta.Token]:
        """The folder now, from the remembered listing and a delta round when the token
        still serves; otherwise from a full round. Also the token to remember."""
        token = delta.Token.load(state.token) if state is not None else None
        usable = (
            token is not None
            and token.link != ""
            and (token.folder, token.hidden) == (self._folder_id, hidden)
        )
        if state is not None and token is not None and usable:
            try:
                found = await delta.run(self._transport, token.link)
            except delta.DeltaExpired as expired:
                logger.info("delta token no longer accepted (%s): listing everything", expired)
            else:
                listed, held = delta.merge(delta.remembered(state), token.withheld, [found], hidden)
                return listed, delta.Token(self._folder_id, hidden, found.link, held)
        try:
            first = await delta.run(self._transport, delta.first_link(self._folder_id))
            again = await delta.run(self._transport, first.link)
        except delta.DeltaExpired as expired:
            raise BackendUnavailable(f"a fresh delta round was refused: {expired}") from None
        listed, held = delta.merge({}, frozenset(), [first, again], hidden)
        return listed, delta.Token(self._folder_id, hidden, again.link, held)

    def _sized(self, listed: _Listed, state: ListingState | None) -> _Remote:
        """The listing, sorted: sizes from the spool or the memory are exact, the others
        are left for `measure` (Graph has no estimate of the MIME size: 0)."""
        known: dict[tuple[str, str | None], int] = {}
        if state is not None:
            for message in state.messages:
                trusted = message.exact and self._key(message.identity) not in self._stale
                if message.version is not None and trusted:
                    known[(message.identity, message.version)] = message.size
        for entry in listed:  # what is spooled needs neither the memory nor a download
            spooled = self._spool.get(self._key(entry.id))
            if spooled is not None and spooled.version == entry.change_key:
                known[(entry.id, entry.change_key)] = spooled.size
        result = [
            RemoteMessage(
                identity=m.id,
                size=known.get((m.id, m.change_key), UNMEASURED),
                message_id=m.message_id,
                received=m.received,
                version=m.change_key,
                exact=(m.id, m.change_key) in known,
            )
            for m in listed
        ]
        return sorted(result, key=lambda m: (m.received or _EPOCH, m.identity))

    def _key(self, identity: str) -> str:
        return f"{self._user}\n{identity}"

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The exact sizes of these listed messages: each one not measured yet is
        downloaded, counted and spooled, `max_in_flight` at a time, and its size saved in
        the listing memory. A message deleted since the listing is left out; a download
        that fails is an error, after what was measured before it is saved."""
        wanted = [i for i in dict.fromkeys(identities) if i in self._versions]
        todo = [i for i in wanted if i not in self._sizes]
        measured: dict[str, int] = {}
        try:
            await self._count(todo, measured)
        finally:
            self._sizes.update(measured)
            await remember_exact_sizes(self._memory, measured)
        return {i: self._sizes[i] for i in wanted if i in self._sizes}

    async def _count(self, todo: Sequence[str], sizes: dict[str, int]) -> None:
        """Download, count and spool each message of `todo`, `max_in_flight` at a time,
        into `sizes`; a message deleted before it could be downloaded is left out."""
        settings = self._transport.settings
        queue = list(reversed(todo))
        if queue:
            logger.info("measuring %d message(s) not measured before", len(queue))

        async def worker() -> None:
            while queue:
                identity = queue.pop()
                key = self._key(identity)
                try:
                    async with self._download(identity, settings.fetch_chunk) as raw:
                        version = self._versions.get(identity)
                        sizes[identity] = await self._spool.measure(key, version, raw)
                except MessageGone:
                    logger.info("message %r is gone: not measured", identity[:80])
                    continue
                self._stale.discard(key)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(len(queue), settings.max_in_flight)):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise _first(failed) from None  # one bridge error leaves, as from any call

    def _download(
        self, identity: str, chunk: int
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        path = message_path(identity) + "/$value"  # Graph message-get: the MIME content
        return self._transport.stream(path, chunk=chunk, missing=MessageGone)

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        """Stream the message as LIST counted it; MessageGone if it left the folder."""
        if not identity or len(identity) > _MAX_ID:
            raise MessageGone(f"{identity[:80]!r} is not a message id")
        await self._locate(identity)
        if body_lines is None and identity in self._versions and identity not in self._sizes:
            await self.measure([identity])  # counted and spooled once, then sent from there
        chunk = self._transport.settings.fetch_chunk
        if body_lines is not None:
            chunk = min(chunk, TOP_PIECE)
        pieces = self._spooled(identity, chunk)
        if pieces is None and (body_lines is not None or identity not in self._sizes):
            async for piece in self._fresh(identity, chunk, body_lines):
                yield piece
            return
        if pieces is None:
            pieces = await self._verified(identity, chunk)
        cut = TopCut(body_lines) if body_lines is not None else None
        for piece in pieces:
            end = cut.cut(piece) if cut is not None else None
            if end is not None:
                yield piece[:end]
                return
            yield piece

    def _spooled(self, identity: str, chunk: int) -> Iterable[bytes] | None:
        """The spooled bytes, if they are what this session announced (opened now, so a
        later eviction cannot take them away)."""
        spooled = self._spool.get(self._key(identity))
        if spooled is None or spooled.size != self._sizes.get(identity, spooled.size):
            return None
        return read_pieces(spooled.path, chunk)

    async def _locate(self, identity: str) -> None:
        """MessageGone unless the message is still in the maildrop folder."""
        reply = await self._transport.call(
            "GET", message_path(identity) + "?$select=parentFolderId"
        )
        if reply.status >= 300:
            raise status_error(reply.status, reply.url, reply.code, missing=MessageGone)
        data = reply.json()
        if not isinstance(data, dict) or data.get("parentFolderId") != self._folder_id:
            raise MessageGone(f"message {identity[:80]!r} left the folder")

    async def _fresh(
        self, identity: str, chunk: int, body_lines: int | None
    ) -> AsyncIterator[bytes]:
        """A fresh download, normalised, cut after the header and `body_lines` lines."""
        normaliser = Normaliser()
        cut = TopCut(body_lines) if body_lines is not None else None
        async with self._download(identity, chunk) as raw:
            async for piece in raw:
                data = normaliser.feed(piece)
                end = cut.cut(data) if cut is not None else None
                if end is not None:
                    yield data[:end]
                    return  # leaving the stream early drops its connection
                yield data
        yield normaliser.finish()

    async def _verified(self, identity: str, chunk: int) -> Iterable[bytes]:
        """Download into a temporary file; its pieces if the count is what LIST said."""
        handle = tempfile.TemporaryFile(dir=self._transport.settings.spool_dir)  # noqa: SIM115
        normaliser = Normaliser()
        try:
            async with self._download(identity, chunk) as raw:
                async for piece in raw:
                    handle.write(normaliser.feed(piece))
            handle.write(normaliser.finish())
        except BaseException:
            handle.close()
            raise
        announced = self._sizes[identity]
        if normaliser.octets != announced:
            handle.close()
            self._stale.add(self._key(identity))
            logger.warning(
                "message %r is now %d octets, listed as %d: the next login lists it as not"
                " exact", identity[:80], normaliser.octets, announced,
            )  # fmt: skip
            raise BackendUnavailable("the message changed size since it was listed")
        handle.seek(0)
        return file_pieces(handle, chunk)

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        """Apply `how` at QUIT; see `backends.graph.dispose`."""
        return await dispose.dispose(self._transport, self._folder_id, identities, how)

    async def close(self) -> None:
        """Close the pool (the spool stays, for later sessions); nothing is written upstream."""
        if not self._closed:
            self._closed = True
            await self._transport.close()

    def __repr__(self) -> str:
        return f"<GraphMailbox {self._transport.settings.peer} folder={self._folder_id[:20]}>"
