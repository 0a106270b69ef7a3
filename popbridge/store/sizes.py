"""Exact message sizes learned by sending them, for backends whose sizes can be off.

LIST must announce the octets RETR sends (RFC 1939 section 5, conformance P-5.1), but an
upstream's size is only as good as the server: IMAP RFC822.SIZE leaves out the CRLF that
POP3 must add to an unterminated last line, and some servers miscount (conformance I-8).
A message's content never changes for a given identity (RFC 3501 section 2.3.1.1), so the
size measured when a message was first sent is right for every later session. This
in-memory cache is bounded; a persistent store can implement the same protocol.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from popbridge.contract import RemoteMessage, with_exact_sizes


class SizeCache(Protocol):
    async def correct(self, account: str, messages: Sequence[RemoteMessage]) -> list[RemoteMessage]:
        """The listing with every size replaced by one measured earlier, where known."""
        ...

    async def record(self, account: str, identity: str, size: int) -> None:
        """Remember the octets actually sent for this message."""
        ...


class MemorySizeCache:
    """At most `limit` measured sizes, least recently used dropped first."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._sizes: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def correct(self, account: str, messages: Sequence[RemoteMessage]) -> list[RemoteMessage]:
        measured: dict[str, int] = {}
        for message in messages if self._sizes else ():
            size = self._sizes.get((account, message.identity))
            if size is not None:
                self._sizes.move_to_end((account, message.identity))
                measured[message.identity] = size
        return with_exact_sizes(messages, measured)

    async def record(self, account: str, identity: str, size: int) -> None:
        self._sizes[(account, identity)] = size
        self._sizes.move_to_end((account, identity))
        while len(self._sizes) > self._limit:
            self._sizes.popitem(last=False)
