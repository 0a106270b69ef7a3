"""The Graph backend against the local fake Graph: the contract suite, identities, exact sizes.

This module runs the contract suite (`tests.backends.contract`) with immutable ids (68
characters) and with classic ids (152, ending in "="), and tests what only Graph needs:
every request asks for immutable ids, a listing downloads nothing, sizes are measured on
request once per changeKey and kept, and RETR sends what LIST announced even when the MIME
is written anew per download.
Listing is tested in `test_graph_listing`, writes, throttling and auth in `test_graph_writes`.
"""

from __future__ import annotations

import pytest

from backends.graph.mailbox import UNMEASURED
from devkit.fake_graph import mapi_size
from popbridge.contract import (
    Credentials,
    Disposition,
    DispositionKind,
    ListingState,
    measurer_of,
)
from popbridge.errors import (
    AuthFailed,
    BackendUnavailable,
)
from popbridge.store.listings import MemoryListings
from popbridge.store.uidl import is_valid_uidl, uidl_for
from tests.backends.contract import (
    BackendContract,
    as_told,
    listed_as_told,
    message,
    read_all,
    subject_of,
)
from tests.backends.graph_harness import (  # noqa: F401  (used by name)
    OTHER,
    TOKEN,
    GraphHarness,
    fake_fixture,
    harness_fixture,
    plain_fixture,
)


class TestGraphContract(BackendContract):
    """The contract suite on the fake Graph, with both id formats."""


# ---------------------------------------------------------------- identities


async def test_every_request_asks_for_immutable_ids(plain: GraphHarness) -> None:
    plain.seed([message("a"), message("b")])
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        await read_all(mailbox, listed[0].identity)
        how = Disposition(DispositionKind.SEEN)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    assert plain.fake.requests
    assert all(prefer for _, _, prefer in plain.fake.requests)
    assert {len(m.identity) for m in listed} == {68}
    assert [uidl_for(m.identity) for m in listed] == [m.identity for m in listed]


async def test_classic_ids_are_url_encoded_and_hashed_into_uidls(plain: GraphHarness) -> None:
    plain.fake.honour_prefer = False
    plain.seed([message("classic")])
    async with plain.opened() as mailbox:
        (entry,) = await mailbox.list()
        assert len(entry.identity) == 152 and entry.identity.endswith("=")
        assert subject_of(b"".join(await read_all(mailbox, entry.identity))) == "classic"
    assert any("%3D" in path for _, path, _ in plain.fake.requests)
    uidl = uidl_for(entry.identity)
    assert is_valid_uidl(uidl) and uidl.startswith("~") and len(uidl) == 44


# ---------------------------------------------------------------- exact sizes


async def test_a_listing_downloads_nothing_and_measure_only_what_is_asked(
    plain: GraphHarness,
) -> None:
    plain.seed([message(f"n{n}", 4) for n in range(5)])
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        assert plain.fake.downloads == 0  # a login (and UIDL) costs no download
        assert [(m.exact, m.size) for m in listed] == [(False, UNMEASURED)] * 5
        measurer = measurer_of(mailbox)
        assert measurer is not None
        asked = [listed[1].identity, listed[3].identity]
        sizes = await measurer.measure([*asked, "AAkALg" + "y" * 62])  # one never listed
        assert list(sizes) == asked and plain.fake.downloads == 2
        assert await measurer.measure(asked) == sizes and plain.fake.downloads == 2
        for identity in asked:
            assert len(b"".join(await read_all(mailbox, identity))) == sizes[identity]
        assert plain.fake.downloads == 2  # RETR sends what was counted


async def test_sizes_are_measured_once_per_change_key(plain: GraphHarness) -> None:
    plain.seed([message("one", line_end=b"\n"), message("two")])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend()
    first = await backend.open(plain.credentials)
    try:
        listed = await listed_as_told(first, memory)
    finally:
        await first.close()
    assert plain.fake.downloads == 2
    state = await memory.load()
    assert isinstance(state, ListingState) and state.messages == tuple(listed)
    assert all(m.version and m.exact for m in listed)
    async with plain.opened() as again:  # a restart: nothing spooled
        assert await again.list(memory=memory) == listed
        assert plain.fake.downloads == 2  # nothing measured again
        plain.fake.touch(plain.fake.messages[0])  # content or properties changed upstream
        relisted = await again.list(memory=memory)
        assert [m.exact for m in relisted] == [False, True]
        relisted = await as_told(again, relisted)
    assert plain.fake.downloads == 3
    assert [m.size for m in relisted] == [m.size for m in listed]


