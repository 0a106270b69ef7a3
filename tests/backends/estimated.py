"""The contract suite for backends that list estimated sizes and measure them on request.

This module owns `EstimatedSizesContract`: the contract suite (`tests.backends.contract`)
with its three size checks made through `as_told`, which measures what a listing gives as
not exact, as the core does before it tells a client a size (RFC 1939 sections 5 and 11).
The Graph and Gmail backends list never-measured messages with `exact=False` (Graph has no
MIME size at all, Gmail only `sizeEstimate`), so a login downloads nothing; what a client
is told still equals the octets RETR sends. Each check also asserts that the listing itself
downloaded nothing.
"""

from __future__ import annotations

from typing import Protocol

from tests.backends.contract import (
    BackendContract,
    Harness,
    as_told,
    crlf,
    message,
    read_all,
    subject_of,
)


class Counting(Harness, Protocol):
    def downloads(self) -> int: ...  # whole-message downloads the upstream served so far


class EstimatedSizesContract(BackendContract):
    """The contract suite for a backend whose listing downloads no message."""

    async def test_listing_sizes_equal_fetched_octets(self, harness: Counting) -> None:
        seeded = [message("lf", line_end=b"\n"), message("crlf", 40), message("empty body", 0)]
        harness.seed(seeded)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            listed = await mailbox.list()
            assert harness.downloads() == 0 and len(listed) == 3
            for original, entry in zip(seeded, await as_told(mailbox, listed), strict=True):
                data = b"".join(await read_all(mailbox, entry.identity))
                assert crlf(data) == crlf(original)  # oldest first, content intact
                assert entry.size == len(crlf(data)) and entry.exact
        finally:
            await mailbox.close()

    async def test_lists_three_thousand_messages(self, harness: Counting) -> None:
        harness.seed_generated(3000, 300)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            listed = await mailbox.list()
            assert harness.downloads() == 0  # a login costs the listing only
            assert len({m.identity for m in listed}) == len(listed) == 3000
            (last,) = await as_told(mailbox, listed[-1:])
            assert last.exact and last.size >= 300 and harness.downloads() == 1
            head = b"".join(await read_all(mailbox, last.identity, body_lines=0))
            assert subject_of(head) == "test message 3000"  # oldest first
        finally:
            await mailbox.close()

    async def test_large_message_streams_in_bounded_chunks(self, harness: Counting) -> None:
        (wire,) = harness.seed_generated(1, 5_000_000)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await as_told(mailbox, await mailbox.list())
            pieces = await read_all(mailbox, entry.identity)
            assert len(pieces) > 1
            assert max(map(len, pieces)) <= harness.fetch_chunk
            assert b"".join(pieces) == wire
            assert entry.size == len(wire)
        finally:
            await mailbox.close()
