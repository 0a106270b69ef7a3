"""The counting helpers, the upstream timing wrapper, the JSON log shape and the session board,
each against the objects they observe (the in-memory backend stands in for an upstream)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from devkit.memory_backend import MemoryBackend
from popbridge.contract import Credentials, Disposition, DispositionKind, close_chunks
from popbridge.errors import AuthFailed, BackendUnavailable, Code, LoginTooSoon, MailboxInUse
from popbridge.telemetry import metrics
from popbridge.telemetry.board import SessionBoard, SessionEntry
from popbridge.telemetry.logs import JsonFormatter, formatter
from popbridge.telemetry.upstream import TimedMailbox, backend_name, timed_open


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_login_helpers_count_refusals_and_errors_by_kind() -> None:
    counted = {
        (result, reason): value("popbridge_logins_total", result=result, mechanism="plain")
        for result, reason in (("throttled", ""), ("locked_out", ""), ("in_use", ""),
                               ("too_soon", ""), ("error", ""))
    }  # fmt: skip
    in_use = value("popbridge_in_use_refusals_total")
    metrics.login_refused("PLAIN", Code.SYS_TEMP)
    metrics.login_refused("PLAIN", Code.AUTH)
    metrics.login_error("PLAIN", MailboxInUse("a"))
    metrics.login_error("PLAIN", LoginTooSoon("a"))
    metrics.login_error("PLAIN", BackendUnavailable("down"))
    for result, reason in counted:
        now = value("popbridge_logins_total", result=result, mechanism="plain")
        assert now == counted[(result, reason)] + 1, result
    assert value("popbridge_in_use_refusals_total") == in_use + 1
    assert value("popbridge_logins_refused_total", reason="locked_out") >= 1


@pytest.mark.parametrize(
    ("deleted", "failed", "outcome"), [(3, 0, "applied"), (3, 1, "partial"), (3, 3, "failed")]
)
def test_update_outcomes(deleted: int, failed: int, outcome: str) -> None:
    before = value("popbridge_updates_total", outcome=outcome)
    metrics.update_done(deleted, failed)
    metrics.update_done(0, 0)  # nothing to delete: not an UPDATE worth counting
    assert value("popbridge_updates_total", outcome=outcome) == before + 1


def test_lookahead_counts_hits_and_misses_and_passes_the_answer_on() -> None:
    hits, misses = (
        value("popbridge_lookahead_total", result="hit"),
        value("popbridge_lookahead_total", result="miss"),
    )
    marker = object()
    assert metrics.lookahead(marker) is marker and metrics.lookahead(None) is None
    assert value("popbridge_lookahead_total", result="hit") == hits + 1
    assert value("popbridge_lookahead_total", result="miss") == misses + 1


async def test_timed_mailbox_records_every_call_and_errors_by_class() -> None:
    backend = MemoryBackend()
    backend.user("u", "pw", b"Subject: a\r\n\r\nbody\r\n", b"Subject: b\r\n\r\nx\r\n")
    name = backend_name(backend)
    assert name == "memory_backend"
    assert backend_name(SimpleNamespace(_inner=backend)) == name  # a wrapper names its inner
    errors = value("popbridge_upstream_errors_total", backend=name, operation="open",
                   kind="AuthFailed")  # fmt: skip
    with pytest.raises(AuthFailed):
        await timed_open(backend, Credentials("u", "wrong", "password"))
    assert value("popbridge_upstream_errors_total", backend=name, operation="open",
                 kind="AuthFailed") == errors + 1  # fmt: skip
    mailbox = await timed_open(backend, Credentials("u", "pw", "password"))
    assert isinstance(mailbox, TimedMailbox)
    listing = await mailbox.list()
    chunks = b"".join([chunk async for chunk in mailbox.fetch(listing[0].identity)])
    assert chunks.endswith(b"body\r\n")
    fetches = value("popbridge_upstream_seconds_count", backend=name, operation="fetch")
    partial = mailbox.fetch(listing[1].identity)
    await anext(partial)
    await close_chunks(partial)  # a TOP that stops early: still one sample
    assert value("popbridge_upstream_seconds_count", backend=name, operation="fetch") == (
        fetches + 1
    )
    result = await mailbox.dispose([listing[0].identity], Disposition(DispositionKind.EXPUNGE))
    assert result.ok
    await mailbox.close()
    for operation in ("open", "list", "fetch", "dispose", "close"):
        assert value("popbridge_upstream_seconds_count", backend=name, operation=operation) > 0


async def test_a_failing_fetch_is_counted_and_raised_unchanged() -> None:
    class Broken:
        async def fetch(
            self, identity: str, *, body_lines: int | None = None
        ) -> AsyncIterator[bytes]:
            yield b"part"
            raise BackendUnavailable("cut")

    mailbox = TimedMailbox(Broken(), "broken")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable):
        async for _ in mailbox.fetch("1"):
            pass
    assert value("popbridge_upstream_errors_total", backend="broken", operation="fetch",
                 kind="BackendUnavailable") == 1  # fmt: skip


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("popbridge.x", logging.WARNING, "f", 1, message, args, None)
    for key, item in extra.items():
        setattr(made, key, item)
    return made


def test_json_lines_have_the_session_fields_and_drop_the_text_prefix() -> None:
    line = json.loads(
        JsonFormatter().format(
            record("[ab-1 10.0.0.1:5] %r logged in", "u\nx", session="ab-1", peer="10.0.0.1:5")
        )
    )
    assert line["event"] == "'u\\nx' logged in" and line["session"] == "ab-1"
    assert line["client"] == "10.0.0.1:5" and line["level"] == "WARNING"
    assert line["logger"] == "popbridge.x" and line["time"].endswith("+00:00")
    plain = json.loads(JsonFormatter().format(record("no session", outcome="applied")))
    assert plain["outcome"] == "applied" and "session" not in plain
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    text = JsonFormatter().format(failed)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]
    assert isinstance(formatter("json"), JsonFormatter)
    assert not isinstance(formatter("text"), JsonFormatter)


def test_the_board_counts_sessions_by_listener_and_tls() -> None:
    board = SessionBoard()
    ssl_object = SimpleNamespace(version=lambda: "TLSv1.3")
    transport = SimpleNamespace(get_extra_info=lambda name: ssl_object)
    protocol = SimpleNamespace(
        engine=SimpleNamespace(state=SimpleNamespace(name="UPDATE")), transport=transport
    )
    connection = SimpleNamespace(protocol=protocol, out=None, session=None)
    before = value("popbridge_sessions_total", listener="board", tls="TLSv1.3")
    entry = board.add(SessionEntry("x-1", "10.0.0.1:5", "board", connection, started=10.0))
    assert value("popbridge_sessions_active", listener="board") == 1
    assert (entry.state, entry.tls, entry.user, entry.sent, entry.age(25.0)) == (
        "update", "TLSv1.3", "", 0, 15.0,
    )  # fmt: skip
    assert len(board) == 1 and board.entries() == [entry]
    board.remove(entry)
    board.remove(entry)  # a second removal changes nothing
    assert value("popbridge_sessions_active", listener="board") == 0
    assert value("popbridge_sessions_total", listener="board", tls="TLSv1.3") == before + 1