async def test_retr_of_a_message_not_measured_counts_it_once_and_remembers_it(
    plain: GraphHarness,
) -> None:
    # the core's read-ahead fetches the next message before a RETR asks for its size
    plain.seed([message("ahead", 20)])
    plain.fake.regenerate = True
    memory = MemoryListings().for_account("alice")
    async with plain.opened() as mailbox:
        (entry,) = await mailbox.list(memory=memory)
        data = b"".join(await read_all(mailbox, entry.identity))
        measurer = measurer_of(mailbox)
        assert measurer is not None
        assert await measurer.measure([entry.identity]) == {entry.identity: len(data)}
        assert len(b"".join(await read_all(mailbox, entry.identity))) == len(data)
    assert plain.fake.downloads == 1
    state = await memory.load()
    assert state is not None and [(m.exact, m.size) for m in state.messages] == [(True, len(data))]


async def test_retr_sends_what_list_announced_when_mime_is_regenerated(
    plain: GraphHarness,
) -> None:
    plain.seed([message("regen", 20)])
    plain.fake.regenerate = True
    async with plain.opened() as mailbox:
        (entry,) = await listed_as_told(mailbox)
        for _ in range(3):
            data = b"".join(await read_all(mailbox, entry.identity))
            assert len(data) == entry.size
        assert plain.fake.downloads == 1  # served from what was measured


async def test_a_remembered_size_that_no_longer_holds_is_refused_then_remeasured(
    plain: GraphHarness,
) -> None:
    plain.seed([message("drift", 5)])
    plain.fake.regenerate = True
    memory = MemoryListings().for_account("alice")
    async with plain.opened() as first:
        (size,) = await listed_as_told(first, memory)
    backend = plain.backend()  # a restart: the spool of the first process is gone
    second = await backend.open(plain.credentials)
    try:
        (entry,) = await second.list(memory=memory)
        assert entry.exact and entry.size == size.size  # from the memory, not downloaded
        with pytest.raises(BackendUnavailable):
            await read_all(second, entry.identity)  # a new download has another length
    finally:
        await second.close()
    third = await backend.open(plain.credentials)
    try:
        (unsure,) = await third.list(memory=memory)
        assert not unsure.exact  # no longer trusted: measured again when asked
        (fresh,) = await as_told(third, [unsure])
        data = b"".join(await read_all(third, fresh.identity))
        assert len(data) == fresh.size
    finally:
        await third.close()


async def test_later_sessions_send_the_spooled_bytes(plain: GraphHarness) -> None:
    plain.seed([message("kept", 10)])
    plain.fake.regenerate = True
    memory = MemoryListings().for_account("alice")
    backend = plain.backend()
    for _ in range(3):
        mailbox = await backend.open(plain.credentials)
        try:
            (entry,) = await listed_as_told(mailbox, memory)
            assert len(b"".join(await read_all(mailbox, entry.identity))) == entry.size
        finally:
            await mailbox.close()
    assert plain.fake.downloads == 1


async def test_the_spool_is_per_user_and_evicts_the_oldest(plain: GraphHarness) -> None:
    plain.seed([message(f"e{n}", 20) for n in range(3)])
    backend = plain.backend(spool_limit=len(message("e0", 20)) * 5 // 2)  # room for two
    mailbox = await backend.open(plain.credentials)
    try:
        for entry in await listed_as_told(mailbox):
            assert len(b"".join(await read_all(mailbox, entry.identity))) == entry.size
    finally:
        await mailbox.close()
    assert plain.fake.downloads == 4  # one of the three was evicted, downloaded again
    files = [path for path in plain.spool.rglob("*") if path.is_file()]
    assert len(files) == 2 and all(path.stat().st_mode & 0o077 == 0 for path in files)
    with pytest.raises(AuthFailed):  # another user's token cannot reach these bytes
        await backend.open(Credentials(OTHER, TOKEN, "oauth2"))


async def test_a_full_spool_still_sends_exactly_the_announced_octets(
    plain: GraphHarness,
) -> None:
    plain.seed([message("big", 200), message("small", 1)])
    async with plain.opened(spool_limit=0) as mailbox:
        for entry in await listed_as_told(mailbox):
            data = b"".join(await read_all(mailbox, entry.identity))
            assert len(data) == entry.size
    assert not any(path.is_file() for path in plain.spool.rglob("*"))  # nothing was kept


async def test_listed_sizes_are_the_mime_octets_not_the_mapi_size(plain: GraphHarness) -> None:
    (stored,) = plain.fake.seed([message("sized", 30)])
    async with plain.opened() as mailbox:
        (entry,) = await listed_as_told(mailbox)
    assert entry.size == len(stored.mime)
    assert mapi_size(plain.fake._resource(True, stored)) != entry.size
    assert not any("0x0E08" in path or "Extended" in path for _, path, _ in plain.fake.requests)


async def test_unterminated_last_line_and_bare_cr_are_counted_as_sent(
    plain: GraphHarness,
) -> None:
    raw = b"Subject: odd\r\n\r\nbare cr\rline\nlast line without end"
    plain.seed([raw])
    async with plain.opened() as mailbox:
        (entry,) = await listed_as_told(mailbox)
        data = b"".join(await read_all(mailbox, entry.identity))
    assert data == b"Subject: odd\r\n\r\nbare cr\r\nline\r\nlast line without end\r\n"
    assert entry.size == len(data)
