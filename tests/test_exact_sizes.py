"""Sizes a backend lists as not exact are measured when a client is told one, and only then.

RFC 1939 section 5 (STAT, LIST) and section 11: the sizes are the octets RETR sends, CRLF
line ends included. IMAP's RFC822.SIZE leaves out the CRLF POP3 adds to an unterminated last
line, so the IMAP backend lists it as not exact and measures on request; a login and a UIDL
never pay for that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devkit.dialogue import assert_dialogue, make_session
from devkit.memory_backend import MemoryBackend, MemoryMailbox, MemoryUpstream
from popbridge.contract import RemoteMessage, measurer_of, with_exact_sizes
from popbridge.session.snapshot import Snapshot
from popbridge.telemetry.upstream import TimedMailbox

MSG1 = b"Subject: a\r\n\r\nhi\r\n"  # 18 octets, already exact
MSG2 = b"Subject: b\n\n.dot\nlast"  # listed as 21, 26 on the wire

LOGIN = ("C: USER alice", "S: +OK send PASS", "C: PASS secret")


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    backend.user("alice", "secret", MSG1, MSG2).provisional = True
    return backend


def store(backend: MemoryBackend) -> MemoryUpstream:
    return backend.stores["alice"]


async def test_login_and_uidl_measure_nothing_and_stat_measures_once(
    backend: MemoryBackend,
) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN,
        "S: +OK maildrop has 2 messages",  # no octets until they are exact
        "C: UIDL", "S: +OK unique-id listing follows", "S: 1 m1", "S: 2 m2", "S: .",
    )  # fmt: skip
    assert store(backend).measured == []
    await assert_dialogue(
        session, out,
        "C: STAT", "S: +OK 2 44",
        "C: LIST", "S: +OK scan listing follows", "S: 1 18", "S: 2 26", "S: .",
        "C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
    )  # fmt: skip
    assert store(backend).measured == [("m1", "m2")]


async def test_list_of_one_message_measures_only_that_one(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "S~ .*", "C: LIST 2", "S: +OK 2 26", "C: LIST 2", "S: +OK 2 26"
    )
    assert store(backend).measured == [("m2",)]


async def test_retr_tells_the_exact_size_without_a_list_first(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "S~ .*",
        "C: TOP 2 0", "S: +OK 21 octets", "S: Subject: b", "S: ", "S: .",  # TOP needs no size
        "C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
        "C: LIST", "S: +OK scan listing follows", "S: 1 18", "S: 2 26", "S: .",
    )  # fmt: skip
    assert store(backend).measured == [("m2",), ("m1",)]


async def test_a_deleted_message_is_not_measured(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN, "S~ .*", "C: DELE 1", "S~ .*", "C: STAT",
                          "S: +OK 1 26")  # fmt: skip
    assert store(backend).measured == [("m2",)]


async def test_a_failed_measurement_is_an_error_not_an_inexact_size(
    backend: MemoryBackend,
) -> None:
    store(backend).fail_measure = True
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "S~ .*",
        "C: STAT", "S~ -ERR \\[SYS/TEMP\\] .*",
        "C: LIST 2", "S~ -ERR \\[SYS/TEMP\\] .*",
        "C: RETR 2", "S~ -ERR \\[SYS/TEMP\\] .*",
        "C: NOOP", "S: +OK",
    )  # fmt: skip
    store(backend).fail_measure = False
    await assert_dialogue(session, out, "C: STAT", "S: +OK 2 44", "C: QUIT", "S: +OK bye")
    assert store(backend).mutations == []


class _ListsOnly:
    """A mailbox without `measure`: every size it lists is exact."""

    async def list(self, **options: object) -> list[RemoteMessage]:
        return []

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        yield b""

    async def dispose(self, identities: object, how: object) -> object:
        raise AssertionError("not called")

    async def close(self) -> None:
        return None


async def test_the_timing_wrapper_passes_measure_and_withheld_through() -> None:
    upstream = MemoryUpstream("secret", provisional=True)
    upstream.add(MSG2, flags={"hide"})
    upstream.add(MSG1)
    inner = MemoryMailbox(upstream)
    timed = TimedMailbox(inner, "memory")
    listed = await timed.list(hidden_keyword="hide")
    assert [m.exact for m in listed] == [False] and timed.withheld == {"m1"}
    measurer = measurer_of(timed)
    assert measurer is not None and await measurer.measure(["m2"]) == {"m2": 18}
    assert await TimedMailbox(_ListsOnly(), "x").measure(["m1"]) == {}  # type: ignore[arg-type]


async def test_an_answer_prepared_ahead_is_not_measured_again(backend: MemoryBackend) -> None:
    # RETR 1 prepares message 2 ahead (the client reads in order); that answer counted its
    # octets, so RETR 2 announces them without a measurement, and LIST agrees afterwards
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "S~ .*",
        "C: RETR 1", "S: +OK 18 octets", "S: Subject: a", "S: ", "S: hi", "S: .",
        "C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
        "C: LIST", "S: +OK scan listing follows", "S: 1 18", "S: 2 26", "S: .",
    )  # fmt: skip
    assert store(backend).measured == [("m1",)]


@given(
    listed=st.lists(st.integers(0, 10**6), max_size=12),
    found=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 10**6)), max_size=20),
)
def test_measuring_one_at_a_time_equals_measuring_at_once(
    listed: list[int], found: list[tuple[int, int]]
) -> None:
    # what RETRs learn one message at a time, and what a STAT learns at once, agree; an
    # identity not in the snapshot (a message measured but gone) changes nothing
    messages = [RemoteMessage(f"m{i}", size, exact=False) for i, size in enumerate(listed)]
    sizes = {f"m{index}": size for index, size in found}
    uidls = [f"u{i}" for i in range(len(listed))]
    at_once, one_by_one = Snapshot(messages, uidls), Snapshot(messages, uidls)
    at_once.measured(sizes)
    for identity, size in sizes.items():
        one_by_one.measured({identity: size})
    expected = with_exact_sizes(messages, sizes)
    for snapshot in (at_once, one_by_one):
        assert [e.message for e in snapshot.live()] == expected
        assert snapshot.exact() == all(m.exact for m in expected)
        assert snapshot.provisional() == [m.identity for m in expected if not m.exact]


async def test_a_message_without_an_estimate_is_not_prepared_ahead(
    backend: MemoryBackend,
) -> None:
    # a size of 0 that is not exact says nothing: the message could be of any size, and QUIT
    # would wait for its preparation; an estimated one (MSG1 after RETR 2) is prepared
    store(backend).estimates = False
    fetched: list[str] = []
    fetch = MemoryMailbox.fetch

    def counted(self: MemoryMailbox, identity: str, **options: int | None) -> AsyncIterator[bytes]:
        fetched.append(identity)
        return fetch(self, identity, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemoryMailbox, "fetch", counted)
        session, out = make_session(backend)
        await assert_dialogue(
            session, out, *LOGIN, "S~ .*",
            "C: RETR 1", "S: +OK 18 octets", "S: Subject: a", "S: ", "S: hi", "S: .",
            "C: QUIT", "S: +OK bye",
        )  # fmt: skip
    assert fetched == ["m1"]  # message 2 was not read ahead
