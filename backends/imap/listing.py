"""Listing an IMAP maildrop: in full, or from the last listing at the cost of what changed.

This module owns what a login asks the server to learn the maildrop. With the store's
memory of the last listing and a server that keeps mod-sequences (RFC 7162 CONDSTORE), a
folder whose UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT and EXISTS are those remembered costs no
command at all beyond the EXAMINE; otherwise `UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)`
names every message whose flags changed or that arrived (RFC 7162 3.1.4.1), and expunges,
which CONDSTORE alone does not report, are found by counting: EXISTS must equal the
remembered count plus the arrivals, else one `UID SEARCH` of the old UID range (an ESEARCH
`ALL` set where offered, RFC 4731) says which old messages survive. A new UIDVALIDITY (RFC
3501 2.3.1.1), a HIGHESTMODSEQ that went back, a server without mod-sequences, another
hidden keyword or a listing window mean a full listing (`UID SEARCH` then batched `UID
FETCH`). Either way every size is exact from the first listing: a message never listed
before has its last two octets read (`BODY.PEEK[]<start.length>`, one command per band of
similar sizes), so the CRLF that POP3 adds to an unterminated last line is counted, and the
remembered size is reused ever after (RFC 3501 2.3.1.1: a UID's content never changes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from bisect import bisect_right
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from backends.imap import wire
from backends.imap.connection import Connection, Selected
from backends.imap.folders import Folder, Folders, Listed, Window
from backends.imap.protocol import Reply
from popbridge.contract import ListingMemory, ListingState, RemoteMessage

logger = logging.getLogger(__name__)

# UIDs per UID FETCH while listing: bounds each reply (aioimaplib keeps whole replies in
# memory and parses them recursively).
LIST_BATCH = 500
TOKEN_VERSION = 1


@dataclass(frozen=True, slots=True)
class Mark:
    """One folder's change token; `count` is how many messages (hidden ones too) had a
    UID below `uidnext` when it was taken."""

    uidvalidity: int
    modseq: int | None
    uidnext: int
    count: int


@dataclass(frozen=True, slots=True)
class Token:
    """What the stored listing describes: the hidden keyword, whether a window cut it,
    and each folder's mark (a folder without one is listed in full next time)."""

    keyword: str | None
    windowed: bool
    marks: dict[str, Mark]

    def dumps(self) -> str:
        folders = {name: [m.uidvalidity, m.modseq, m.uidnext, m.count]
                   for name, m in self.marks.items()}  # fmt: skip
        return json.dumps(
            {"v": TOKEN_VERSION, "keyword": self.keyword, "windowed": self.windowed,
             "folders": folders}, separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def loads(cls, text: str) -> Token | None:
        """The token `dumps` wrote; None for anything else (then a full listing)."""
        try:
            data = json.loads(text)
            if data.get("v") != TOKEN_VERSION:
                return None
            marks = {str(name): Mark(*(None if v is None else int(v) for v in values))  # type: ignore[arg-type]
                     for name, values in data["folders"].items()}  # fmt: skip
            return cls(data["keyword"], bool(data["windowed"]), marks)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(slots=True)
class _Result:
    listed: list[Listed]
    mark: Mark | None


async def list_maildrop(
    connection: Connection, folders: Folders, window: Window, *, keyword: str | None,
    memory: ListingMemory | None, opened: Selected | None, withheld: set[str],
) -> list[Listed]:  # fmt: skip
    """The visible messages, oldest first, windowed; saved to `memory` when given.

    `withheld` is filled with the identities still in the folders but left out on purpose
    (the hidden keyword, the window), so no copy inherits their UIDLs.
    """
    previous = await memory.load() if memory is not None else None
    token = Token.loads(previous.token) if previous is not None else None
    known = {m.identity: m for m in previous.messages} if previous is not None else {}
    windowed = window.newest is not None or window.days is not None
    usable = token is not None and token.keyword == keyword and not token.windowed
    lister = _Lister(connection, folders, keyword, known)
    listed: list[Listed] = []
    marks: dict[str, Mark] = {}
    arrivals = False
    for folder in folders:
        status = await _examined(connection, folder, opened)
        opened = None
        mark = token.marks.get(folder.name) if usable and token is not None else None
        result = None
        if mark is not None and not windowed:
            result = await lister.changes(folder, mark, status)
        if result is None:
            result = await lister.full(folder, status, window)
        listed += result.listed
        arrivals = arrivals or any(e.message.identity not in known for e in result.listed)
        if result.mark is not None:
            marks[folder.name] = result.mark
    chosen = window.select(listed, merged=folders.merged)
    withheld.clear()
    # Only a message never listed before could inherit a UIDL: without arrivals the
    # search is skipped, and an unchanged folder still costs no command.
    if arrivals and (keyword is not None or windowed):
        present = await _present(connection, folders, status)
        withheld.update(present - {entry.message.identity for entry in chosen})
    if memory is not None:
        state = ListingState(Token(keyword, windowed, marks).dumps(),
                             tuple(entry.message for entry in chosen))  # fmt: skip
        if state != previous:  # an unchanged folder's listing is the very same objects
            await memory.save(state)
    return chosen


async def _present(connection: Connection, folders: Folders, status: wire.Status) -> set[str]:
    """Every message of the maildrop's folders not flagged \\Deleted, by UID SEARCH (its
    answer as ranges where the server offers ESEARCH, RFC 4731). The last folder listed
    is still selected; any others are EXAMINEd again."""
    found: set[str] = set()
    for folder in reversed(list(folders)):
        if folder is not list(folders)[-1]:
            status = await _examined(connection, folder, None)
        if "ESEARCH" in connection.capabilities:
            reply = await connection.run("SEARCH", "RETURN", "(ALL)", "UNDELETED", uid=True)
            ranges = wire.esearch_all(reply.data, limit=max(status.exists or 0, 1))
        else:
            reply = await connection.run("SEARCH", "UNDELETED", uid=True)
            ranges = [(uid, uid) for uid in wire.search_uids(reply.data)]
        found |= {folder.identity(uid) for low, high in ranges for uid in range(low, high + 1)}
    return found


async def _examined(connection: Connection, folder: Folder, opened: Selected | None) -> wire.Status:
    """The folder EXAMINEd (asking for HIGHESTMODSEQ), or what the login's EXAMINE said."""
    selected = opened if opened is not None and connection.selected == folder.name else None
    if selected is None:
        selected = await connection.select(read_only=True, folder=folder.name, condstore=True)
    folder.uidvalidity = selected.uidvalidity
    return wire.selected_status(selected.data)


def visible(flags: Collection[str], keyword: str | None) -> bool:
    """What the full listing's `NOT DELETED NOT KEYWORD k` keeps (RFC 3501 6.4.4)."""
    return "\\DELETED" not in flags and (keyword is None or keyword.upper() not in flags)


class _Lister:
    """The commands of one listing on one connection."""

    def __init__(
        self, connection: Connection, folders: Folders, keyword: str | None,
        known: dict[str, RemoteMessage],
    ) -> None:  # fmt: skip
        self._connection = connection
        self._folders = folders
        self._keyword = keyword
        self._known = known

    async def full(self, folder: Folder, status: wire.Status, window: Window) -> _Result:
        """`UID SEARCH` for the visible UIDs, then their listing items in batches."""
        criteria = ["NOT", "DELETED"]
        if self._keyword is not None:
            criteria += ["NOT", "KEYWORD", self._keyword]
        criteria += window.search_since()
        found = await self._connection.run("SEARCH", *criteria, uid=True)
        listed = await self.fetch(folder, window.trim(wire.search_uids(found.data)))
        mark = None
        if status.uidnext is not None and status.exists is not None:
            mark = Mark(folder.uidvalidity or 0, status.modseq, status.uidnext, status.exists)
        return _Result(listed, mark)

    async def changes(self, folder: Folder, mark: Mark, status: wire.Status) -> _Result | None:
        """The folder's listing from the stored one and what changed; None: list in full."""
        now = _comparable(folder, mark, status)
        if now is None:
            return None
        kept = self._kept(folder)
        if now == Mark(mark.uidvalidity, mark.modseq, mark.uidnext, mark.count):
            return _Result(_ordered(folder, kept), mark)  # nothing changed: no command at all
        try:
            delta = await self._delta(mark, now)
        except _Refused as refused:
            logger.info("%s: %s refused (%s); listing %r in full",
                        self._connection.peer, refused.command, refused, folder.name)  # fmt: skip
            return None
        if delta is None:
            logger.info("%s: %r changed while listing; listing it in full",
                        self._connection.peer, folder.name)  # fmt: skip
            return None
        wanted = []
        for uid in list(kept):
            if not delta.survives(uid):
                del kept[uid]
        for uid, flags in delta.changed.items():
            if not visible(flags, self._keyword):
                kept.pop(uid, None)
            elif uid not in kept:
                wanted.append(uid)
        listed = _ordered(folder, kept) + await self.fetch(folder, sorted(wanted))
        listed.sort(key=lambda entry: entry.uid)
        return _Result(listed, Mark(mark.uidvalidity, now.modseq, now.uidnext, delta.count))

    async def _delta(self, mark: Mark, status: Mark) -> _Delta | None:
        """What changed since `mark` up to `status` (`count` is EXISTS there); None when the
        counts do not add up (a change raced the commands, or UIDs were skipped)."""
        since, upto = mark.modseq or 0, status.modseq or 0  # both set: see _comparable
        # Without an arrival, EXISTS below the count means expunges; ESEARCH can run
        # alongside the FETCH (its replies are `* ESEARCH`, not `* FETCH`).
        doubt = mark.uidnext > 1 and status.count != mark.count + status.uidnext - mark.uidnext
        esearch = doubt and "ESEARCH" in self._connection.capabilities
        changed, survivors = await asyncio.gather(
            self._changed(since) if upto > since else _nothing(),
            self._survivors(mark.uidnext, status.count) if esearch else _none(),
        )
        arrived = sum(1 for uid in changed if mark.uidnext <= uid < status.uidnext)
        if survivors is None and status.count != mark.count + arrived and mark.uidnext > 1:
            survivors = await self._survivors(mark.uidnext, status.count)
        old = mark.count if survivors is None else survivors.count
        if old + arrived != status.count:
            return None
        return _Delta(mark.uidnext, changed, survivors, old + arrived)

    def _kept(self, folder: Folder) -> dict[int, RemoteMessage]:
        """The remembered messages of `folder` under its current UIDVALIDITY, by UID (a
        prefix test, not `Folders.locate`: this runs once per message of a large folder)."""
        prefix = folder.identity(0)[:-1]  # "[<tag>/]<uidvalidity>."
        start = len(prefix)
        kept: dict[int, RemoteMessage] = {}
        for identity, message in self._known.items():
            if identity.startswith(prefix):
                uid = identity[start:]
                if uid.isascii() and uid.isdigit() and len(uid) <= 10:
                    kept[int(uid)] = message
        return kept

    async def _changed(self, modseq: int) -> dict[int, frozenset[str]]:
        """UID -> flags of every message changed or arrived since `modseq` (RFC 7162 3.1.4.1)."""
        reply = await self._run("FETCH", "1:*", "(UID FLAGS)", f"(CHANGEDSINCE {modseq})")
        changed: dict[int, frozenset[str]] = {}
        for fetched in wire.parse_fetches(reply.data):
            flags = wire.flags(fetched)
            if fetched.uid is not None and flags is not None:
                changed[fetched.uid] = flags
        return changed

    async def _survivors(self, uidnext: int, exists: int) -> _Uids:
        """Which UIDs below `uidnext` still exist: an ESEARCH `ALL` set (RFC 4731) where
        offered, else the plain `UID SEARCH` list."""
        span = f"1:{uidnext - 1}"
        if "ESEARCH" in self._connection.capabilities:
            reply = await self._run("SEARCH", "RETURN", "(ALL)", "UID", span)
            try:
                return _Uids(wire.esearch_all(reply.data, limit=exists))
            except wire.ProtocolError as error:
                raise _Refused("UID SEARCH RETURN", str(error)) from None
        reply = await self._run("SEARCH", "UID", span)
        return _Uids([(uid, uid) for uid in wire.search_uids(reply.data)])

    async def _run(self, name: str, *args: str) -> Reply:
        """A UID command of the incremental path; its refusal means a full listing."""
        reply = await self._connection.run(name, *args, uid=True, check=False)
        if not reply.ok:
            raise _Refused(f"UID {name}", reply.describe())
        return reply

    async def fetch(self, folder: Folder, uids: Sequence[int]) -> list[Listed]:
        """The listing items of `uids` (some may be gone); a size is exact where it was
        measured before, else RFC822.SIZE, listed as not exact (RFC 1939 3: POP3 ends an
        unterminated last line with CRLF, which RFC822.SIZE does not count) for `measure`."""
        found: dict[int, Listed] = {}
        for batch in wire.batches(uids, LIST_BATCH):
            reply = await self._connection.run(
                "FETCH", wire.uid_set(batch), wire.LISTING_ITEMS, uid=True
            )
            wanted = set(batch)
            for fetched in wire.parse_fetches(reply.data):
                uid, size = fetched.uid, fetched.number("RFC822.SIZE")
                # Unsolicited FETCHes (flag changes by other clients) carry no size.
                if uid is not None and uid in wanted and size is not None:
                    found[uid] = Listed(
                        self._message(folder, uid, fetched, size), folder.index, uid
                    )
        return [found[uid] for uid in sorted(found)]

    def _message(self, folder: Folder, uid: int, fetched: wire.Fetched, size: int) -> RemoteMessage:
        identity = folder.identity(uid)
        remembered = self._known.get(identity)
        exact = remembered is not None and remembered.exact
        return RemoteMessage(
            identity=identity,
            size=remembered.size if exact and remembered is not None else size,
            message_id=wire.message_id(fetched.prefixed("BODY[HEADER.FIELDS")),
            received=wire.internal_date(fetched.items.get("INTERNALDATE")),
            exact=exact or size == 0,
        )


def _comparable(folder: Folder, mark: Mark, status: wire.Status) -> Mark | None:
    """The folder's state now, if `mark` can be brought up to it; None: list in full."""
    modseq, uidnext, exists = status.modseq, status.uidnext, status.exists
    if modseq is None or mark.modseq is None or folder.uidvalidity != mark.uidvalidity:
        return None  # RFC 3501 2.3.1.1: the stored UIDs may name other messages now
    if uidnext is None or exists is None:
        return None
    # Mod-sequences and UIDs only grow, and an arrival raises HIGHESTMODSEQ (RFC 7162
    # 3.1.1); anything else is a server we cannot follow incrementally.
    if modseq < mark.modseq or uidnext < mark.uidnext:
        return None
    if modseq == mark.modseq and uidnext != mark.uidnext:
        return None
    return Mark(mark.uidvalidity, modseq, uidnext, exists)


class _Refused(Exception):
    """The server refused (or garbled) a command only the incremental path sends."""

    def __init__(self, command: str, detail: str) -> None:
        super().__init__(detail)
        self.command = command


@dataclass(frozen=True, slots=True)
class _Delta:
    """A folder's changes: flags by UID (arrivals included), the old UIDs that survive
    (None: all of them), and how many messages below the new UIDNEXT exist now."""

    uidnext: int
    changed: dict[int, frozenset[str]]
    survivors: _Uids | None
    count: int

    def survives(self, uid: int) -> bool:
        """Whether a stored UID still exists. One above the old mark was listed last time
        after its EXAMINE: CHANGEDSINCE names every message that new, if it exists."""
        if uid >= self.uidnext:
            return uid in self.changed
        return self.survivors is None or self.survivors.has(uid)


class _Uids:
    """A set of UIDs as sorted, disjoint ranges."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._lows = [low for low, _ in ranges]
        self._ranges = ranges
        self.count = sum(high - low + 1 for low, high in ranges)

    def has(self, uid: int) -> bool:
        index = bisect_right(self._lows, uid) - 1
        return index >= 0 and self._ranges[index][1] >= uid


async def _none() -> None:
    return None


async def _nothing() -> dict[int, frozenset[str]]:
    return {}


def _ordered(folder: Folder, kept: dict[int, RemoteMessage]) -> list[Listed]:
    return [Listed(kept[uid], folder.index, uid) for uid in sorted(kept)]
