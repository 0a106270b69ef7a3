"""Gmail's batch endpoint as the backend uses it: messages looked up 50 to a request.

The backend sends the messages.get calls of an incremental listing and of a disposition's
check through `/batch/gmail/v1`, at most 50 calls a batch (Gmail allows 100 and advises 50);
inner rate limits are sent again; the fake refuses a batch of more than 100 calls.
"""

from __future__ import annotations

import pytest

from backends.gmail import batch, transport
from backends.gmail.backend import GmailBackend
from backends.gmail.batch import get_many, parse_reply
from backends.gmail.listing import message_path
from backends.gmail.transport import Transport
from devkit.fake_gmail import FakeGmail
from popbridge.contract import Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable
from popbridge.store.listings import MemoryListings
from tests.backends.contract import message
from tests.backends.gmail_harness import (  # noqa: F401  (fixtures, used by name)
    TOKEN,
    USER,
    GmailHarness,
    fake_fixture,
    harness_fixture,
)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "BACKOFF_BASE", 0.01)


def _transport(harness: GmailHarness, **settings: object) -> Transport:
    backend = harness.backend(**settings)
    assert isinstance(backend, GmailBackend)
    return Transport(backend.settings, TOKEN, backend.quotas.of(USER))


def _minimal_gets(fake: FakeGmail) -> int:
    return sum(1 for m, p, q in fake.requests if "/messages/" in p and "minimal" in q)


async def test_new_messages_and_history_changes_are_looked_up_fifty_to_a_batch(
    harness: GmailHarness,
) -> None:
    ids = harness.seed([message(f"b{n}", 0) for n in range(120)])
    memory = MemoryListings().for_account("alice")
    backend = harness.backend()
    for step in range(2):
        if step:
            for identity in ids:
                harness.fake.change_labels(USER, identity, {"STARRED"}, set())
        mailbox = await backend.open(harness.credentials)
        try:
            listed = await mailbox.list(memory=memory)
        finally:
            await mailbox.close()
        assert len(listed) == 120
    assert harness.fake.batches == [50, 50, 20] * 2  # the new ones, then the changed ones
    assert _minimal_gets(harness.fake) == 0  # every lookup went inside a batch
    assert harness.fake.downloads == 0  # a listing downloads nothing


async def test_expunge_checks_labels_in_batches(harness: GmailHarness) -> None:
    ids = harness.seed([message(f"e{n}", 0) for n in range(60)])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        assert (await mailbox.dispose(ids, Disposition(DispositionKind.EXPUNGE))).ok
    finally:
        await mailbox.close()
    assert harness.fake.batches == [50, 10]
    assert harness.fake.box(USER).messages == {}


async def test_inner_rate_limits_are_sent_again(harness: GmailHarness) -> None:
    ids = harness.seed([message(f"r{n}", 0) for n in range(7)])
    harness.fake.inner_throttle = 3
    http = _transport(harness)
    try:
        paths = {i: message_path(i) + "?format=minimal" for i in [*ids, "0123"]}
        found = await get_many(http, paths)
    finally:
        await http.close()
    assert harness.fake.batches == [8, 3]
    assert found["0123"] is None  # 404 inside a batch: gone
    assert all(found[i]["id"] == i for i in ids)


async def test_endless_inner_rate_limits_are_unavailable(harness: GmailHarness) -> None:
    ids = harness.seed([message("t", 0)])
    harness.fake.inner_throttle = 1000
    http = _transport(harness, max_backoff=0.1)
    try:
        with pytest.raises(BackendUnavailable, match="throttled"):
            await get_many(http, {ids[0]: message_path(ids[0])})
    finally:
        await http.close()


async def test_the_fake_refuses_more_than_a_hundred_calls(
    harness: GmailHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = harness.seed([message("x", 0)])
    http = _transport(harness)
    try:
        monkeypatch.setattr(batch, "MAX_CALLS", 101)
        with pytest.raises(BackendFailure, match="HTTP 400"):
            await get_many(http, {str(n): message_path(ids[0]) for n in range(101)})
        monkeypatch.setattr(batch, "MAX_CALLS", 100)
        found = await get_many(http, {str(n): message_path(ids[0]) for n in range(100)})
    finally:
        await http.close()
    assert len(found) == 100 and harness.fake.batches == [100]


def test_a_reply_part_without_a_usable_content_id_is_unanswered() -> None:
    boundary = "b0"
    body = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-1>\r\n\r\n"
        'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": "1"}\r\n'
        f"--{boundary}\r\nContent-Type: application/http\r\n\r\n"
        "HTTP/1.1 200 OK\r\n\r\n{}\r\n"
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <other>\r\n\r\n"
        "HTTP/1.1 200 OK\r\n\r\n{}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    answers = parse_reply(f"multipart/mixed; boundary={boundary}", body)
    assert answers == {1: (200, b'{"id": "1"}')}
    with pytest.raises(BackendFailure, match="not multipart"):
        parse_reply("application/json", b"{}")
