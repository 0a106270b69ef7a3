"""The UID map's rules as properties over random mailbox histories (no database).

A simulated upstream delivers, deletes, duplicates and renames messages (UIDVALIDITY
resets, a broken server reusing identities), and after each change the planner assigns
UIDLs, its plan applied to in-memory tables as a store would. Whatever happens, a UIDL
never names two different messages (RFC 1939 section 7), every listing's UIDLs are valid
and unique, an unchanged identity keeps its UIDL, and a message with a unique fingerprint
keeps its UIDL through any number of renames.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbridge.contract import RemoteMessage
from popbridge.errors import BackendFailure
from popbridge.store import uidmap
from popbridge.store.uidl import is_valid_uidl

BASE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Hints:
    message_id: str | None
    size: int
    received: datetime


@dataclass
class Upstream:
    """The true messages (by number) and the identities the server shows them under."""

    validity: int = 1
    next_uid: int = 1
    shown: dict[int, str] = field(default_factory=dict)  # message number -> identity
    hints: dict[int, Hints] = field(default_factory=dict)
    retired: dict[str, Hints] = field(default_factory=dict)  # identity -> last owner's hints

    def deliver(self, number: int, hints: Hints, identity: str | None = None) -> None:
        if identity is None:
            identity = f"{self.validity}.{self.next_uid}"
            self.next_uid += 1
        self.shown[number] = identity
        self.hints[number] = hints

    def delete(self, number: int) -> None:
        self.retired[self.shown.pop(number)] = self.hints[number]

    def reset(self) -> None:  # RFC 3501 2.3.1.1: every message renamed
        self.validity += 1
        for number in sorted(self.shown, reverse=True):
            self.shown[number] = f"{self.validity}.{self.next_uid}"
            self.next_uid += 1

    def listing(self) -> tuple[list[int], list[RemoteMessage]]:
        numbers = sorted(self.shown)
        messages = [
            RemoteMessage(self.shown[n], h.size, h.message_id, h.received)
            for n in numbers
            for h in [self.hints[n]]
        ]
        return numbers, messages


class Tables:
    """A store's rows for one account, changed only by applying plans."""

    def __init__(self) -> None:
        self.live: dict[str, uidmap.Row] = {}
        self.tombs: dict[str, uidmap.Row] = {}

    def assign(self, messages: list[RemoteMessage], now: int) -> list[str]:
        counter = iter(range(10**9))
        plan = uidmap.plan(
            messages, list(self.live.values()), list(self.tombs.values()), now=now,
            mint=lambda: f"~epoch.{next(counter)}-{len(self.tombs)}-{len(self.live)}",
        )  # fmt: skip
        for identity in plan.forget:
            del self.live[identity]
        for uidl in plan.unbury:
            self.tombs.pop(uidl)
        for row in plan.remember:
            assert row.identity is not None and row.identity not in self.live
            self.live[row.identity] = row
        for row in plan.bury:
            assert row.uidl not in self.tombs
            self.tombs[row.uidl] = row
        uidls = [r.uidl for r in self.live.values()] + list(self.tombs)
        assert len(uidls) == len(set(uidls))  # the UNIQUE constraints a database enforces
        return plan.uidls


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "copy", "delete", "reset", "reuse", "list"]),
        st.integers(0, 10**6),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_a_uidl_never_names_two_messages(operations: list[tuple[str, int, bool]]) -> None:
    upstream, tables = Upstream(), Tables()
    owner: dict[str, int] = {}  # UIDL -> the message it was first given to
    last: dict[int, tuple[str, str]] = {}  # message -> (identity, UIDL) at its last listing
    delivered = 0
    for operation, pick, flag in [*operations, ("list", 0, False)]:
        numbers = sorted(upstream.shown)
        if operation == "deliver" or (operation in ("copy", "delete") and not numbers):
            delivered += 1
            mid = None if flag else f"<{delivered}@x>"
            received = BASE + timedelta(seconds=delivered)
            upstream.deliver(delivered, Hints(mid, 100 + pick % 7, received))
        elif operation == "copy":  # identical hints: IMAP COPY keeps INTERNALDATE
            delivered += 1
            upstream.deliver(delivered, upstream.hints[numbers[pick % len(numbers)]])
        elif operation == "delete":
            upstream.delete(numbers[pick % len(numbers)])
        elif operation == "reset":
            upstream.reset()
        elif operation == "reuse" and upstream.retired:
            identity = sorted(upstream.retired)[pick % len(upstream.retired)]
            delivered += 1
            hints = Hints(f"<{delivered}@x>", 50, BASE + timedelta(days=1, seconds=delivered))
            del upstream.retired[identity]
            upstream.deliver(delivered, hints, identity)  # a broken server reuses it
        numbers, messages = upstream.listing()
        uidls = tables.assign(messages, now=1_000_000)
        assert len(set(uidls)) == len(uidls) and all(map(is_valid_uidl, uidls))
        for number, message, uidl in zip(numbers, messages, uidls, strict=True):
            assert owner.setdefault(uidl, number) == number
            if number in last and last[number][0] == message.identity:
                assert last[number][1] == uidl  # same identity, same UIDL
            last[number] = (message.identity, uidl)


