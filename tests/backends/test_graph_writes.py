"""The Graph backend's writes at QUIT, its throttling, its errors and its configuration.

This module owns the tests of dispositions against the fake Graph (categories merged, 412
retried, messages moved away left alone, $batch of 20, inner 429s), of throttling within
Outlook's limits, of the token's user check and the error mapping, and of the settings,
the OAuth2 preset and the deploy example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.graph import GraphBackend, create
from popbridge.accounts import generate_key
from popbridge.accounts.settings import parse_accounts
from popbridge.config import load_config
from popbridge.contract import (
    Credentials,
    Disposition,
    DispositionKind,
    load_backend,
    measurer_of,
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
from popbridge.store.listings import MemoryListings
from popbridge.upstream.settings import TableReader
from tests.backends.contract import (
    as_told,
    message,
    read_all,
)
from tests.backends.graph_harness import (  # noqa: F401  (used by name)
    OTHER_TOKEN,
    USER,
    GraphHarness,
    fake_fixture,
    plain_fixture,
)

# -------------------------------------------------------------- dispositions


async def test_categories_are_merged_and_conflicts_retried(plain: GraphHarness) -> None:
    (first, second) = plain.fake.seed([message("a"), message("b")])
    first.categories = ["Red category"]
    third = plain.fake.seed([message("c")])[0]
    third.categories = ["POPBRIDGE-DONE"]  # already there, spelled otherwise
    plain.fake.conflicts[first.id] = 2  # two 412 ErrorIrresolvableConflict, then success
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        how = Disposition(DispositionKind.KEYWORD, keyword="popbridge-done")
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    assert first.categories == ["Red category", "popbridge-done"]
    assert second.categories == ["popbridge-done"]
    assert third.categories == ["POPBRIDGE-DONE"]


async def test_dispose_leaves_messages_moved_out_of_the_maildrop(plain: GraphHarness) -> None:
    (moved, kept) = plain.fake.seed([message("moved away"), message("kept")])
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        moved.folder = plain.fake.folder("Done").id  # another client filed it meanwhile
        how = Disposition(DispositionKind.EXPUNGE)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    assert plain.fake.messages == [moved]  # deleted only what was still in the maildrop
    assert kept not in plain.fake.messages


async def test_dispose_uses_batches_of_twenty(plain: GraphHarness) -> None:
    plain.seed([message(f"d{n}") for n in range(45)])
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        plain.fake.requests.clear()
        how = Disposition(DispositionKind.TRASH)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    batches = [p for m, p, _ in plain.fake.requests if p.endswith("/$batch")]
    assert len(batches) == 6  # 3 to look up, 3 to move: 20 + 20 + 5 each
    assert len(plain.fake.in_folder("deleteditems")) == 45


async def test_inner_429s_of_a_batch_are_retried(plain: GraphHarness) -> None:
    plain.seed([message(f"t{n}") for n in range(6)])
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
        plain.fake.batch_throttle = 4
        how = Disposition(DispositionKind.SEEN)
        assert (await mailbox.dispose([m.identity for m in listed], how)).ok
    assert all(m.is_read for m in plain.fake.messages)


async def test_inner_429s_past_the_bound_are_reported_not_done(plain: GraphHarness) -> None:
    plain.seed([message("x"), message("y")])
    async with plain.opened(max_retry_after=0) as mailbox:
        listed = await mailbox.list()
        plain.fake.batch_throttle = 100
        how = Disposition(DispositionKind.EXPUNGE)
        result = await mailbox.dispose([m.identity for m in listed], how)
    assert result.failed == {m.identity for m in listed}
    assert len(plain.fake.messages) == 2


# ---------------------------------------------------------------- throttling


async def test_concurrency_429s_are_waited_out(plain: GraphHarness) -> None:
    plain.seed([message(f"c{n}", 30) for n in range(8)])
    plain.fake.concurrency = 2  # another application uses two of the mailbox's four slots
    async with plain.opened() as mailbox:
        listed = await mailbox.list()
    assert len(listed) == 8
    assert plain.fake.in_flight_peak <= 2


async def test_never_more_than_four_requests_in_flight(plain: GraphHarness) -> None:
    plain.seed([message(f"f{n}", 5) for n in range(300)])
    async with plain.opened() as mailbox:
        listed = await as_told(mailbox, await mailbox.list())
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
    async with plain.opened() as mailbox:
        plain.fake.statuses = [(401, "InvalidAuthenticationToken")]
        with pytest.raises(AuthFailed):
            await mailbox.list()


async def test_a_mailbox_without_rest_is_permanent_failure(plain: GraphHarness) -> None:
    plain.fake.statuses = [(404, "MailboxNotEnabledForRESTAPI")]
    with pytest.raises(BackendFailure) as caught:
        await plain.backend().open(plain.credentials)
    assert caught.value.code is Code.SYS_PERM


@pytest.mark.parametrize("how", ["stall", "cut"])
async def test_a_download_that_stalls_or_is_cut_is_temporary(plain: GraphHarness, how: str) -> None:
    plain.seed([message("small"), message("big", 20_000)])  # several pieces
    plain.fake.misbehave = how
    memory = MemoryListings().for_account("alice")
    async with plain.opened(timeout=0.5, max_in_flight=1) as mailbox:
        small, big = await mailbox.list(memory=memory)  # lists without downloading
        measurer = measurer_of(mailbox)
        assert measurer is not None and plain.fake.downloads == 0
        with pytest.raises(BackendUnavailable):
            await measurer.measure([small.identity, big.identity])
        with pytest.raises(BackendUnavailable):
            await read_all(mailbox, big.identity)  # RETR measures it first: an error again
    spooled = [path.stat().st_size for path in plain.spool.rglob("*") if path.is_file()]
    assert spooled == [len(message("small"))]  # the big one was not half kept
    state = await memory.load()  # what was measured before the failure is kept, exact
    assert state is not None
    sizes = [(m.exact, m.size) for m in state.messages]
    assert sizes == [(True, len(message("small"))), (False, 0)]


async def test_missing_scope_is_auth_failed(plain: GraphHarness) -> None:
    plain.fake.statuses = [(403, "ErrorAccessDenied")]
    with pytest.raises(AuthFailed):
        await plain.backend().open(plain.credentials)


async def test_a_malformed_id_is_message_gone(plain: GraphHarness) -> None:
    async with plain.opened() as mailbox:
        with pytest.raises(MessageGone):
            await read_all(mailbox, "AAkALg" + "x" * 62)
        with pytest.raises(MessageGone):
            await read_all(mailbox, "x" * 2000)


# -------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("key", "value"),
    [("url", "ftp://graph"), ("max_in_flight", 5), ("page_size", 1001), ("folder", "a\x00b"),
     ("url", "https://user:pw@graph.example/v1.0"), ("bogus", 1), ("window_newest", 0),
     ("window_days", "7")],
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
