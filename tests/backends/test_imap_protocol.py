"""The fenced aioimaplib protocol: whole FETCH responses taken without aioimaplib's line
reader must give exactly the parts aioimaplib gives, however the bytes are split (and a line
held across reads is joined exactly)."""

from __future__ import annotations

import asyncio
from typing import Any

import aioimaplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.imap.protocol import ImapProtocol, Reply

# Response shapes a FETCH reply may hold: the common one (one literal ending the first line,
# then ")"), items after the literal, two literals, no literal, and unsolicited lines.
SHAPES = (
    lambda n, body: b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (n, n, len(body), body),
    lambda n, body: b"* %d FETCH (BODY[] {%d}\r\n%s UID %d)\r\n" % (n, len(body), body, n),
    lambda n, body: (
        b"* %d FETCH (UID %d BODY[HEADER] {%d}\r\n%s BODY[TEXT] {1}\r\nx)\r\n"
        % (n, n, len(body), body)
    ),
    lambda n, body: b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, n),
    lambda n, body: b"* %d FETCH (UID %d X (Y {%d}\r\n%s)\r\n)\r\n" % (n, n, len(body), body),
    lambda n, body: b"* %d EXISTS\r\n" % n,
)
BODIES = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n"))


class _Transport:
    def write(self, data: bytes) -> None:
        pass


async def _received(data: bytes, cuts: list[int], whole_fetch: bool) -> Reply:
    protocol = ImapProtocol(asyncio.get_running_loop(), lambda exc: None)
    if not whole_fetch:  # aioimaplib reads everything: the reference
        protocol._whole_fetch = lambda data, start: start  # type: ignore[method-assign]
    protocol.connection_made(_Transport())
    protocol.state = aioimaplib.SELECTED
    command = protocol.command("FETCH", ("1:*", "(UID BODY.PEEK[])"), uid=True)
    task = asyncio.ensure_future(protocol.submit(command))
    await asyncio.sleep(0)
    data += command.tag.encode() + b" OK done\r\n"
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        protocol.data_received(data[start:end])
    return await asyncio.wait_for(task, 5)


def received(data: bytes, cuts: list[int], *, whole_fetch: bool = True) -> Reply:
    return asyncio.run(_received(data, cuts, whole_fetch))


def shape(reply: Reply) -> tuple[str, bytes, list[tuple[type, bytes]]]:
    """A reply with each part's type: text lines are bytes, literal payloads bytearray."""
    return reply.result, reply.text, [(type(part), bytes(part)) for part in reply.data]


@settings(max_examples=150, deadline=None)
@given(
    responses=st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), BODIES), max_size=8),
    fractions=st.lists(st.floats(0, 1), max_size=6),
)
def test_any_split_gives_aioimaplibs_parts(
    responses: list[tuple[int, bytes]], fractions: list[float]
) -> None:
    data = b"".join(SHAPES[shape](n, body) for n, (shape, body) in enumerate(responses, 1))
    cuts = sorted({int(f * len(data)) for f in fractions} - {0, len(data)})
    split = shape(received(data, cuts))
    assert split == shape(received(data, cuts, whole_fetch=False))
    assert split == shape(received(data, []))  # lines held across reads are joined exactly


def test_whole_responses_are_taken_directly() -> None:
    body = b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\r\n"
    data = b"".join(SHAPES[0](n, body) for n in (1, 2, 3))
    calls: list[Any] = []
    original = ImapProtocol._feed

    def feed(self: ImapProtocol, piece: bytes) -> None:
        calls.append(bytes(piece[:40]))
        original(self, piece)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImapProtocol, "_feed", feed)
        reply = received(data, [len(data) // 2])  # the middle response straddles the cut
    assert reply.ok and reply.data[1] == bytearray(body) and len(reply.data) == 9
    assert all(isinstance(part, bytes) for part in reply.data[0::3] + reply.data[2::3])
    assert all(isinstance(part, bytearray) for part in reply.data[1::3])
    # aioimaplib read only the straddling response (line, literal in two pieces, ")") and
    # the tagged status: the other two went past it
    assert len(calls) == 5 and calls[-1].endswith(b" OK done\r\n")


def test_one_byte_per_read_gives_the_same_parts() -> None:
    """Every line, and every CRLF, split across reads: the held pieces join exactly."""
    data = SHAPES[0](1, b"a\r\nb") + SHAPES[3](2, b"") + SHAPES[4](3, b"c")
    assert shape(received(data, list(range(1, len(data))))) == shape(received(data, []))
