"""The UID map's shortcut for a listing it has already planned.

A login on an unchanged mailbox hands the UID map the same listing as the login before it.
Planning it again (`popbridge.store.uidmap.plan`) loads every row of the account and walks
every message, and for that listing it can only return the UIDLs it returned last time:
each listed identity then has its live row, with the same fingerprint. So the persistent
stores keep, per account and in the same transaction as the rows, a summary of their last
plan: a digest of everything `plan` reads from the listing (identities in order,
Message-IDs, received times, sizes, the withheld identities) and the UIDLs it returned.
When a new listing has the same digest, the UIDLs are read back in one row and nothing is
written. Any other listing takes the full plan, which rewrites the summary.

Two bounds keep the shortcut equal to the full plan. The summary is used only for
`REUSE_FOR` seconds after its plan, so the full plan still runs at least that often and a
listed message's last-seen time never lags more than `REUSE_FOR` behind what the full
plan's own `TOUCH_INTERVAL` allows (a rowed message keeps its UIDL regardless of that
time: it only decides, for a vanished message, how long its UIDL can be re-matched). And
the digest encodes every column with its lengths and absences, so no two different
listings share one except by a BLAKE2b collision. Whatever else writes the map meanwhile (an
older popbridge during a rolling upgrade), a summary only ever hands a UIDL back to the
identity, with the same fingerprint, that it was planned for, and the map never gives a UIDL
it handed out to another message (RFC 1939 section 7).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Final

from popbridge.contract import RemoteMessage
from popbridge.store.uidmap import TOUCH_INTERVAL

REUSE_FOR: Final = TOUCH_INTERVAL // 2
_SEPARATOR: Final = "\n"  # never in a UIDL (RFC 1939 section 7: 0x21-0x7E only)
_ABSENT: Final = -1  # recorded for a missing Message-ID ("" is a present, empty one)


def digest(listing: Sequence[RemoteMessage], withheld: Collection[str]) -> str:
    """A hex digest of what the UID map's plan reads from `listing` and `withheld`."""
    message_ids = [m.message_id for m in listing]
    hashed = hashlib.blake2b(digest_size=20)
    hashed.update(array("q", [len(listing), len(withheld)]).tobytes())
    for column in (
        [m.identity for m in listing], sorted(withheld), [t or "" for t in message_ids]
    ):  # fmt: skip
        hashed.update(_text_column(column))
    hashed.update(array("q", [_ABSENT if t is None else 0 for t in message_ids]).tobytes())
    hashed.update(array("q", [_stamp(m.received) for m in listing]).tobytes())
    hashed.update(array("q", [m.received is None for m in listing]).tobytes())
    hashed.update(array("q", [m.size for m in listing]).tobytes())
    return hashed.hexdigest()


def _text_column(texts: list[str]) -> bytes:
    """The texts' lengths in characters, then the texts: the joined text cannot be cut
    another way (one encoding of the whole column, not one per text)."""
    joined = "".join(texts).encode("utf-8", "surrogatepass")
    return array("q", map(len, texts)).tobytes() + joined


def _stamp(received: datetime | None) -> int:
    """The received time as `uidmap.mark_of` reads it: whole seconds, naive taken as UTC."""
    if received is None:
        return 0
    return int((received if received.tzinfo else received.replace(tzinfo=UTC)).timestamp())


def pack(uidls: Sequence[str]) -> str:
    return _SEPARATOR.join(uidls)


def reusable(
    stored: tuple[str, str, int] | None, wanted: str, count: int, now: int
) -> list[str] | None:
    """The UIDLs of a stored summary `(digest, packed UIDLs, planned at)` when it was made
    for the listing whose digest is `wanted`, `count` messages long, and is recent enough;
    else None (plan in full)."""
    if stored is None:
        return None
    kept, packed, planned = stored
    if kept != wanted or not 0 <= now - planned < REUSE_FOR:
        return None
    uidls = packed.split(_SEPARATOR) if count else []
    return uidls if len(uidls) == count else None
