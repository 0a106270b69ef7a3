"""The Graph backend against the local fake Graph: the contract suite, then Graph-only behaviour.

This module owns the Graph harness for the contract suite (`tests.backends.contract`), run
with immutable ids (68 characters) and with classic ids (152, ending in "="), and the tests
of what only Graph does: every request asks for immutable ids, sizes are measured once per
changeKey and kept in the listing memory, RETR sends what LIST announced when the MIME is
written anew per download, a listing disturbed while it is paged is redone, folders by path,
categories merged, 412 retried, throttling within bounds, and the token's user checked.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.graph import GraphBackend, create
from backends.graph.spool import Normaliser
from devkit.dovecot import free_port, generate_message, wire_form
from devkit.fake_graph import FakeGraph, mapi_size
from popbridge.accounts import generate_key
from popbridge.accounts.settings import parse_accounts
from popbridge.config import load_config
from popbridge.contract import (
    Backend,
    Credentials,
    Disposition,
    DispositionKind,
    ListingState,
    load_backend,
    withheld_by,
)
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    Code,
    ConfigError,
    MessageGone,
)
from popbridge.oauth2.providers import parse_provider
from popbridge.pop3.wire import BodyEncoder, normalised_size
from popbridge.store.listings import MemoryListings
from popbridge.store.uidl import is_valid_uidl, uidl_for
from popbridge.upstream.settings import TableReader
from tests.backends.contract import (
    HIDDEN,
    BackendContract,
    Stored,
    Where,
    by_subject,
    message,
    read_all,
    subject_of,
)

USER, TOKEN = "alice@contoso.example", "eyJ0eXAi.alice-token_1"
OTHER, OTHER_TOKEN = "bob@contoso.example", "eyJ0eXAi.bob-token_2"
CHUNK = 256 * 1024
FOLDERS: dict[Where, str] = {"maildrop": "inbox", "trash": "deleteditems", "move": "Done"}


class GraphHarness:
    """The contract harness: seeds and reads the fake's state directly."""

    fetch_chunk = CHUNK
    move_folder = "Done"

    def __init__(self, fake: FakeGraph, spool: Path) -> None:
        self.fake = fake
        self.spool = spool
        self.credentials = Credentials(USER, TOKEN, "oauth2")

    def settings(self, **overrides: Any) -> dict[str, Any]:
        table = {"type": "graph", "url": self.fake.url, "timeout": 10, "fetch_chunk": CHUNK,
                 "spool_dir": str(self.spool)} | overrides  # fmt: skip
        return {key: value for key, value in table.items() if value is not None}

    def backend(self, **overrides: Any) -> Backend:
        return create(self.settings(**overrides), source="test.toml")

    def unreachable(self) -> Backend:
        return self.backend(url=f"http://127.0.0.1:{free_port()}/v1.0", connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> None:
        self.fake.seed(list(messages))

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        messages = [wire_form(generate_message(n + 1, size)) for n in range(count)]
        self.fake.seed(messages)
        return messages

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        return [
            Stored(
                subject=subject_of(m.mime),
                seen=m.is_read,
                deleted=False,
                keywords=frozenset(m.categories),
            )
            for m in self.fake.in_folder(FOLDERS[where])
        ]


@pytest.fixture
async def fake() -> AsyncIterator[FakeGraph]:
    async with FakeGraph({TOKEN: USER, OTHER_TOKEN: OTHER}) as graph:
        graph.add_folder("Done")
        yield graph


@pytest.fixture(params=["immutable", "classic"])
def harness(fake: FakeGraph, tmp_path: Path, request: pytest.FixtureRequest) -> GraphHarness:
    fake.honour_prefer = request.param == "immutable"
    return GraphHarness(fake, tmp_path)


@pytest.fixture
def plain(fake: FakeGraph, tmp_path: Path) -> GraphHarness:
    return GraphHarness(fake, tmp_path)


class TestGraphContract(BackendContract):
    """The contract suite on the fake Graph, with both id formats."""


# ---------------------------------------------------------------- identities


async def test_every_request_asks_for_immutable_ids(plain: GraphHarness) -> None:
    plain.seed([message("a"), message("b")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        await read_all(mailbox, listed[0].identity)
        how = Disposition(DispositionKind.SEEN)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    finally:
        await mailbox.close()
    assert plain.fake.requests
    assert all(prefer for _, _, prefer in plain.fake.requests)
    assert {len(m.identity) for m in listed} == {68}
    assert [uidl_for(m.identity) for m in listed] == [m.identity for m in listed]


async def test_classic_ids_are_url_encoded_and_hashed_into_uidls(plain: GraphHarness) -> None:
    plain.fake.honour_prefer = False
    plain.seed([message("classic")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
        assert len(entry.identity) == 152 and entry.identity.endswith("=")
        assert subject_of(b"".join(await read_all(mailbox, entry.identity))) == "classic"
    finally:
        await mailbox.close()
    assert any("%3D" in path for _, path, _ in plain.fake.requests)
    uidl = uidl_for(entry.identity)
    assert is_valid_uidl(uidl) and uidl.startswith("~") and len(uidl) == 44


# ---------------------------------------------------------------- exact sizes


async def test_sizes_are_measured_once_per_change_key(plain: GraphHarness) -> None:
    plain.seed([message("one", line_end=b"\n"), message("two")])
    memory = MemoryListings().for_account("alice")
    backend = plain.backend()
    first = await backend.open(plain.credentials)
    try:
        listed = await first.list(memory=memory)
    finally:
        await first.close()
    assert plain.fake.downloads == 2
    state = await memory.load()
    assert isinstance(state, ListingState) and state.messages == tuple(listed)
    assert all(m.version for m in listed)
    again = await backend.open(plain.credentials)
    try:
        assert await again.list(memory=memory) == listed
        assert plain.fake.downloads == 2  # nothing measured again
        plain.fake.touch(plain.fake.messages[0])  # content or properties changed upstream
        relisted = await again.list(memory=memory)
    finally:
        await again.close()
    assert plain.fake.downloads == 3
    assert [m.size for m in relisted] == [m.size for m in listed]


async def test_retr_sends_what_list_announced_when_mime_is_regenerated(
    plain: GraphHarness,
) -> None:
    plain.seed([message("regen", 20)])
    plain.fake.regenerate = True
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
        for _ in range(3):
            data = b"".join(await read_all(mailbox, entry.identity))
            assert len(data) == entry.size
        assert plain.fake.downloads == 1  # served from what was measured
    finally:
        await mailbox.close()


async def test_a_remembered_size_that_no_longer_holds_is_refused_then_remeasured(
    plain: GraphHarness,
) -> None:
    plain.seed([message("drift", 5)])
    plain.fake.regenerate = True
    memory = MemoryListings().for_account("alice")
    first = await plain.backend().open(plain.credentials)
    try:
        (measured,) = await first.list(memory=memory)
    finally:
        await first.close()
    backend = plain.backend()  # a restart: the spool of the first process is gone
    second = await backend.open(plain.credentials)
    try:
        (entry,) = await second.list(memory=memory)
        assert entry.size == measured.size  # from the memory, not downloaded
        with pytest.raises(BackendUnavailable):
            await read_all(second, entry.identity)  # a new download has another length
    finally:
        await second.close()
    third = await backend.open(plain.credentials)
    try:
        (fresh,) = await third.list(memory=memory)
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
            (entry,) = await mailbox.list(memory=memory)
            assert len(b"".join(await read_all(mailbox, entry.identity))) == entry.size
        finally:
            await mailbox.close()
    assert plain.fake.downloads == 1


async def test_the_spool_is_per_user_and_evicts_the_oldest(plain: GraphHarness) -> None:
    plain.seed([message(f"e{n}", 20) for n in range(3)])
    backend = plain.backend(spool_limit=len(message("e0", 20)) * 5 // 2)  # room for two
    mailbox = await backend.open(plain.credentials)
    try:
        listed = await mailbox.list()
        for entry in listed:
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
    mailbox = await plain.backend(spool_limit=0).open(plain.credentials)
    try:
        for entry in await mailbox.list():
            data = b"".join(await read_all(mailbox, entry.identity))
            assert len(data) == entry.size
    finally:
        await mailbox.close()
    assert not any(path.is_file() for path in plain.spool.rglob("*"))  # nothing was kept


async def test_listed_sizes_are_the_mime_octets_not_the_mapi_size(plain: GraphHarness) -> None:
    (stored,) = plain.fake.seed([message("sized", 30)])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
    finally:
        await mailbox.close()
    assert entry.size == len(stored.mime)
    assert mapi_size(plain.fake._resource(True, stored)) != entry.size
    assert not any("0x0E08" in path or "Extended" in path for _, path, _ in plain.fake.requests)


async def test_unterminated_last_line_and_bare_cr_are_counted_as_sent(
    plain: GraphHarness,
) -> None:
    raw = b"Subject: odd\r\n\r\nbare cr\rline\nlast line without end"
    plain.seed([raw])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
        data = b"".join(await read_all(mailbox, entry.identity))
    finally:
        await mailbox.close()
    assert data == b"Subject: odd\r\n\r\nbare cr\r\nline\r\nlast line without end\r\n"
    assert entry.size == len(data)


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
    mailbox = await plain.backend(page_size=5).open(plain.credentials)
    try:
        subjects = list(await by_subject(mailbox))
    finally:
        await mailbox.close()
    assert removed == ["m00"]
    assert subjects == [f"m{n:02}" for n in range(1, 12)]  # none skipped, none twice


async def test_small_pages_follow_next_links(plain: GraphHarness) -> None:
    plain.seed([message(f"p{n:02}") for n in range(7)])
    mailbox = await plain.backend(page_size=2).open(plain.credentials)
    try:
        assert list(await by_subject(mailbox)) == [f"p{n:02}" for n in range(7)]
    finally:
        await mailbox.close()
    assert any("%24skip=6" in p or "$skip=6" in p for _, p, _ in plain.fake.requests)


async def test_a_next_link_to_another_origin_is_refused(plain: GraphHarness) -> None:
    plain.seed([message(f"l{n}") for n in range(3)])
    plain.fake.foreign_links = True
    mailbox = await plain.backend(page_size=1).open(plain.credentials)
    try:
        with pytest.raises(BackendFailure, match="points elsewhere"):
            await mailbox.list()
    finally:
        await mailbox.close()


async def test_no_token_or_body_reaches_the_log(
    plain: GraphHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plain.seed([message("secret body line", 3)])
    plain.fake.statuses = [(429, "ApplicationThrottled")]
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list(memory=MemoryListings().for_account("alice"))
        await read_all(mailbox, listed[0].identity)
        plain.fake.batch_throttle = 1
        assert (await mailbox.dispose([listed[0].identity], Disposition(DispositionKind.SEEN))).ok
    finally:
        await mailbox.close()
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
    mailbox = await plain.backend(folder="inbox/Scans").open(plain.credentials)
    try:
        assert list(await by_subject(mailbox)) == ["scanned"]
    finally:
        await mailbox.close()
    assert scans.name == "Scans"
    with pytest.raises(Exception, match="no folder"):
        await plain.backend(folder="inbox/Nope").open(plain.credentials)


# -------------------------------------------------------------- dispositions


async def test_categories_are_merged_and_conflicts_retried(plain: GraphHarness) -> None:
    (first, second) = plain.fake.seed([message("a"), message("b")])
    first.categories = ["Red category"]
    plain.fake.conflicts[first.id] = 2  # two 412 ErrorIrresolvableConflict, then success
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        how = Disposition(DispositionKind.KEYWORD, keyword="popbridge-done")
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    finally:
        await mailbox.close()
    assert first.categories == ["Red category", "popbridge-done"]
    assert second.categories == ["popbridge-done"]


async def test_dispose_leaves_messages_moved_out_of_the_maildrop(plain: GraphHarness) -> None:
    (moved, kept) = plain.fake.seed([message("moved away"), message("kept")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        moved.folder = plain.fake.folder("Done").id  # another client filed it meanwhile
        how = Disposition(DispositionKind.EXPUNGE)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    finally:
        await mailbox.close()
    assert plain.fake.messages == [moved]  # deleted only what was still in the maildrop
    assert kept not in plain.fake.messages


async def test_dispose_uses_batches_of_twenty(plain: GraphHarness) -> None:
    plain.seed([message(f"d{n}") for n in range(45)])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        plain.fake.requests.clear()
        how = Disposition(DispositionKind.TRASH)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    finally:
        await mailbox.close()
    batches = [p for m, p, _ in plain.fake.requests if p.endswith("/$batch")]
    assert len(batches) == 6  # 3 to look up, 3 to move: 20 + 20 + 5 each
    assert len(plain.fake.in_folder("deleteditems")) == 45


async def test_inner_429s_of_a_batch_are_retried(plain: GraphHarness) -> None:
    plain.seed([message(f"t{n}") for n in range(6)])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        plain.fake.batch_throttle = 4
        how = Disposition(DispositionKind.SEEN)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    finally:
        await mailbox.close()
    assert all(m.is_read for m in plain.fake.messages)


async def test_inner_429s_past_the_bound_are_reported_not_done(plain: GraphHarness) -> None:
    plain.seed([message("x"), message("y")])
    mailbox = await plain.backend(max_retry_after=0).open(plain.credentials)
    try:
        listed = await mailbox.list()
        plain.fake.batch_throttle = 100
        how = Disposition(DispositionKind.EXPUNGE)
        result = await mailbox.dispose([m.identity for m in listed], how)
    finally:
        await mailbox.close()
    assert result.failed == {m.identity for m in listed}
    assert len(plain.fake.messages) == 2


# ---------------------------------------------------------------- throttling


async def test_concurrency_429s_are_waited_out(plain: GraphHarness) -> None:
    plain.seed([message(f"c{n}", 30) for n in range(8)])
    plain.fake.concurrency = 2  # another application uses two of the mailbox's four slots
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
    finally:
        await mailbox.close()
    assert len(listed) == 8
    assert plain.fake.in_flight_peak <= 2


async def test_never_more_than_four_requests_in_flight(plain: GraphHarness) -> None:
    plain.seed([message(f"f{n}", 5) for n in range(300)])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
    finally:
        await mailbox.close()
    assert len(listed) == 300 and plain.fake.downloads == 300
    assert plain.fake.in_flight_peak <= 4


async def test_throttling_past_the_bound_is_temporary_failure(plain: GraphHarness) -> None:
    plain.fake.statuses = [(429, "ApplicationThrottled")] * 3
    with pytest.raises(BackendUnavailable):
        await plain.backend(max_retry_after=1).open(plain.credentials)


@pytest.mark.parametrize("status", [503, 504])
async def test_busy_graph_is_retried(plain: GraphHarness, status: int) -> None:
    plain.seed([message("busy")])
    plain.fake.statuses = [(status, "ServiceUnavailable")]
    mailbox = await plain.backend().open(plain.credentials)
    await mailbox.close()


# ---------------------------------------------------------------------- auth


async def test_a_token_of_another_user_is_refused(plain: GraphHarness) -> None:
    with pytest.raises(AuthFailed):
        await plain.backend().open(Credentials(USER, OTHER_TOKEN, "oauth2"))


async def test_passwords_are_refused_before_any_request(plain: GraphHarness) -> None:
    with pytest.raises(AuthFailed):
        await plain.backend().open(Credentials(USER, "a password", "password"))
    with pytest.raises(AuthFailed):
        await plain.backend().open(Credentials(USER, "not a token\r\n", "oauth2"))
    assert plain.fake.requests == []


async def test_a_token_refused_mid_session_is_auth_failed(plain: GraphHarness) -> None:
    plain.seed([message("gone token")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        plain.fake.statuses = [(401, "InvalidAuthenticationToken")]
        with pytest.raises(AuthFailed):
            await mailbox.list()
    finally:
        await mailbox.close()


async def test_a_mailbox_without_rest_is_permanent_failure(plain: GraphHarness) -> None:
    plain.fake.statuses = [(404, "MailboxNotEnabledForRESTAPI")]
    with pytest.raises(BackendFailure) as caught:
        await plain.backend().open(plain.credentials)
    assert caught.value.code is Code.SYS_PERM


@pytest.mark.parametrize("how", ["stall", "cut"])
async def test_a_download_that_stalls_or_is_cut_is_temporary(plain: GraphHarness, how: str) -> None:
    plain.seed([message("big", 20_000)])  # several pieces
    plain.fake.misbehave = how
    mailbox = await plain.backend(timeout=0.5).open(plain.credentials)
    try:
        with pytest.raises(BackendUnavailable):
            await mailbox.list()  # measuring downloads it
    finally:
        await mailbox.close()
    assert not any(path.is_file() for path in plain.spool.rglob("*"))  # nothing half kept


async def test_missing_scope_is_auth_failed(plain: GraphHarness) -> None:
    plain.fake.statuses = [(403, "ErrorAccessDenied")]
    with pytest.raises(AuthFailed):
        await plain.backend().open(plain.credentials)


async def test_a_malformed_id_is_message_gone(plain: GraphHarness) -> None:
    mailbox = await plain.backend().open(plain.credentials)
    try:
        with pytest.raises(MessageGone):
            await read_all(mailbox, "AAkALg" + "x" * 62)
        with pytest.raises(MessageGone):
            await read_all(mailbox, "x" * 2000)
    finally:
        await mailbox.close()


# -------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("key", "value"),
    [("url", "ftp://graph"), ("max_in_flight", 5), ("page_size", 1001), ("folder", "a\x00b"),
     ("url", "https://user:pw@graph.example/v1.0"), ("bogus", 1)],
)  # fmt: skip
def test_bad_settings_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        create({"type": "graph", key: value}, source="t.toml")


async def test_check_reports_the_bearer_challenge(plain: GraphHarness) -> None:
    findings = await plain.backend().check()
    assert any("bearer token is required" in line for line in findings)
    assert any("Mail.ReadWrite" in line for line in findings)


def test_the_microsoft_graph_preset_asks_for_graph_scopes() -> None:
    table = {"client_id": "app-id", "tenant": "contoso.example"}
    provider = parse_provider(TableReader(table, source="t", path="p"), "microsoft-graph")
    assert provider.scope.split() == [
        "https://graph.microsoft.com/Mail.ReadWrite",
        "https://graph.microsoft.com/User.Read",
        "offline_access",
    ]
    assert provider.token_url.startswith("https://login.microsoftonline.com/contoso.example/")
    assert provider.refresh_with_scope


def test_the_deploy_example_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "deploy" / "popbridge.graph.example.toml"
    key = tmp_path / "accounts.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    text = example.read_text().replace("/etc/popbridge/accounts.key", str(key))
    text = text.replace("/var/cache/popbridge", str(tmp_path))
    text = text.replace("/var/lib/popbridge/state.sqlite3", str(tmp_path / "s.sqlite3"))
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    backend = load_backend(config.backend_type, config.backend_settings, source=config.source)
    assert isinstance(backend, GraphBackend)
    assert backend.settings.folder == "inbox" and backend.settings.max_in_flight == 4
    assert config.maildrop.disposition.kind is DispositionKind.TRASH
    accounts = parse_accounts(config.accounts_settings, source=config.source)
    provider = accounts.providers["microsoft-graph"]
    assert "https://graph.microsoft.com/Mail.ReadWrite" in provider.scope.split()


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
