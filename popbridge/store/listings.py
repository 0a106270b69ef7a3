"""Each upstream mailbox's last listing, kept for the next login (`ListingMemory`).

A backend that lists incrementally starts from the state saved here; every backend reuses
the exact sizes it measured. This module owns the in-memory implementation (one process)
and the compact form both SQL stores keep, one row per mailbox: the listing column by
column (identities, Message-IDs and versions as NUL-joined text, sizes and dates as packed
numbers), compressed. A column-wise blob of 100,000 messages decodes in a handful of C
calls, where one row per message or one JSON object per message costs a Python object per
field; a blob that does not decode is treated as no memory (the next login lists in full).
The SQL stores keep the last listings they decoded (`Decoded`), so a login that finds the
row as the last one left it builds no message objects.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from array import array
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Protocol

from popbridge.contract import ListingMemory, ListingState, RemoteMessage
from popbridge.store.offload import off_loop

logger = logging.getLogger(__name__)

FORMAT = 2  # the first byte of a blob: the column layout below (1: without `exact`)
_HEADER = struct.Struct("<BI")  # format, message count
_NONE = "\x01"  # an absent Message-ID or version (NUL separates, 0x01 never occurs in hints)
# Messages kept decoded by `Decoded`, in all accounts: about 300 bytes each.
DECODED_MESSAGES = 200_000


class ListingMemories(Protocol):
    """Hands out the memory of one account's maildrop."""

    def for_account(self, account: str) -> ListingMemory: ...


class _AccountMemory:
    def __init__(self, states: dict[str, ListingState], account: str) -> None:
        self._states = states
        self._account = account

    async def load(self) -> ListingState | None:
        return self._states.get(self._account)

    async def save(self, state: ListingState) -> None:
        self._states[self._account] = state


class MemoryListings:
    """Listings kept in this process's memory, one per account."""

    def __init__(self) -> None:
        self._states: dict[str, ListingState] = {}

    def for_account(self, account: str) -> ListingMemory:
        return _AccountMemory(self._states, account)


class KeptListings(Protocol):
    """A store's table of listings, by account."""

    async def load(self, account: str) -> ListingState | None: ...

    async def save(self, account: str, state: ListingState) -> None: ...


class Bound:
    """The `ListingMemory` of one account in a store's `KeptListings`."""

    def __init__(self, owner: KeptListings, account: str) -> None:
        self._owner = owner
        self._account = account

    async def load(self) -> ListingState | None:
        return await self._owner.load(self._account)

    async def save(self, state: ListingState) -> None:
        await self._owner.save(self._account, state)


def encode(state: ListingState) -> bytes:
    """The compact stored form of `state` (see the module docstring); ValueError for a
    message whose identity or hints hold the separators (then nothing is kept)."""
    messages = state.messages
    for message in messages:
        for text in (message.identity, message.message_id, message.version):
            if text is not None and ("\0" in text or text == _NONE):
                raise ValueError("a listed hint holds NUL or 0x01; not kept")
    texts = [
        state.token,
        "\0".join(m.identity for m in messages),
        "\0".join(_NONE if m.message_id is None else m.message_id for m in messages),
        "\0".join(_NONE if m.version is None else m.version for m in messages),
    ]
    sizes = array("q", (m.size for m in messages))
    stamps = array("d", (_stamp(m.received) for m in messages))
    offsets = array("i", (_offset(m.received) for m in messages))
    exact = array("B", (m.exact for m in messages))
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = array("q", (len(e) for e in encoded))
    body = b"".join([lengths.tobytes(), *encoded, sizes.tobytes(), stamps.tobytes(),
                     offsets.tobytes(), exact.tobytes()])  # fmt: skip
    return _HEADER.pack(FORMAT, len(messages)) + zlib.compress(body, 1)


async def encoded_or_none(state: ListingState) -> bytes | None:
    """`encode_or_none(state)`, off the loop for a large listing."""
    return await off_loop(len(state.messages), encode_or_none, state)


def encode_or_none(state: ListingState) -> bytes | None:
    """`encode(state)`, or None (logged) when it cannot be kept: the stale row must go."""
    try:
        return encode(state)
    except ValueError as error:
        logger.warning("listing not kept: %s", error)
        return None


