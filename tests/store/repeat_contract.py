"""What both SQL stores keep so that a login on an unchanged mailbox costs little.

A store's contract class mixes in `RepeatLoginContract`. The UID map's summary
(`popbridge.store.uidsummary`): an unchanged listing is answered without planning, by this
store object or another one on the same database; every change the plan reads, and the
summary's age, send the next login back to the plan. The decoded listings
(`popbridge.store.listings.Decoded`): a listing is decoded once, and a row another
instance rewrote is never answered from what this one remembers. And on a large listing
none of that Python work (digest, plan, encoding, decoding) runs on the event loop's thread
(`popbridge.store.offload`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pytest

from popbridge.contract import ListingState, RemoteMessage
from popbridge.errors import BackendFailure
from popbridge.store import listings, uidmap, uidsummary
from popbridge.store.offload import LARGE
from popbridge.store.uidsummary import REUSE_FOR
from tests.store.contract import ACCOUNT, BASE, StoreHarness, mail

Listing = list[RemoteMessage]


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts `uidmap.plan` calls (one entry per call, the listing's length)."""
    calls: list[int] = []
    real = uidmap.plan

    def counted(listing: Listing, *args: object, **kwargs: object) -> uidmap.Plan:
        calls.append(len(listing))
        return real(listing, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(uidmap, "plan", counted)
    return calls


def _changed(listing: Listing, n: int, **change: Any) -> Listing:
    return [dataclasses.replace(m, **change) if i == n else m for i, m in enumerate(listing)]


CHANGES: dict[str, Callable[[Listing], Listing]] = {
    "a size": lambda ms: _changed(ms, 1, size=ms[1].size + 1),
    "a Message-ID gone": lambda ms: _changed(ms, 1, message_id=None),
    "a Message-ID made empty": lambda ms: _changed(ms, 1, message_id=""),
    "a received time": lambda ms: _changed(ms, 1, received=BASE),
    "a received time gone": lambda ms: _changed(ms, 1, received=None),
    "an identity": lambda ms: _changed(ms, 1, identity="200.1"),
    "the order": lambda ms: [ms[1], ms[0], *ms[2:]],
    "a message gone": lambda ms: ms[1:],
    "a message more": lambda ms: [*ms, mail(9)],
}


class RepeatLoginContract:
    async def test_an_unchanged_listing_is_not_planned_again(
        self, harness: StoreHarness, plans: list[int]
    ) -> None:
        listing = [mail(n) for n in range(5)]
        store = await harness.open()
        first = await store.uidls.assign(ACCOUNT, listing)
        assert await store.uidls.assign(ACCOUNT, list(listing)) == first
        other = await harness.open()  # another instance on the same database
        assert await other.uidls.assign(ACCOUNT, listing) == first
        assert plans == [5]

    @pytest.mark.parametrize("change", sorted(CHANGES))
    async def test_whatever_the_plan_reads_plans_again(
        self, harness: StoreHarness, plans: list[int], change: str
    ) -> None:
        listing = [mail(n) for n in range(4)]
        store = await harness.open()
        await store.uidls.assign(ACCOUNT, listing)
        await store.uidls.assign(ACCOUNT, CHANGES[change](listing))
        assert len(plans) == 2

    async def test_withheld_identities_are_part_of_the_listing(
        self, harness: StoreHarness, plans: list[int]
    ) -> None:
        listing = [mail(n) for n in range(4)]
        store = await harness.open()
        await store.uidls.assign(ACCOUNT, listing[1:], withheld={"100.0"})
        await store.uidls.assign(ACCOUNT, listing[1:])
        await store.uidls.assign(ACCOUNT, listing[1:], withheld={"100.0"})
        assert len(plans) == 3

    async def test_an_old_summary_or_a_clock_set_back_plans_again(
        self, harness: StoreHarness, plans: list[int]
    ) -> None:
        listing = [mail(n) for n in range(3)]
        store = await harness.open()
        first = await store.uidls.assign(ACCOUNT, listing)
        harness.clock.now += REUSE_FOR - 1
        assert await store.uidls.assign(ACCOUNT, listing) == first
        harness.clock.now += 1
        assert await store.uidls.assign(ACCOUNT, listing) == first
        harness.clock.now -= 10
        assert await store.uidls.assign(ACCOUNT, listing) == first
        assert len(plans) == 3

    async def test_a_failed_plan_leaves_the_summary_as_it_was(
        self, harness: StoreHarness, plans: list[int]
    ) -> None:
        listing = [mail(n) for n in range(3)]
        store = await harness.open()
        first = await store.uidls.assign(ACCOUNT, listing)
        with pytest.raises(BackendFailure, match="twice"):
            await store.uidls.assign(ACCOUNT, [*listing, listing[0]])
        assert await store.uidls.assign(ACCOUNT, listing) == first
        assert len(plans) == 2

    async def test_a_listing_is_decoded_once_until_another_instance_rewrites_it(
        self, harness: StoreHarness
    ) -> None:
        one, other = await harness.open(), await harness.open()
        first = ListingState("t1", tuple(mail(n) for n in range(3)))
        await one.listings.for_account(ACCOUNT).save(first)
        assert await one.listings.for_account(ACCOUNT).load() is first
        loaded = await other.listings.for_account(ACCOUNT).load()
        assert loaded == first and await other.listings.for_account(ACCOUNT).load() is loaded
        second = ListingState("t2", first.messages[1:])
        await other.listings.for_account(ACCOUNT).save(second)
        assert await one.listings.for_account(ACCOUNT).load() == second
        unkeepable = ListingState("t3", (RemoteMessage("1.1", 5, "<a\0b>"),))
        await one.listings.for_account(ACCOUNT).save(unkeepable)
        assert await other.listings.for_account(ACCOUNT).load() is None

    async def test_work_on_a_large_listing_leaves_the_event_loop(
        self, harness: StoreHarness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        on_loop: dict[str, list[bool]] = {}
        loop_thread = threading.get_ident()
        for module, name in WORK:
            real = getattr(module, name)
            monkeypatch.setattr(
                module, name, _watched(real, on_loop.setdefault(name, []), loop_thread)
            )
        listing = [mail(n) for n in range(LARGE)]
        store, other = await harness.open(), await harness.open()
        await store.uidls.assign(ACCOUNT, listing)
        await store.listings.for_account(ACCOUNT).save(ListingState("t", tuple(listing)))
        await other.listings.for_account(ACCOUNT).load()  # not decoded there yet
        assert on_loop == {name: [False] for _, name in WORK}


WORK = [
    (uidsummary, "digest"),
    (uidmap, "plan"),
    (listings, "encode_or_none"),
    (listings, "decode"),
]


def _watched(real: Callable[..., Any], calls: list[bool], loop_thread: int) -> Callable[..., Any]:
    def watched(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.get_ident() == loop_thread)
        return real(*args, **kwargs)

    return watched
