"""The Graph backend's listing: offset paging confirmed, delta rounds, folders, and logs.

This module owns the tests of how the Graph backend lists a folder against the fake Graph:
a listing disturbed while it is paged is redone, nextLinks are followed (never to another
origin), folders are found by path, the delta listing equals a full one whatever changed,
an unchanged folder costs one request, and nothing secret reaches the log.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.graph.spool import Normaliser
from popbridge.contract import (
    Backend,
    Credentials,
    Disposition,
    DispositionKind,
    expire_policy,
    measurer_of,
    withheld_by,
)
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    MessageGone,
)
from popbridge.pop3.wire import BodyEncoder, normalised_size
from popbridge.store.listings import MemoryListings
from tests.backends.contract import (
    HIDDEN,
    by_subject,
    message,
    read_all,
    subject_of,
)
from tests.backends.graph_harness import (  # noqa: F401  (used by name)
    OTHER_TOKEN,
    TOKEN,
    USER,
    GraphHarness,
    fake_fixture,
    plain_fixture,
)

# ------------------------------------------------------------------- listing


async def test_a_listing_disturbed_while_paged_is_redone(plain: GraphHarness) -> None:
    plain.seed([message(f"m{n:02}") for n in range(12)])
    removed: list[str] = []

    def remove_once(skip: int) -> None:
        if skip == 5 and not removed:  # between pages: everything after shifts left by one
            victim = plain.fake.in_folder("inbox")[0]
            removed.append(subject_of(victim.mime))
            plain.fake.remove(victim)

    plain.fake.on_page = remove_once
    async with plain.opened(page_size=5) as mailbox:
        subjects = list(await by_subject(mailbox))
    assert removed == ["m00"]
    assert subjects == [f"m{n:02}" for n in range(1, 12)]  # none skipped, none twice


async def test_small_pages_follow_next_links(plain: GraphHarness) -> None:
    plain.seed([message(f"p{n:02}") for n in range(7)])
    async with plain.opened(page_size=2) as mailbox:
        assert list(await by_subject(mailbox)) == [f"p{n:02}" for n in range(7)]
    assert any("%24skip=6" in p or "$skip=6" in p for _, p, _ in plain.fake.requests)


@pytest.mark.parametrize("remembered", [False, True], ids=["full", "delta"])
async def test_a_message_deleted_before_it_is_measured_is_left_out_and_gone(
    plain: GraphHarness, remembered: bool
) -> None:
    doomed, kept = plain.fake.seed([message("doomed"), message("kept")])

    def delete_doomed(message_id: str) -> None:
        if message_id == doomed.id and doomed in plain.fake.messages:
            plain.fake.remove(doomed)  # another client, between the listing and the download

    plain.fake.on_value = delete_doomed
    memory = MemoryListings().for_account("alice") if remembered else None
    async with plain.opened() as mailbox:
        listed = await mailbox.list(memory=memory)
        assert [m.identity for m in listed] == [doomed.id, kept.id]
        measurer = measurer_of(mailbox)
        assert measurer is not None
        sizes = await measurer.measure([doomed.id, kept.id])  # a 404 for the doomed one
        assert sizes == {kept.id: len(kept.mime)}  # left out, never a wrong size
        with pytest.raises(MessageGone):
            await read_all(mailbox, doomed.id)
    state = await memory.load() if memory is not None else None
    assert memory is None or (
        state is not None and [m.exact for m in state.messages] == [False, True]
    )


async def test_a_next_link_to_another_origin_is_refused(plain: GraphHarness) -> None:
    plain.seed([message(f"l{n}") for n in range(3)])
    plain.fake.foreign_links = True
    async with plain.opened(page_size=1) as mailbox:
        with pytest.raises(BackendFailure, match="points elsewhere"):
            await mailbox.list()


async def test_no_token_or_body_reaches_the_log(
    plain: GraphHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plain.seed([message("secret body line", 3)])
    plain.fake.statuses = [(429, "ApplicationThrottled")]
    async with plain.opened() as mailbox:
        listed = await mailbox.list(memory=MemoryListings().for_account("alice"))
        await read_all(mailbox, listed[0].identity)
        plain.fake.batch_throttle = 1
        assert (await mailbox.dispose([listed[0].identity], Disposition(DispositionKind.SEEN))).ok
    with pytest.raises(AuthFailed):
        await plain.backend().open(Credentials(USER, OTHER_TOKEN, "oauth2"))
    assert caplog.records
    assert TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text
    assert "secret body line" not in caplog.text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_the_spool_counts_as_the_pop3_encoder_sends(data: bytes, cuts: list[int]) -> None:
    pieces, rest = [], data
    for size in cuts:
        pieces.append(rest[:size])
        rest = rest[size:]
    pieces.append(rest)
    normaliser = Normaliser()
    out = b"".join(normaliser.feed(piece) for piece in pieces) + normaliser.finish()
    assert normaliser.octets == len(out) == normalised_size(data)
    encoder = BodyEncoder()
    sent = b"".join(encoder.feed(piece) for piece in [out]) + encoder.finish()
    assert encoder.octets == len(out)  # the core sends exactly what was counted
    assert sent.endswith(b".\r\n")


async def test_a_folder_path_is_the_maildrop(plain: GraphHarness) -> None:
    scans = plain.fake.add_folder("Scans", parent=plain.fake.folder("inbox").id)
    plain.fake.seed([message("scanned")], folder="Scans")
    plain.seed([message("inbox")])
    async with plain.opened(folder="inbox/Scans") as mailbox:
        assert list(await by_subject(mailbox)) == ["scanned"]
    assert scans.name == "Scans"
    with pytest.raises(Exception, match="no folder"):
        await plain.backend(folder="inbox/Nope").open(plain.credentials)


# ------------------------------------------------------- incremental listing


async def _listing(harness: GraphHarness, backend: Backend, **options: Any) -> list[Any]:
    """The listing, and as its last entry what the mailbox withheld (hidden messages)."""
    mailbox = await backend.open(harness.credentials)
    try:
        return [*await mailbox.list(**options), withheld_by(mailbox)]
    finally:
        await mailbox.close()


async def test_delta_listing_equals_a_full_listing_whatever_changed(plain: GraphHarness) -> None:
    rng = random.Random(1939)
    plain.seed([message(f"s{n}") for n in range(6)])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend(page_size=3)
    done = plain.fake.folder("Done").id
    inbox = plain.fake.folder("inbox").id
    for step in range(30):
        fake = plain.fake
        action = rng.choice(["add", "remove", "move out", "move in", "read", "hide", "unhide"])
        pick = rng.choice(fake.messages) if fake.messages else None
        if action == "add" or pick is None:
            fake.seed([message(f"new {step}")])
        elif action == "remove":
            fake.remove(pick)
        elif action in ("move out", "move in"):
            fake.touch(pick, folder=done if action == "move out" else inbox)
        elif action == "read":
            fake.touch(pick, is_read=True)
        else:
            fake.touch(pick, categories=[HIDDEN.upper()] if action == "hide" else [])
        if step % 7 == 3:
            fake.expire_delta_tokens()  # the token expired: a full round
        incremental = await _listing(plain, backend, memory=memory, hidden_keyword=HIDDEN)
        full = await _listing(plain, backend, hidden_keyword=HIDDEN)
        assert incremental == full, (step, action)


async def test_an_unchanged_folder_costs_one_delta_request(plain: GraphHarness) -> None:
    plain.seed([message(f"u{n}") for n in range(10)])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend()
    first = await _listing(plain, backend, memory=memory)
    assert first[-1] == frozenset()
    plain.fake.requests.clear()
    assert await _listing(plain, backend, memory=memory) == first
    paths = [path for _, path, _ in plain.fake.requests]
    assert sum("/messages/delta" in path for path in paths) == 1
    assert not any(path.endswith("/$value") for path in paths)
    assert not any("/messages?" in path for path in paths)


async def test_messages_moved_away_are_removed_by_delta(plain: GraphHarness) -> None:
    (away, stays) = plain.fake.seed([message("away"), message("stays")])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend()
    assert len(await _listing(plain, backend, memory=memory)) == 3
    plain.fake.touch(away, folder=plain.fake.folder("Done").id)
    (left, _) = await _listing(plain, backend, memory=memory)
    assert left.identity == stays.id


# -------------------------------------------------------------------- windows


async def test_a_window_of_the_newest_shows_only_those(plain: GraphHarness) -> None:
    stored = plain.fake.seed([message(f"w{n}") for n in range(6)])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend(window_newest=3)
    assert expire_policy(backend) is None  # RFC 2449 §6.7: no day count describes this window
    *listed, withheld = await _listing(plain, backend, memory=memory)
    assert [m.identity for m in listed] == [m.id for m in stored[3:]]
    assert withheld == {m.id for m in stored[:3]}
    assert plain.fake.downloads == 0  # a listing downloads nothing
    plain.fake.remove(stored[5])  # an older message slides into the window
    *listed, _ = await _listing(plain, backend, memory=memory)
    assert [m.identity for m in listed] == [m.id for m in stored[2:5]]


async def test_a_window_of_days_shows_only_recent_messages(plain: GraphHarness) -> None:
    old, recent = plain.fake.seed([message("old"), message("recent")])
    recent.received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    backend = plain.backend(window_days=2)
    assert expire_policy(backend) == "2"
    *listed, withheld = await _listing(plain, backend)
    assert [m.identity for m in listed] == [recent.id]
    assert withheld == {old.id}
    assert expire_policy(plain.backend()) == "NEVER"


@pytest.mark.parametrize("status", [200, 400], ids=["reply", "error"])
async def test_json_nested_past_the_parser_is_a_backend_failure(
    plain: GraphHarness, status: int
) -> None:
    # a few kilobytes of "[" raise RecursionError in json.loads: a misbehaving upstream
    # must give a clean error, not an exception nobody expects
    plain.seed([message("one", 3)])
    plain.fake.raw = [(status, b"[" * 200_000 + b"]" * 200_000)]
    with pytest.raises(BackendFailure):
        await plain.backend().open(plain.credentials)
