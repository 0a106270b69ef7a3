"""The Gmail backend's listing memory: sizes measured once, history.list, and its 404.

With the store's listing memory the backend keeps the historyId (read before the listing)
and the sizes measured when a client was told them (here through `as_told`, as the core
measures); a later listing asks history.list what changed and looks only at
those messages. The listing must always equal a full one, also after another client moved,
labelled or deleted messages in between, and a historyId Gmail no longer accepts (404)
means a full listing that still reuses the sizes measured before.
"""

from __future__ import annotations

import json

from popbridge.contract import ListingMemory, ListingState, RemoteMessage
from popbridge.errors import BackendUnavailable
from popbridge.store.listings import MemoryListings
from tests.backends.contract import as_told, message
from tests.backends.gmail_harness import (  # noqa: F401  (fixtures, used by name)
    USER,
    GmailHarness,
    fake_fixture,
    harness_fixture,
)

HIDDEN = "popbridge-done"


async def _list(
    harness: GmailHarness, memory: object = None, hidden: str | None = None
) -> list[RemoteMessage]:
    """The listing as a client is told it: sizes not yet exact measured (`as_told`)."""
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list(hidden_keyword=hidden, memory=memory)  # type: ignore[arg-type]
        return await as_told(mailbox, listed)
    finally:
        await mailbox.close()


async def _listed(harness: GmailHarness, memory: ListingMemory) -> list[RemoteMessage]:
    """The listing as the backend gives it, nothing measured."""
    mailbox = await harness.backend().open(harness.credentials)
    try:
        return list(await mailbox.list(memory=memory))
    finally:
        await mailbox.close()


def _calls(harness: GmailHarness, suffix: str) -> int:
    return sum(1 for _, path, _ in harness.fake.requests if path.endswith(suffix))


async def test_sizes_are_measured_once_and_history_is_used(harness: GmailHarness) -> None:
    harness.seed([message("one", line_end=b"\n"), message("two")])
    memory = MemoryListings().for_account("alice")
    first = await _list(harness, memory)
    assert harness.fake.downloads == 2
    state = await memory.load()
    assert isinstance(state, ListingState) and state.messages == tuple(first)
    assert json.loads(state.token)["history"]
    assert await _list(harness, memory) == first
    assert harness.fake.downloads == 2  # nothing measured again
    assert _calls(harness, "/history") == 1
    harness.seed([message("three")])
    third = await _list(harness, memory)
    assert harness.fake.downloads == 3
    assert [m.identity for m in third[:2]] == [m.identity for m in first]
    assert third == await _list(harness)  # equal to a full listing


async def test_changes_by_another_client_equal_a_full_listing(harness: GmailHarness) -> None:
    ids = harness.seed([message(f"m{n}") for n in range(6)])
    memory = MemoryListings().for_account("alice")
    await _list(harness, memory, HIDDEN)
    fake = harness.fake
    done = fake.add_label(USER, HIDDEN)
    fake.change_labels(USER, ids[0], set(), {"INBOX"})  # archived elsewhere
    fake.remove(USER, ids[1])  # deleted for good
    fake.change_labels(USER, ids[2], {done}, set())  # hidden by the keyword label
    fake.change_labels(USER, ids[3], {"STARRED"}, {"UNREAD"})  # still in the maildrop
    fake.change_labels(USER, ids[0], {"INBOX"}, set())  # and back again
    later = harness.seed([message("new")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        again = await as_told(mailbox, await mailbox.list(hidden_keyword=HIDDEN, memory=memory))
        assert mailbox.withheld == frozenset({ids[2]})  # type: ignore[attr-defined]
    finally:
        await mailbox.close()
    assert _calls(harness, "/history") == 1
    assert [m.identity for m in again] == [ids[0], ids[3], ids[4], ids[5], later[0]]
    assert again == await _list(harness, None, HIDDEN)


async def test_an_expired_history_id_means_a_full_listing(harness: GmailHarness) -> None:
    ids = harness.seed([message("kept"), message("gone")])
    memory = MemoryListings().for_account("alice")
    await _list(harness, memory)
    harness.fake.remove(USER, ids[1])
    harness.fake.forget_history(USER)
    new = harness.seed([message("new")])
    listed = await _list(harness, memory)
    assert [m.identity for m in listed] == [ids[0], new[0]]
    assert harness.fake.downloads == 3  # only the new one measured: sizes were remembered
    statuses = [p for _, p, _ in harness.fake.requests if p.endswith("/history")]
    assert len(statuses) == 1
    assert listed == await _list(harness)


async def test_a_token_for_another_label_is_not_trusted(harness: GmailHarness) -> None:
    harness.seed([message("a")])
    memory = MemoryListings().for_account("alice")
    await _list(harness, memory)
    state = await memory.load()
    assert state is not None
    token = json.loads(state.token) | {"label": "Label_9"}
    await memory.save(ListingState(json.dumps(token), state.messages))
    assert len(await _list(harness, memory)) == 1
    assert _calls(harness, "/history") == 0
    assert harness.fake.downloads == 1  # the remembered size still served


async def test_a_garbled_token_means_a_full_listing(harness: GmailHarness) -> None:
    harness.seed([message("a")])
    memory = MemoryListings().for_account("alice")
    await memory.save(ListingState("not json", ()))
    assert len(await _list(harness, memory)) == 1
    assert _calls(harness, "/history") == 0


async def test_sizes_measured_before_the_quota_ran_out_are_kept(
    harness: GmailHarness,
) -> None:
    harness.seed([message(f"q{n}") for n in range(40)])  # 200 units of downloads
    memory = MemoryListings().for_account("alice")
    assert len(await _listed(harness, memory)) == 40 and harness.fake.downloads == 0
    opened = []
    for _ in range(3):  # a fresh budget each time: as if a minute had passed
        mailbox = await harness.backend(units_per_minute=100, timeout=1).open(harness.credentials)
        opened.append(mailbox)
        try:
            listed = await as_told(mailbox, await mailbox.list(memory=memory))
            break
        except BackendUnavailable:
            continue
        finally:
            await mailbox.close()
    assert len(opened) == 3 and len(listed) == 40 and all(m.exact for m in listed)
    # each message measured once over three logins, but for the downloads in flight
    # (max_in_flight, 8) when a login gave up
    assert 40 <= harness.fake.downloads <= 40 + 2 * 8
    assert listed == await _list(harness)


async def test_sizes_remembered_for_another_account_are_not_used(harness: GmailHarness) -> None:
    harness.seed([message("a"), message("b")])
    memory = MemoryListings().for_account("alice")
    first = await _list(harness, memory)
    state = await memory.load()
    assert state is not None
    token = json.loads(state.token) | {"user": "someone-else@example.com"}
    wrong = tuple(RemoteMessage(m.identity, m.size + 1, received=m.received) for m in first)
    await memory.save(ListingState(json.dumps(token), wrong))
    assert await _list(harness, memory) == first  # measured again, not taken from the memory
    assert harness.fake.downloads == 4
    assert _calls(harness, "/history") == 0
