"""Read-ahead of small messages: the plan alone, then against a real Dovecot through a
recording proxy (batched UID FETCH, PEEK only, bounded, and right when mail vanishes)."""

from __future__ import annotations

import re

from backends.imap.readahead import Budget, ReadAhead
from tests.backends.contract import read_all
from tests.backends.test_imap import ImapHarness, harness  # noqa: F401 - the fixture

ORDER = [(0, uid) for uid in range(1, 11)]
SIZES = dict.fromkeys(ORDER, 100)


def planner(**options: int) -> ReadAhead:
    ahead = ReadAhead(budget=Budget(10_000), **options)
    ahead.listed(ORDER, dict(SIZES))
    return ahead


def test_reads_ahead_only_once_retrievals_follow_the_listing() -> None:
    ahead = planner(max_messages=4)
    assert ahead.plan((0, 1), whole_limit=1000) == [(0, 1)]
    assert ahead.plan((0, 5), whole_limit=1000) == [(0, 5)]  # a jump: no pattern yet
    assert ahead.plan((0, 6), whole_limit=1000) == [(0, 6), (0, 7), (0, 8), (0, 9), (0, 10)]


def test_budgets_and_size_limits_cut_the_plan() -> None:
    ahead = planner(max_bytes=350)
    ahead.plan((0, 1), whole_limit=1000)
    assert ahead.plan((0, 2), whole_limit=1000) == [(0, 2), (0, 3), (0, 4)]
    shared = Budget(250)
    other = ReadAhead(budget=shared)
    other.listed(ORDER, dict(SIZES))
    other.plan((0, 1), whole_limit=1000)
    assert other.plan((0, 2), whole_limit=1000) == [(0, 2), (0, 3)]
    big = dict(SIZES) | {(0, 4): 5000}
    limited = ReadAhead(budget=Budget(10_000))
    limited.listed(ORDER, big)
    limited.plan((0, 2), whole_limit=1000)
    assert limited.plan((0, 3), whole_limit=1000) == [(0, 3)]  # a big one stops the batch


def test_held_bodies_are_handed_out_once_and_counted_in_the_shared_budget() -> None:
    shared = Budget(10_000)
    ahead = ReadAhead(budget=shared, max_messages=4)
    ahead.listed(ORDER, dict(SIZES))
    ahead.plan((0, 1), whole_limit=1000)
    planned = ahead.plan((0, 2), whole_limit=1000)
    assert planned == [(0, 2), (0, 3), (0, 4), (0, 5), (0, 6)]
    for key in planned[1:]:
        ahead.hold(key, b"x" * 100)
    assert shared.used == 400
    assert ahead.take((0, 3)) == b"x" * 100
    assert ahead.take((0, 3)) is None
    assert shared.used == 300
    assert ahead.refill(whole_limit=1000) == []  # enough still held
    ahead.take((0, 4))
    ahead.take((0, 5))
    assert ahead.refill(whole_limit=1000) == [(0, 7), (0, 8), (0, 9), (0, 10)]
    ahead.forget()
    assert shared.used == 0


def test_other_folders_are_never_in_the_same_batch() -> None:
    ahead = ReadAhead(budget=Budget(10_000))
    order = [(0, 1), (0, 2), (1, 1), (0, 3)]
    ahead.listed(order, dict.fromkeys(order, 10))
    ahead.plan((0, 1), whole_limit=100)
    assert ahead.plan((0, 2), whole_limit=100) == [(0, 2)]


async def test_sequential_retrieval_is_batched_and_exact(harness: ImapHarness) -> None:  # noqa: F811
    expected = harness.seed_generated(40, 1500)
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listing = await mailbox.list()
        bodies = [b"".join(await read_all(mailbox, entry.identity)) for entry in listing]
    finally:
        await mailbox.close()
    assert bodies == expected
    fetches = [line for line in harness.proxy.lines if b" UID FETCH " in line.upper()]
    body_fetches = [line for line in fetches if b"BODY.PEEK[]" in line.upper()]
    assert len(body_fetches) < 10  # 40 messages, far fewer round trips
    assert any(re.search(rb"UID FETCH \d+[:,]\d+", line) for line in body_fetches)
    assert all("\\Seen" not in flags for flags in harness.dovecot.uids(harness.user).values())


async def test_a_message_expunged_meanwhile_is_gone_and_the_rest_still_arrive(
    harness: ImapHarness,  # noqa: F811
) -> None:
    expected = harness.seed_generated(6, 800)
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listing = await mailbox.list()
        assert b"".join(await read_all(mailbox, listing[0].identity)) == expected[0]
        client = harness.dovecot.imap(harness.user)
        client.select("INBOX")
        client.uid("STORE", "4", "+FLAGS.SILENT", "(\\Deleted)")
        client.uid("EXPUNGE", "4")
        client.logout()
        got = []
        for entry in listing[1:]:
            try:
                got.append(b"".join(await read_all(mailbox, entry.identity)))
            except Exception as error:
                got.append(type(error).__name__.encode())
    finally:
        await mailbox.close()
    assert got == [expected[1], expected[2], b"MessageGone", expected[4], expected[5]]
