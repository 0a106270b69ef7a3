"""The UID map's summary gives exactly what planning every login would (hypothesis).

Two SQLite stores see the same random history of one account, one upstream change (or
none) between logins: an arrival, an expunge, a message's hints changing, every identity
renamed as after a UIDVALIDITY reset, a message withheld or shown again, the order
changing, and the clock moving on or back. One store may answer from its summary, the
other must plan every time. Their UIDLs must agree at every login. Fresh UIDLs are minted from one
counter in both, so they agree too whenever both stores minted at the same moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from popbridge.contract import RemoteMessage
from popbridge.store import uidsummary
from popbridge.store.sqlite import SqliteStore, open_sqlite_store
from popbridge.store.uidsummary import REUSE_FOR, digest, reusable
from tests.store.contract import Clock

ACCOUNT = "prop@example.org"
BASE = datetime(2024, 5, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # whole seconds 0, as for no received time

texts = st.text(alphabet=st.sampled_from("a\0\n~é."), max_size=4)
FIELDS: dict[str, st.SearchStrategy[object]] = {
    "identity": texts,
    "size": st.integers(0, 3),
    "message_id": st.none() | texts,
    "received": st.none()
    | st.sampled_from([BASE, BASE.replace(tzinfo=None), BASE + timedelta(1), EPOCH]),
}
messages = st.builds(RemoteMessage, **FIELDS)


def _read(listing: list[RemoteMessage]) -> list[tuple[object, ...]]:
    """What the plan reads of each message (received as `mark_of` reads it)."""
    return [(m.identity, m.message_id, uidsummary._stamp(m.received), m.received is None, m.size)
            for m in listing]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_digests_differ_exactly_when_what_the_plan_reads_differs(
    listing: list[RemoteMessage], data: st.DataObject
) -> None:
    n = data.draw(st.integers(0, len(listing) - 1))
    field = data.draw(st.sampled_from(sorted(FIELDS)))
    value = data.draw(FIELDS[field])
    change = cast(dict[str, Any], {field: value})
    other = [replace(m, **change) if i == n else m for i, m in enumerate(listing)]
    same = _read(listing) == _read(other)
    assert (digest(listing, ()) == digest(other, ())) == same
    assert digest(listing, ()) != digest(listing, {"\0"})
    assert digest(listing, {"a"}) != digest(listing, {"b"})


def test_joined_texts_cannot_be_cut_another_way() -> None:
    one = [RemoteMessage("a\0", 1, "b"), RemoteMessage("c", 1, "")]
    other = [RemoteMessage("a", 1, "b"), RemoteMessage("\0c", 1, "")]
    assert digest(one, ()) != digest(other, ())
    assert digest(one[:1], {"x\0y"}) != digest(one[:1], {"x", "y"})


def test_a_stored_summary_must_fit_the_listing_and_be_recent() -> None:
    assert reusable(("d", "a\nb", 100), "d", 2, 100) == ["a", "b"]
    assert reusable(("d", "", 100), "d", 0, 100) == []
    assert reusable(("d", "a\nb", 100), "e", 2, 100) is None
    assert reusable(("d", "a\nb", 100), "d", 3, 100) is None
    assert reusable(("d", "a\nb", 100), "d", 2, 100 + REUSE_FOR) is None
    assert reusable(("d", "a\nb", 100), "d", 2, 99) is None
    assert reusable(None, "d", 2, 100) is None


# ----------------------------------------------------------------- the property

POOL = 8  # distinct messages the history draws from


@dataclass
class Mailbox:
    """The account's upstream folder between logins."""

    listed: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    withheld: set[int] = field(default_factory=set)
    generation: int = 0  # bumped by a UIDVALIDITY reset: every identity renamed
    hints: list[int] = field(default_factory=lambda: [0] * POOL)  # a fingerprint variant each

    def listing(self) -> list[RemoteMessage]:
        return [self.message(n) for n in self.listed if n not in self.withheld]

    def hidden(self) -> set[str]:
        return {self.message(n).identity for n in self.withheld if n in self.listed}

    def message(self, n: int) -> RemoteMessage:
        hint = self.hints[n]
        return RemoteMessage(
            identity=f"{100 + self.generation}.{n}",
            size=1000 + n + (hint == 1),
            message_id={2: None, 4: ""}.get(hint, f"<{n % 6}@example.org>"),  # some twins
            received=BASE + timedelta(minutes=n + (hint == 3)),
        )


def _change(mailbox: Mailbox, kind: str, n: int, value: int) -> None:
    """One upstream change between two logins (or none)."""
    if kind == "arrival" and n not in mailbox.listed:
        mailbox.listed.append(n)
    elif kind == "expunge" and n in mailbox.listed:
        mailbox.listed.remove(n)
    elif kind == "hint":
        mailbox.hints[n] = value
    elif kind == "reset":
        mailbox.generation += 1
    elif kind == "withhold":
        mailbox.withheld ^= {n}
    elif kind == "reorder" and mailbox.listed:
        mailbox.listed.append(mailbox.listed.pop(0))


changes = st.tuples(
    st.sampled_from(["none", "none", "arrival", "expunge", "hint", "reset", "withhold", "reorder"]),
    st.integers(0, POOL - 1),
    st.integers(0, 4),  # a message's variant: 0 as first seen, else one hint changed
    st.sampled_from([0, 0, 60, REUSE_FOR, -30]),  # the clock's step before the login
)


async def _open(path: Path, clock: Clock) -> SqliteStore:
    store = await open_sqlite_store(path, clock=clock)
    counter = itertools.count()
    store.uidls._mint = lambda: f"~fixed.{next(counter)}"
    return store


async def _replay(history: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        clock, mailbox = Clock(), Mailbox()
        summarised = await _open(Path(directory) / "a.sqlite3", clock)
        planned = await _open(Path(directory) / "b.sqlite3", clock)
        try:
            for kind, n, value, tick in history:
                _change(mailbox, kind, n, value)
                clock.now += tick
                listing, hidden = mailbox.listing(), mailbox.hidden()
                got = await summarised.uidls.assign(ACCOUNT, listing, withheld=hidden)
                with _planning_always():
                    want = await planned.uidls.assign(ACCOUNT, listing, withheld=hidden)
                assert got == want
        finally:
            await summarised.close()
            await planned.close()


@contextlib.contextmanager
def _planning_always() -> Iterator[None]:
    original = uidsummary.reusable
    uidsummary.reusable = lambda *_: None
    try:
        yield
    finally:
        uidsummary.reusable = original


@settings(max_examples=150, deadline=None)
@given(st.lists(changes, min_size=1, max_size=12))
def test_summarised_uidls_equal_planned_ones(history: list[tuple[str, int, int, int]]) -> None:
    asyncio.run(_replay(history))
