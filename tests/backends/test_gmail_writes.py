"""The Gmail backend's writes at QUIT, its limits and its logins, against the fake Gmail API.

Dispositions touch only messages still in the maildrop label; expunge deletes only what is
filed nowhere else and needs the full scope (refused at startup otherwise, and a 403
insufficientPermissions is reported, not retried); modifies go as batchModify in runs of at
most 1,000 ids. Rate limits in both forms are waited out up to a bound, then [SYS/TEMP];
requests in flight and quota units are bounded per Gmail user across sessions; a token is
accepted only for its own user.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from backends.gmail import transport
from backends.gmail.quota import UnitBudget
from popbridge.cli.commands import main
from popbridge.contract import Backend, Credentials, DisposeResult, Disposition, DispositionKind
from popbridge.errors import AuthFailed, BackendUnavailable, ConfigError
from tests.backends.contract import listed_as_told, message
from tests.backends.gmail_harness import (  # noqa: F401  (fixtures, used by name)
    MODIFY_TOKEN,
    OTHER_TOKEN,
    USER,
    GmailHarness,
    fake_fixture,
    harness_fixture,
)

EXPUNGE = Disposition(DispositionKind.EXPUNGE)
SEEN = Disposition(DispositionKind.SEEN)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "BACKOFF_BASE", 0.01)


def _count(harness: GmailHarness, method: str, suffix: str) -> int:
    return sum(1 for m, p, _ in harness.fake.requests if m == method and p.endswith(suffix))


async def _dispose(
    harness: GmailHarness, ids: list[str], how: Disposition, **settings: Any
) -> DisposeResult:
    credentials = settings.pop("credentials", harness.credentials)
    mailbox = await harness.backend(**settings).open(credentials)
    try:
        return await mailbox.dispose(ids, how)
    finally:
        await mailbox.close()


async def test_expunge_only_unlabels_a_message_filed_elsewhere(harness: GmailHarness) -> None:
    ids = harness.seed([message("filed"), message("alone")])
    work = harness.fake.add_label(USER, "Work")
    box = harness.fake.box(USER)
    box.messages[ids[0]].labels |= {work, "STARRED"}
    box.messages[ids[1]].labels |= {"IMPORTANT", "CATEGORY_UPDATES"}
    assert (await _dispose(harness, ids, EXPUNGE)).ok
    assert list(box.messages) == [ids[0]]
    assert box.messages[ids[0]].labels == {work, "STARRED", "UNREAD"}


async def test_many_deletes_go_as_batch_delete(harness: GmailHarness) -> None:
    ids = harness.seed([message(f"d{n}") for n in range(8)])
    assert (await _dispose(harness, ids[:7], EXPUNGE)).ok
    assert list(harness.fake.box(USER).messages) == ids[7:]
    assert _count(harness, "POST", "/batchDelete") == 1
    assert _count(harness, "DELETE", "") == 0


async def test_expunge_without_the_full_scope_is_a_config_error(harness: GmailHarness) -> None:
    backend = harness.backend(scope="modify")
    with pytest.raises(ConfigError, match=r"mail\.google\.com"):
        backend.accept_disposition(EXPUNGE)  # type: ignore[attr-defined]
    backend.accept_disposition(SEEN)  # type: ignore[attr-defined]
    ids = harness.seed([message("kept")])
    result = await _dispose(harness, ids, EXPUNGE, scope="modify")
    assert result.failed == frozenset(ids) and "mail.google.com" in result.detail
    assert _count(harness, "DELETE", "") == 0


async def test_insufficient_permissions_is_reported_not_retried(
    harness: GmailHarness, caplog: pytest.LogCaptureFixture
) -> None:
    ids = harness.seed([message("kept")])
    credentials = Credentials(USER, MODIFY_TOKEN, "oauth2")  # but scope = "full" configured
    with caplog.at_level(logging.ERROR):
        result = await _dispose(harness, ids, EXPUNGE, credentials=credentials)
    assert result.failed == frozenset(ids) and "scope" in result.detail
    assert _count(harness, "DELETE", "") == 1
    assert "insufficientPermissions" in caplog.text and MODIFY_TOKEN not in caplog.text
    assert list(harness.fake.box(USER).messages) == ids


async def test_seen_on_2500_messages_is_three_batch_modifies(harness: GmailHarness) -> None:
    ids = harness.seed([message(f"s{n}", 0) for n in range(2500)])
    assert (await _dispose(harness, ids, SEEN)).ok
    bodies = _count(harness, "POST", "/batchModify")
    assert bodies == 3
    assert not any("UNREAD" in m.labels for m in harness.fake.box(USER).messages.values())


async def test_a_message_moved_away_since_the_listing_is_not_touched(
    harness: GmailHarness,
) -> None:
    ids = harness.seed([message("moved"), message("stays")])
    harness.fake.change_labels(USER, ids[0], set(), {"INBOX"})
    how = Disposition(DispositionKind.MOVE, folder="Done")
    assert (await _dispose(harness, ids, how)).ok
    done = harness.fake.label_id(USER, "Done")
    box = harness.fake.box(USER)
    assert done not in box.messages[ids[0]].labels and "INBOX" not in box.messages[ids[0]].labels
    assert box.messages[ids[1]].labels == {done, "UNREAD"}


async def test_keyword_label_is_created_once_and_hidden(harness: GmailHarness) -> None:
    ids = harness.seed([message("k1"), message("k2")])
    how = Disposition(DispositionKind.KEYWORD, keyword="popbridge-done")
    assert (await _dispose(harness, ids[:1], how)).ok
    assert (await _dispose(harness, ids[1:], how)).ok
    assert _count(harness, "POST", "/labels") == 1
    assert list(harness.fake.box(USER).labels.values()) == ["Done", "popbridge-done"]


async def test_both_rate_limit_forms_are_waited_out(harness: GmailHarness) -> None:
    harness.seed([message("a")])
    harness.fake.throttle = [(429, ""), (403, "userRateLimitExceeded"), (403, "rateLimitExceeded")]
    mailbox = await harness.backend().open(harness.credentials)
    try:
        assert len(await mailbox.list()) == 1
    finally:
        await mailbox.close()
    assert harness.fake.throttle == []


async def test_endless_rate_limits_are_unavailable(harness: GmailHarness) -> None:
    harness.fake.throttle = [(403, "userRateLimitExceeded")] * 50
    with pytest.raises(BackendUnavailable):
        await harness.backend(max_backoff=0.2).open(harness.credentials)
    assert 2 <= 50 - len(harness.fake.throttle) <= 6  # retried, but a bounded number of times


async def test_in_flight_requests_are_bounded_per_user_across_sessions(
    harness: GmailHarness,
) -> None:
    harness.seed([message(f"c{n}") for n in range(40)])
    harness.fake.delay = 0.01
    backend = harness.backend(max_in_flight=3)
    first = await backend.open(harness.credentials)
    second = await backend.open(harness.credentials)
    try:
        one, two = await asyncio.gather(listed_as_told(first), listed_as_told(second))
    finally:
        await first.close()
        await second.close()
    assert one == two and len(one) == 40 and harness.fake.downloads == 80  # no shared memory
    assert harness.fake.most_in_flight == 3


async def test_the_unit_budget_refuses_what_would_wait_too_long(harness: GmailHarness) -> None:
    harness.seed([message(f"q{n}") for n in range(40)])  # 40 descriptions: 200 units
    backend = harness.backend(units_per_minute=100, timeout=1)
    mailbox = await backend.open(harness.credentials)
    try:
        with pytest.raises(BackendUnavailable):
            await mailbox.list()
    finally:
        await mailbox.close()
    assert harness.fake.units <= 100
    findings = await backend.check()
    assert any(line.startswith(f"account {USER}:") and "of 100 units" in line for line in findings)


def test_the_budget_refills_at_its_rate() -> None:
    now = [0.0]
    budget = UnitBudget(600, clock=lambda: now[0])
    assert budget.delay(600) == 0
    budget._level = 0  # spent
    assert budget.delay(10) == pytest.approx(1.0)
    now[0] = 1.0
    assert budget.level == pytest.approx(10)
    now[0] = 1000.0
    assert budget.level == 600  # never more than a minute's worth


async def test_a_stalled_api_is_unavailable_within_our_deadline(harness: GmailHarness) -> None:
    harness.fake.released.clear()
    with pytest.raises(BackendUnavailable, match="no answer"):
        await harness.backend(timeout=0.3).open(harness.credentials)


async def test_tokens_open_only_their_own_user(harness: GmailHarness) -> None:
    with pytest.raises(AuthFailed):
        await harness.backend().open(Credentials(USER, OTHER_TOKEN, "oauth2"))
    with pytest.raises(AuthFailed):
        await harness.backend().open(Credentials(USER, "ya29.revoked", "oauth2"))
    before = len(harness.fake.requests)
    with pytest.raises(AuthFailed):
        await harness.backend().open(Credentials(USER, "a password", "password"))
    with pytest.raises(AuthFailed):
        await harness.backend().open(Credentials(USER, "bad token\r\n", "oauth2"))
    assert len(harness.fake.requests) == before  # refused before anything was sent


async def test_check_names_label_scope_and_quota(harness: GmailHarness) -> None:
    findings = await harness.backend(label="Done", scope="modify").check()
    text = "\n".join(findings)
    assert "bearer token" in text and "'Done'" in text
    assert "gmail.modify" in text and "units/minute" in text
    assert all(json.dumps(line) for line in findings)


def _config(harness: GmailHarness, path: Path, scope: str, disposition: str) -> Path:
    path.write_text(
        f'[[listeners]]\nhost = "127.0.0.1"\nport = 0\n'
        f'[backend]\ntype = "gmail"\nurl = "{harness.fake.url}"\nscope = "{scope}"\n'
        f'[maildrop]\ndisposition = "{disposition}"\n'
    )
    return path


async def test_popbridge_check_refuses_expunge_without_the_scope(
    harness: GmailHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = _config(harness, tmp_path / "refused.toml", "modify", "expunge")
    assert await asyncio.to_thread(main, ["check", "--config", str(refused)]) == 2
    assert "backend.scope" in capsys.readouterr().err
    fine = _config(harness, tmp_path / "fine.toml", "modify", "trash")
    assert await asyncio.to_thread(main, ["check", "--config", str(fine)]) == 0
    out = capsys.readouterr().out
    assert "backend gmail: maildrop label 'INBOX'" in out and "gmail.modify" in out


async def test_limits_hold_for_a_hundred_sessions_of_one_user(harness: GmailHarness) -> None:
    harness.seed([message(f"h{n}") for n in range(3)])
    harness.fake.delay = 0.002
    backend = harness.backend(max_in_flight=4, units_per_minute=1200, timeout=2)
    # 100 sessions at once: each login and listing costs 1 + 1 + 1 + 5 + 3 * 5 = 23 units
    results = await asyncio.gather(
        *(_open_and_list(backend, harness) for _ in range(100)), return_exceptions=True
    )
    listed = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, BackendUnavailable)]
    assert len(listed) + len(refused) == 100 and listed and refused
    assert set(listed) == {3}
    assert harness.fake.most_in_flight <= 4
    # a minute's units, and a refill of 20 a second while the test ran (well under 10 s)
    assert harness.fake.units <= 1200 + 10 * 20


async def _open_and_list(backend: Backend, harness: GmailHarness) -> int:
    mailbox = await backend.open(harness.credentials)
    try:
        return len(await mailbox.list())
    finally:
        await mailbox.close()


def test_spam_or_trash_as_the_maildrop_is_a_config_error(harness: GmailHarness) -> None:
    for label in ("SPAM", "trash"):
        with pytest.raises(ConfigError, match="never listed"):
            harness.backend(label=label)


async def test_trash_only_unlabels_a_message_filed_elsewhere(harness: GmailHarness) -> None:
    ids = harness.seed([message("filed"), message("alone")])
    work = harness.fake.add_label(USER, "Work")
    box = harness.fake.box(USER)
    box.messages[ids[0]].labels.add(work)
    assert (await _dispose(harness, ids, Disposition(DispositionKind.TRASH))).ok
    assert box.messages[ids[0]].labels == {work, "UNREAD"}
    assert "TRASH" in box.messages[ids[1]].labels


async def test_a_request_waits_for_a_slot_no_longer_than_the_deadline(
    harness: GmailHarness,
) -> None:
    (wire,) = harness.seed_generated(1, 300_000)
    backend = harness.backend(max_in_flight=1, timeout=0.5, fetch_chunk=1024)
    mailbox = await backend.open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        reading = mailbox.fetch(entry.identity)
        first = await anext(reading)  # the download holds the only slot, unread
        with pytest.raises(BackendUnavailable, match="slot"):
            await mailbox.list()
        rest = b"".join([piece async for piece in reading])
    finally:
        await mailbox.close()
    assert first + rest == wire
