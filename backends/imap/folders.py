"""Which IMAP folders make up one POP3 maildrop, how identities name them, and the window.

This module owns the naming of messages across folders and the listing window. A maildrop
of one folder keeps the identity `"<uidvalidity>.<uid>"` (so existing UIDLs never change);
a maildrop merged from several folders qualifies it as `"<tag>/<uidvalidity>.<uid>"`, where
the tag is 8 hex digits of SHA-256 of the folder name: the same UID and UIDVALIDITY can
occur in two folders, but the combination of mailbox name, UIDVALIDITY and UID names one
message for ever (RFC 3501 section 2.3.1.1). Merged folders are listed oldest first by
INTERNALDATE. The window keeps only the newest N messages (each folder's highest UIDs, as
UIDs grow with arrival, RFC 3501 section 2.3.1.1; across merged folders the latest
INTERNALDATEs among those) and/or those received in the last D days (INTERNALDATE, RFC
3501 section 2.3.3).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backends.imap import wire
from popbridge.contract import RemoteMessage

TAG_LENGTH = 8
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def canonical(name: str) -> str:
    """The folder name as compared: INBOX in any case is INBOX (RFC 3501 section 5.1)."""
    return "INBOX" if name.upper() == "INBOX" else name


def tag_of(name: str) -> str:
    """The identity prefix of a folder in a merged maildrop."""
    return hashlib.sha256(canonical(name).encode("utf-8")).hexdigest()[:TAG_LENGTH]


@dataclass(slots=True)
class Folder:
    """One folder of the maildrop and the UIDVALIDITY its identities were made under."""

    name: str
    tag: str | None  # None when the maildrop is this folder alone
    index: int = 0
    uidvalidity: int | None = None

    @property
    def argument(self) -> str:
        """The name as a quoted, modified-UTF-7 mailbox argument (RFC 3501 5.1.3, 9)."""
        return wire.quote(wire.encode_mailbox(self.name))

    def identity(self, uid: int) -> str:
        local = f"{self.uidvalidity}.{uid}"
        return local if self.tag is None else f"{self.tag}/{local}"


class Folders:
    """The maildrop's folders in configured order; finds the folder of an identity."""

    def __init__(self, names: Sequence[str]) -> None:
        merged = len(names) > 1
        self._items = [
            Folder(name, tag_of(name) if merged else None, index)
            for index, name in enumerate(names)
        ]
        self._by_tag = {folder.tag: folder for folder in self._items}

    def __iter__(self) -> Iterator[Folder]:
        return iter(self._items)

    @property
    def merged(self) -> bool:
        return len(self._items) > 1

    def locate(self, identity: str) -> tuple[Folder, int] | None:
        """(folder, UID) of an identity made under the folder's current UIDVALIDITY."""
        tag: str | None = None
        if self.merged:
            tag, _, identity = identity.partition("/")
        folder = self._by_tag.get(tag)
        parsed = wire.parse_identity(identity)
        if folder is None or parsed is None or parsed[0] != folder.uidvalidity:
            # Another UIDVALIDITY: the UID may now name another message (RFC 3501 2.3.1.1).
            return None
        return folder, parsed[1]


@dataclass(slots=True)  # not frozen: a login builds one per message, and frozen costs 3x
class Listed:
    """A listed message with what the merged order and the window need (never changed)."""

    message: RemoteMessage
    folder: int
    uid: int


@dataclass(frozen=True, slots=True)
class Window:
    """Which messages a listing shows: all, the newest N, those of the last D days."""

    newest: int | None = None
    days: int | None = None

    def search_since(self, now: float | None = None) -> list[str]:
        """UID SEARCH keys that narrow the listing server-side (RFC 3501 6.4.4 SINCE).

        SINCE compares dates only, in the server's time zone, so it asks for a day more;
        `select` then applies the exact limit.
        """
        if self.days is None:
            return []
        start = datetime.fromtimestamp(now or time.time(), UTC) - timedelta(days=self.days + 1)
        return ["SINCE", f"{start.day}-{_MONTHS[start.month - 1]}-{start.year}"]

    def trim(self, uids: list[int]) -> list[int]:
        """A folder's newest UIDs: UIDs grow with arrival (RFC 3501 2.3.1.1)."""
        return uids if self.newest is None else uids[-self.newest :]

    def select(
        self, listed: list[Listed], *, merged: bool, now: float | None = None
    ) -> list[Listed]:
        """Oldest first (UID order; several folders: by INTERNALDATE), then the window."""
        if merged:
            oldest = datetime.min.replace(tzinfo=UTC)
            listed = sorted(listed, key=lambda e: (e.message.received or oldest, e.folder, e.uid))
        if self.days is not None:
            cutoff = (now or time.time()) - self.days * 86400
            listed = [
                e for e in listed if e.message.received is None or _stamp(e.message) >= cutoff
            ]
        if self.newest is not None:
            listed = listed[-self.newest :]
        return listed


def _stamp(message: RemoteMessage) -> float:
    received = message.received
    assert received is not None
    return (received if received.tzinfo else received.replace(tzinfo=UTC)).timestamp()