class Decoded:
    """The listings a SQL store decoded lately, per account, with the blob each came from.

    A login on an unchanged mailbox loads the very blob the last one saved; decoding it
    builds an object per message again (100,000 of them for a large mailbox: most of such
    a login's time). A blob equal to the one remembered for the account gives back the
    listing decoded from it, so a row another instance rewrote is always decoded afresh.
    At most `capacity` messages are kept in all, the least recently used account first out.
    """

    def __init__(self, capacity: int = DECODED_MESSAGES) -> None:
        self._capacity = capacity
        self._kept: OrderedDict[str, tuple[bytes, ListingState]] = OrderedDict()
        self._messages = 0

    async def decode(self, account: str, blob: bytes) -> ListingState | None:
        """`decode(blob)`, from what this account's last blob gave when it is the same
        (decoded off the loop when large); a blob saved meanwhile only misses the cache."""
        kept = self._kept.get(account)
        if kept is not None and kept[0] == blob:
            self._kept.move_to_end(account)
            return kept[1]
        state = await off_loop(_count(blob), decode, blob)
        self.remember(account, blob, state)
        return state

    def remember(self, account: str, blob: bytes | None, state: ListingState | None) -> None:
        """The account's row now holds `blob`, the form of `state` (None: no row)."""
        dropped = self._kept.pop(account, None)
        if dropped is not None:
            self._messages -= len(dropped[1].messages)
        if blob is None or state is None or len(state.messages) > self._capacity:
            return
        self._kept[account] = (blob, state)
        self._messages += len(state.messages)
        while self._messages > self._capacity:
            _, (_, oldest) = self._kept.popitem(last=False)
            self._messages -= len(oldest.messages)


def decode(blob: bytes) -> ListingState | None:
    """The state `encode` stored; None (logged) for a blob this version cannot read."""
    try:
        return _decode(blob)
    except (ValueError, zlib.error, struct.error, UnicodeError, OverflowError) as error:
        logger.warning("stored listing unreadable, listing in full: %s", error)
        return None


def _count(blob: bytes) -> int:
    """How many messages `blob` says it holds (0 if it is too short to say)."""
    return _HEADER.unpack_from(blob)[1] if len(blob) >= _HEADER.size else 0


def _decode(blob: bytes) -> ListingState | None:
    kind, count = _HEADER.unpack_from(blob)
    if kind not in (1, FORMAT):
        raise ValueError(f"unknown listing format {kind}")
    body = memoryview(zlib.decompress(blob[_HEADER.size :]))
    lengths = array("q")
    lengths.frombytes(body[: 4 * 8])
    at = 4 * 8
    texts = []
    for length in lengths:
        texts.append(str(body[at : at + length], "utf-8", "surrogatepass"))
        at += length
    token, identities, hints, versions = texts
    sizes, stamps, offsets, exact = array("q"), array("d"), array("i"), array("B")
    # format 1 kept only exact sizes, and had no column to say so
    for column in (sizes, stamps, offsets, exact) if kind == FORMAT else (sizes, stamps, offsets):
        end = at + column.itemsize * count
        column.frombytes(body[at:end])
        at = end
    if kind != FORMAT:
        exact.extend(bytes([1]) * count)
    if at != len(body):
        raise ValueError("stored listing has trailing data")
    names = identities.split("\0") if count else []
    ids = hints.split("\0") if count else []
    kept = versions.split("\0") if count else []
    if not len(names) == len(ids) == len(kept) == len(sizes) == len(exact) == count:
        raise ValueError("stored listing columns disagree")
    messages = tuple(
        RemoteMessage(name, size, None if mid == _NONE else mid, _received(stamp, offset),
                      None if version == _NONE else version, bool(flag))
        for name, size, mid, stamp, offset, version, flag
        in zip(names, sizes, ids, stamps, offsets, kept, exact, strict=True)
    )  # fmt: skip
    return ListingState(token, messages)


def _stamp(received: datetime | None) -> float:
    if received is None:
        return math.nan
    return (received if received.tzinfo else received.replace(tzinfo=UTC)).timestamp()


def _offset(received: datetime | None) -> int:
    delta = received.utcoffset() if received is not None else None
    return int(delta.total_seconds()) if delta is not None else 0


def _received(stamp: float, offset: int) -> datetime | None:
    if math.isnan(stamp):
        return None
    return datetime.fromtimestamp(stamp, _zone(offset))


@lru_cache(maxsize=64)
def _zone(offset: int) -> timezone:
    return UTC if offset == 0 else timezone(timedelta(seconds=offset))