def test_a_unique_message_keeps_its_uidl_through_many_renames() -> None:
    upstream, tables = Upstream(), Tables()
    for n in range(1, 30):
        upstream.deliver(n, Hints(f"<{n}@x>", 100 + n % 3, BASE + timedelta(seconds=n % 5)))
    first = dict(zip(*_listed(upstream, tables), strict=True))
    for _ in range(5):
        upstream.reset()
        assert dict(zip(*_listed(upstream, tables), strict=True)) == first


def _listed(upstream: Upstream, tables: Tables) -> tuple[list[int], list[str]]:
    numbers, messages = upstream.listing()
    return numbers, tables.assign(messages, now=1_000_000)


def test_plan_details() -> None:
    """The corners the histories above rarely reach, one by one."""
    naive = RemoteMessage("1.1", 10, "<a@x>", datetime(2024, 1, 1))
    aware = RemoteMessage("1.1", 10, "<a@x>", datetime(2024, 1, 1, tzinfo=UTC))
    assert uidmap.mark_of(naive) == uidmap.mark_of(aware)
    assert uidmap.mark_of(RemoteMessage("1.1", 10, "<a@x>")) is None
    with pytest.raises(BackendFailure):
        uidmap.plan([aware, aware], [], [], now=0, mint=lambda: "~x.y")
    with pytest.raises(RuntimeError):  # a UIDL outside RFC 1939 section 7 never leaves
        uidmap.plan([aware], [], [uidmap.Row(None, "1.1")], now=0, mint=lambda: "two words")
    row = uidmap.Row("1.1", "1.1", uidmap.mark_of(aware), 10, seen=0)
    assert uidmap.plan([aware], [row], [], now=10, mint=lambda: "~x.y").touch == []
    later = uidmap.plan([aware], [row], [], now=uidmap.TOUCH_INTERVAL + 1, mint=lambda: "~x.y")
    assert later.touch == ["1.1"] and later.uidls == ["1.1"]


HOUR = timedelta(hours=1)
MARKS = [  # computed once by the first implementation: stored rows hold these
    (RemoteMessage("1.1", 10, "<a@x>", datetime(2024, 1, 1, tzinfo=UTC)), "mjA3ctSshg3OxGCwOtBhs"),
    (
        RemoteMessage("2", 9, None, datetime(2001, 9, 9, 1, 46, 40, tzinfo=timezone(-HOUR * 5))),
        "d3eW3IAq_OnjHgAMpYor8",
    ),
    (
        RemoteMessage("3", 8, "<\udcff\u00e9@x>", datetime(2024, 1, 1, 12, 0, 0, 999999)),
        "mWACxXmbv77iJHy72-zfR",
    ),
]


@pytest.mark.parametrize(("message", "mark"), MARKS)
def test_marks_never_change(message: RemoteMessage, mark: str) -> None:
    # a changed mark would take every stored row for another message: new UIDLs for all
    assert uidmap.mark_of(message) == mark


@given(st.text(max_size=40) | st.none(), st.integers(-(2**35), 2**37))
def test_marks_are_base64url_of_sha256(message_id: str | None, seconds: int) -> None:
    received = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    text = f"{message_id or ''}\0{seconds}".encode("utf-8", "surrogatepass")
    expected = base64.urlsafe_b64encode(hashlib.sha256(text).digest()[:15]).decode()
    kind = "d" if message_id is None else "m"
    assert uidmap.mark_of(RemoteMessage("1", 1, message_id, received)) == kind + expected


def test_a_tombstone_whose_identity_names_another_message_loses_the_identity() -> None:
    old = RemoteMessage("1.1", 10, "<a@x>", BASE)
    tomb = uidmap.Row("1.1", "kept-uidl", uidmap.mark_of(old), 10, seen=0)
    other = RemoteMessage("1.1", 10, "<b@x>", BASE)
    result = uidmap.plan([other], [], [tomb], now=10**9, mint=lambda: "~e.fresh")
    assert result.uidls == ["1.1"]
    assert result.unbury == ["kept-uidl"]
    assert result.bury == [uidmap.Row(None, "kept-uidl", tomb.mark, 10, 0)]
    same = uidmap.plan([old], [], [tomb], now=10**9, mint=lambda: "~e.fresh")
    assert same.uidls == ["kept-uidl"] and same.bury == []
