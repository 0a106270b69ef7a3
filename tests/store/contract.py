"""The store contract suite: what every durable `Store` must do, SQLite and PostgreSQL alike.

This module owns the tests both SQL stores run unchanged. A store's test module subclasses
`StoreContract` and provides a `harness` fixture: a `StoreHarness` that opens store objects
on one database (each a separate "process": its own connections), plays a crash of one,
and loses the database. The UIDL tests speak RFC 1939 section 7 (unique-ids persist and are
never reused) and RFC 3501 section 2.3.1.1 (a UIDVALIDITY change renames every message).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol

from popbridge.contract import ListingState, RemoteMessage
from popbridge.store import Store, listings
from popbridge.store.uidl import uidl_for
from popbridge.store.uidmap import RETENTION

ACCOUNT = "alice@example.org"
UIDL = re.compile(r"[\x21-\x7e]{1,70}")
BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock for the stores (Unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


class StoreHarness(Protocol):
    clock: Clock

    async def open(self) -> Store:
        """Another store object on the same database, as a second process would open it."""
        ...

    async def crash(self, store: Store) -> None:
        """The process holding `store` dies: its connections go, nothing is released."""
        ...

    async def lose(self) -> None:
        """The database is gone (file deleted, database dropped); the next open starts empty."""
        ...


def mail(
    n: int, identity: str | None = None, *, mid: str | None = "", size: int = 0
) -> RemoteMessage:
    """Message `n` under `identity` (default "100.<n>"), with hints that identify it."""
    return RemoteMessage(
        identity=identity or f"100.{n}",
        size=size or 1000 + n,
        message_id=f"<m{n}@example.org>" if mid == "" else mid,
        received=BASE + timedelta(minutes=n),
    )


def renamed(messages: Sequence[RemoteMessage], validity: int) -> list[RemoteMessage]:
    """The same messages after a UIDVALIDITY change: new identities, order reversed."""
    return [
        RemoteMessage(f"{validity}.{50 + i}", m.size, m.message_id, m.received)
        for i, m in enumerate(reversed(messages))
    ]


def by_hint(messages: Sequence[RemoteMessage], uidls: Sequence[str]) -> dict[str | None, str]:
    return {m.message_id: u for m, u in zip(messages, uidls, strict=True)}


async def eventually_acquire(store: Store, key: str) -> bool:
    """Poll for a lock the server frees asynchronously (bounded, not a timing assertion)."""
    for _ in range(200):
        lease = await store.locks.try_acquire(key)
        if lease is not None:
            await lease.release()
            return True
        await asyncio.sleep(0.05)
    return False


class StoreContract:
    """Every durable store runs these; its module provides the `harness` fixture."""

    # ------------------------------------------------------------ UID map

    async def test_first_seen_uidls_are_derived_and_valid(self, harness: StoreHarness) -> None:
        store = await harness.open()
        odd = ["100.1", "x" * 100, "has space", "~tilde", "g=raph/id+", "é"]
        listing = [mail(n, identity) for n, identity in enumerate(odd)]
        uidls = await store.uidls.assign(ACCOUNT, listing)
        assert uidls == [uidl_for(identity) for identity in odd]
        assert all(UIDL.fullmatch(u) for u in uidls) and len(set(uidls)) == len(uidls)

    async def test_uidls_are_stable_across_sessions_and_reopen(self, harness: StoreHarness) -> None:
        listing = [mail(n) for n in range(5)]
        store = await harness.open()
        first = await store.uidls.assign(ACCOUNT, listing)
        assert await store.uidls.assign(ACCOUNT, listing[1:]) == first[1:]
        await store.close()
        again = await harness.open()
        assert await again.uidls.assign(ACCOUNT, listing) == first

    async def test_uidvalidity_change_keeps_every_uidl(self, harness: StoreHarness) -> None:
        before = [mail(n) for n in range(6)]
        store = await harness.open()
        old = by_hint(before, await store.uidls.assign(ACCOUNT, before))
        after = renamed(before, 200)
        await store.close()
        store = await harness.open()
        assert by_hint(after, await store.uidls.assign(ACCOUNT, after)) == old
        twice = renamed(after, 300)  # a second reset: the map followed the first one
        assert by_hint(twice, await store.uidls.assign(ACCOUNT, twice)) == old
        assert by_hint(twice, await store.uidls.assign(ACCOUNT, twice)) == old

    async def test_a_copy_never_inherits_a_withheld_messages_uidl(
        self, harness: StoreHarness
    ) -> None:
        # Message 1 is hidden by the keyword disposition (or left the window) but is still
        # in the folder; a content-identical copy (same Message-ID, date and size) arrives
        # under a new identity. A keep-mail client must download the copy: fresh UIDL.
        store = await harness.open()
        original = mail(1)
        first = await store.uidls.assign(ACCOUNT, [original, mail(2)])
        copy = mail(1, "100.9")
        later = await store.uidls.assign(ACCOUNT, [mail(2), copy], withheld=["100.1"])
        assert later[0] == first[1]
        assert later[1] not in first
        # the original comes back (keyword removed): its own UIDL, not the copy's
        back = await store.uidls.assign(ACCOUNT, [original, mail(2), copy])
        assert back == [first[0], first[1], later[1]]

    async def test_a_vanished_message_still_passes_its_uidl_on(self, harness: StoreHarness) -> None:
        # the rule above must not stop the re-match it exists next to: when the original is
        # really gone (a move out and back gives it a new UID), the UIDL follows it
        store = await harness.open()
        first = await store.uidls.assign(ACCOUNT, [mail(1), mail(2)])
        assert await store.uidls.assign(ACCOUNT, [mail(2), mail(1, "100.9")]) == first[::-1]

    async def test_rematch_ignores_size_corrections_and_brings_new_mail(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        before = [mail(1), mail(2)]
        old = by_hint(before, await store.uidls.assign(ACCOUNT, before))
        await store.sizes.record(ACCOUNT, "100.1", 999)  # measured at RETR
        listed = await store.sizes.correct(ACCOUNT, before)
        assert await store.uidls.assign(ACCOUNT, listed) == [old[m.message_id] for m in before]
        after = [*renamed(before, 200), mail(3, "200.60")]
        uidls = by_hint(after, await store.uidls.assign(ACCOUNT, after))
        assert {k: uidls[k] for k in old} == old
        assert uidls[mail(3).message_id] == "200.60"

    async def test_duplicates_do_not_steal_each_others_uidl(self, harness: StoreHarness) -> None:
        store = await harness.open()
        twin = mail(7)
        before = [mail(1), twin, RemoteMessage("100.8", twin.size, twin.message_id, twin.received)]
        old = await store.uidls.assign(ACCOUNT, before)
        after = [
            RemoteMessage(f"200.{i}", m.size, m.message_id, m.received)
            for i, m in enumerate(before, 1)
        ]
        new = await store.uidls.assign(ACCOUNT, after)
        assert new[0] == old[0]  # the unambiguous one is re-matched
        assert not set(new[1:]) & set(old)  # the twins get fresh UIDLs, not each other's
        assert len(set(new)) == 3

    async def test_a_still_listed_twin_makes_the_fingerprint_ambiguous(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        one = mail(5)
        copy = RemoteMessage("100.9", one.size, one.message_id, one.received)
        old = await store.uidls.assign(ACCOUNT, [one, copy])
        moved = RemoteMessage("200.1", one.size, one.message_id, one.received)
        new = await store.uidls.assign(ACCOUNT, [copy, moved])  # one of them was renamed
        assert new[0] == old[1]
        assert new[1] not in old

    async def test_no_uidl_is_reused_after_deletes_and_new_arrivals(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        first = [mail(n) for n in range(1, 5)]
        issued = set(await store.uidls.assign(ACCOUNT, first))
        survivors = [first[0], first[2]]  # 2 and 4 were deleted
        arrivals = [mail(n) for n in range(5, 9)]
        later = await store.uidls.assign(ACCOUNT, [*survivors, *arrivals])
        assert not set(later[2:]) & issued
        issued |= set(later)
        # A broken upstream hands a deleted message's identity to a different message.
        reused = mail(9, first[1].identity)
        (uidl,) = await store.uidls.assign(ACCOUNT, [reused])
        assert uidl not in issued and UIDL.fullmatch(uidl)
        await store.close()
        store = await harness.open()
        assert await store.uidls.assign(ACCOUNT, [reused]) == [uidl]

    async def test_reused_identity_keeps_its_old_uidl_for_the_old_message(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        original = mail(1)
        (old,) = await store.uidls.assign(ACCOUNT, [original])
        impostor = mail(2, original.identity)
        (fresh,) = await store.uidls.assign(ACCOUNT, [impostor])
        assert fresh != old and fresh.startswith("~")
        back = RemoteMessage("300.1", original.size, original.message_id, original.received)
        assert await store.uidls.assign(ACCOUNT, [impostor, back]) == [fresh, old]

    async def test_messages_without_a_message_id_are_not_rematched(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        before = [mail(1, mid=None), mail(2)]
        old = await store.uidls.assign(ACCOUNT, before)
        after = renamed(before, 200)
        new = by_hint(after, await store.uidls.assign(ACCOUNT, after))
        assert new[before[1].message_id] == old[1]
        assert new[None] == "200.51" and new[None] not in old

    async def test_a_derived_uidl_used_by_another_message_is_not_given_again(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        a = mail(1, "5.1")
        (kept,) = await store.uidls.assign(ACCOUNT, [a])
        moved = RemoteMessage("6.1", a.size, a.message_id, a.received)
        assert await store.uidls.assign(ACCOUNT, [moved]) == [kept]  # "5.1" now names `moved`
        stranger = mail(2, "5.1")  # an upstream that reuses UIDVALIDITY 5
        again, minted = await store.uidls.assign(ACCOUNT, [moved, stranger])
        assert again == kept and minted != kept
        assert re.fullmatch(r"~[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{16}", minted)

    async def test_accounts_have_separate_maps(self, harness: StoreHarness) -> None:
        store = await harness.open()
        listing = [mail(1)]
        assert await store.uidls.assign("alice", listing) == ["100.1"]
        assert await store.uidls.assign("bob", [mail(2, "100.1")]) == ["100.1"]
        assert await store.uidls.assign("alice", listing) == ["100.1"]

    async def test_losing_the_store_gives_fresh_never_reused_uidls(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        a, b = mail(1, "5.1"), mail(2, "5.2")
        await store.uidls.assign(ACCOUNT, [a, b])
        minted = (await store.uidls.assign(ACCOUNT, [mail(3, "5.1")]))[0]  # identity reused
        assert minted.startswith("~")
        await harness.crash(store)
        await harness.lose()
        store = await harness.open()
        # Derived UIDLs are the same for the same identity; nothing from the lost map is
        # minted again, because a new store draws a new epoch and new random parts.
        assert await store.uidls.assign(ACCOUNT, [b]) == ["5.2"]
        again = (await store.uidls.assign(ACCOUNT, [mail(4, "5.2")]))[0]
        assert again.startswith("~") and again != minted
        assert again.split(".")[0] != minted.split(".")[0]

    async def test_long_gone_messages_are_forgotten_without_reuse(
        self, harness: StoreHarness
    ) -> None:
        store = await harness.open()
        clock = harness.clock
        kept, gone = mail(1), mail(2)
        renamed_kept = RemoteMessage("7.1", kept.size, kept.message_id, kept.received)
        await store.uidls.assign(ACCOUNT, [kept, gone])
        (held,) = await store.uidls.assign(ACCOUNT, [renamed_kept])  # not derivable from 7.1
        clock.now += RETENTION + 86400
        newcomer = mail(3)
        assert await store.uidls.assign(ACCOUNT, [newcomer]) == ["100.3"]
        # `gone` was forgotten: its fingerprint no longer re-matches a renamed copy.
        copy = RemoteMessage("8.2", gone.size, gone.message_id, gone.received)
        assert await store.uidls.assign(ACCOUNT, [newcomer, copy]) == ["100.3", "8.2"]
        # `renamed_kept` was buried: back under its identity, it gets its UIDL again,
        # and its UIDL is never handed to anything else meanwhile.
        assert await store.uidls.assign(ACCOUNT, [renamed_kept]) == [held]

    async def test_concurrent_assigns_from_two_instances_agree(self, harness: StoreHarness) -> None:
        one, two = await harness.open(), await harness.open()
        listing = [mail(n) for n in range(40)]
        first, second = await asyncio.gather(
            one.uidls.assign(ACCOUNT, listing), two.uidls.assign(ACCOUNT, listing)
        )
        assert first == second
        after = renamed(listing, 200)
        one_after, two_after = await asyncio.gather(
            one.uidls.assign(ACCOUNT, after), two.uidls.assign(ACCOUNT, after)
        )
        assert one_after == two_after
        assert by_hint(after, one_after) == by_hint(listing, first)

    # --------------------------------------------------------------- locks

    async def test_a_second_instance_gets_in_use(self, harness: StoreHarness) -> None:
        one, two = await harness.open(), await harness.open()
        lease = await one.locks.try_acquire(ACCOUNT)
        assert lease is not None
        assert await two.locks.try_acquire(ACCOUNT) is None
        assert await one.locks.try_acquire(ACCOUNT) is None  # the same instance too
        other = await two.locks.try_acquire("bob")
        assert other is not None
        await lease.release()
        await lease.release()  # idempotent
        again = await two.locks.try_acquire(ACCOUNT)
        assert again is not None
        assert await one.locks.try_acquire(ACCOUNT) is None
        await again.release()
        await other.release()

    async def test_a_crashed_holder_releases_its_lock(self, harness: StoreHarness) -> None:
        holder, other = await harness.open(), await harness.open()
        assert await holder.locks.try_acquire(ACCOUNT) is not None
        assert await other.locks.try_acquire(ACCOUNT) is None
        await harness.crash(holder)
        assert await eventually_acquire(other, ACCOUNT)

    async def test_closing_a_store_releases_its_locks(self, harness: StoreHarness) -> None:
        holder, other = await harness.open(), await harness.open()
        lease = await holder.locks.try_acquire(ACCOUNT)
        assert lease is not None
        await holder.close()
        assert await eventually_acquire(other, ACCOUNT)
        await lease.release()  # late release by a session of the closed store: harmless
        assert await eventually_acquire(other, ACCOUNT)

    # -------------------------------------------------------- sizes, accounts

    async def test_measured_sizes_persist_per_account(self, harness: StoreHarness) -> None:
        store = await harness.open()
        listing = [RemoteMessage("a", 10), RemoteMessage("b", 20)]
        assert await store.sizes.correct(ACCOUNT, listing) == listing
        await store.sizes.record(ACCOUNT, "b", 22)
        await store.sizes.record(ACCOUNT, "b", 23)
        await store.close()
        store = await harness.open()
        assert [m.size for m in await store.sizes.correct(ACCOUNT, listing)] == [10, 23]
        assert [m.size for m in await store.sizes.correct("bob", listing)] == [10, 20]

    async def test_account_records_round_trip_opaque_bytes(self, harness: StoreHarness) -> None:
        store = await harness.open()
        records = store.accounts
        assert await records.get("dev") is None
        assert await records.delete("dev") is False
        blob = bytes(range(256))
        await records.put("dev", blob)
        await records.put("älter", b"")
        await records.put("dev", blob + b"\0")
        await store.close()
        records = (await harness.open()).accounts
        assert await records.get("dev") == blob + b"\0"
        assert await records.get("älter") == b""
        assert await records.names() == ["dev", "älter"]
        assert await records.delete("dev") is True
        assert await records.names() == ["älter"]

    # ------------------------------------------------------------ listings

    async def test_a_listing_persists_per_account_exactly(self, harness: StoreHarness) -> None:
        east = timezone(timedelta(hours=5, minutes=30))
        messages = (
            mail(1),
            RemoteMessage("100.2", 0, None, None, None),
            RemoteMessage("x" * 300, 2**40, "<é@ü>", BASE.astimezone(east), "ck=1"),
            RemoteMessage("g=raph/id+", 7, "", datetime(1970, 1, 1, tzinfo=UTC), ""),
        )
        state = ListingState('{"imap": [1, 2]}', messages)
        store = await harness.open()
        assert await store.listings.for_account(ACCOUNT).load() is None
        await store.listings.for_account(ACCOUNT).save(ListingState("old", ()))
        await store.listings.for_account(ACCOUNT).save(state)
        await store.close()
        store = await harness.open()
        loaded = await store.listings.for_account(ACCOUNT).load()
        assert loaded == state
        assert loaded is not None and loaded.messages[2].received == BASE
        assert [m.received.utcoffset() for m in loaded.messages if m.received][1] == east.utcoffset(
            None
        )
        assert await store.listings.for_account("bob").load() is None

    async def test_an_unkeepable_listing_leaves_no_stale_one(self, harness: StoreHarness) -> None:
        store = await harness.open()
        memory = store.listings.for_account(ACCOUNT)
        await memory.save(ListingState("t1", (mail(1),)))
        await memory.save(ListingState("t2", (RemoteMessage("1.1", 5, "<a\0b>"),)))
        assert await memory.load() is None  # listed in full next time, never the old one

    async def test_a_large_listing_round_trips_compactly(self, harness: StoreHarness) -> None:
        messages = tuple(mail(n, f"1700000000.{n}") for n in range(1, 20_001))
        store = await harness.open()
        await store.listings.for_account(ACCOUNT).save(ListingState("big", messages))
        loaded = await store.listings.for_account(ACCOUNT).load()
        assert loaded is not None and loaded.messages == messages
        assert len(listings.encode(ListingState("big", messages))) < 16 * len(messages)
