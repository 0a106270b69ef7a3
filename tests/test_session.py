"""Session transcripts over the in-memory backend: RFC 1939 semantics, nothing upstream
before QUIT, locks, and the answers to backend failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from devkit.dialogue import assert_dialogue, exchange, make_session, quick_services
from devkit.memory_backend import MemoryBackend, MemoryMailbox
from popbridge.contract import Credentials, Disposition, DispositionKind, RemoteMessage
from popbridge.errors import BackendUnavailable, LoginsBusy
from popbridge.session.logingate import LoginGate
from popbridge.session.session import Services, SessionPolicy

MSG1 = b"Subject: a\r\n\r\nhi\r\n"  # 18 octets
MSG2 = b"Subject: b\n\n.dot\nlast"  # LF only, no final newline: 26 octets on the wire


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    backend.user("alice", "secret", MSG1, MSG2)
    return backend


AUTH_FAILED = "S: -ERR [AUTH] authentication failed"
LOGIN = (
    "C: USER alice",
    "S: +OK send PASS",
    "C: PASS secret",
    "S: +OK maildrop has 2 messages (44 octets)",
)


async def test_full_transaction(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN,
        "C: STAT", "S: +OK 2 44",
        "C: LIST", "S: +OK scan listing follows", "S: 1 18", "S: 2 26", "S: .",
        "C: LIST 2", "S: +OK 2 26",
        "C: UIDL", "S: +OK unique-id listing follows", "S: 1 m1", "S: 2 m2", "S: .",
        "C: UIDL 1", "S: +OK 1 m1",
        "C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
        "C: TOP 1 0", "S: +OK 18 octets", "S: Subject: a", "S: ", "S: .",
        "C: NOOP", "S: +OK",
    )  # fmt: skip
    assert backend.stores["alice"].mutations == []


async def test_dele_then_rset_restores_message(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN,
        "C: DELE 1", "S: +OK message 1 deleted",
        "C: DELE 1", "S: -ERR message already deleted",
        "C: RETR 1", "S: -ERR message already deleted",
        "C: LIST 1", "S: -ERR message already deleted",
        "C: UIDL 1", "S: -ERR message already deleted",
        "C: TOP 1 0", "S: -ERR message already deleted",
        "C: STAT", "S: +OK 1 26",
        "C: LIST", "S: +OK scan listing follows", "S: 2 26", "S: .",
        "C: RSET", "S: +OK deletion marks removed",
        "C: STAT", "S: +OK 2 44",
        "C: QUIT", "S: +OK bye",
    )  # fmt: skip
    assert backend.stores["alice"].mutations == []
    assert len(backend.stores["alice"].messages) == 2


async def test_quit_applies_exactly_the_deleted_messages(backend: MemoryBackend) -> None:
    backend.stores["alice"].add(b"Subject: c\r\n\r\n3\r\n")
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: USER alice", "S: +OK send PASS", "C: PASS secret", "S~ \\+OK .*",
        "C: DELE 1", "S: +OK message 1 deleted", "C: DELE 3", "S: +OK message 3 deleted",
        "C: QUIT", "S: +OK bye",
    )  # fmt: skip
    store = backend.stores["alice"]
    assert store.mutations == [("expunge", ("m1", "m3"))]
    assert [m.identity for m in store.messages] == ["m2"]
    # the LOGOUT waits for the connection's end (`abort`), after the client has its +OK
    assert not backend.opened[-1].closed
    await session.abort()
    assert backend.opened[-1].closed


async def test_failed_update_answers_sys_temp_and_keeps_the_rest(backend: MemoryBackend) -> None:
    backend.stores["alice"].fail_dispose = {"m2"}
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "C: DELE 1", "S~ \\+OK.*", "C: DELE 2", "S~ \\+OK.*",
        "C: QUIT", "S: -ERR [SYS/TEMP] some deleted messages not removed",
    )  # fmt: skip
    assert [m.identity for m in backend.stores["alice"].messages] == ["m2"]


@pytest.mark.parametrize("end", [b"", b"QUIT"])  # dropped, or QUIT without its CRLF
async def test_session_ending_without_quit_applies_nothing(
    backend: MemoryBackend, end: bytes
) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN, "C: DELE 1", "S~ \\+OK.*")
    await exchange(session, out, end)
    await session.abort()
    assert backend.stores["alice"].mutations == []
    assert backend.opened[-1].closed


async def test_wrong_password_gets_auth_code_then_retry_works(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out,
        "C: USER alice", "S: +OK send PASS", "C: PASS wrong", AUTH_FAILED,
        "C: STAT", "S: -ERR command not valid in this state",
        "C: USER nobody", "S: +OK send PASS", "C: PASS x", AUTH_FAILED,
        *LOGIN,
    )  # fmt: skip


async def test_too_many_failed_logins_close_the_connection(backend: MemoryBackend) -> None:
    session, out = make_session(backend, SessionPolicy(plaintext_auth=True, max_auth_failures=2))
    await exchange(session, out, b"USER alice\r\nPASS x\r\n")
    reply, closed = await exchange(session, out, b"USER alice\r\nPASS y\r\n")
    assert closed and reply.endswith(b"-ERR [AUTH] authentication failed\r\n")


async def test_second_session_gets_in_use_only_with_right_password(backend: MemoryBackend) -> None:
    services = quick_services(backend)
    first, out1 = make_session(backend, services=services)
    await assert_dialogue(first, out1, *LOGIN)
    second, out2 = make_session(backend, services=services)
    await assert_dialogue(
        second, out2,
        "C: USER ALICE", "S: +OK send PASS", "C: PASS wrong", AUTH_FAILED,
        "C: USER alice", "S: +OK send PASS", "C: PASS secret",
        "S: -ERR [IN-USE] maildrop already locked by another session",
    )  # fmt: skip
    assert backend.opened[-1].closed  # the second mailbox was released
    await assert_dialogue(first, out1, "C: QUIT", "S: +OK bye")
    await first.abort()  # the connection's end: LOGOUT, then the lock is free
    third, out3 = make_session(backend, services=services)
    await assert_dialogue(third, out3, *LOGIN)


async def test_backend_outage_is_sys_temp_and_not_auth(backend: MemoryBackend) -> None:
    backend.unavailable = True
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: USER alice", "S~ \\+OK.*", "C: PASS secret",
        f"S: -ERR [SYS/TEMP] {BackendUnavailable.wire_text}",
    )  # fmt: skip


async def test_login_waits_for_a_slot_and_is_refused_temporarily_when_none_frees(
    backend: MemoryBackend,
) -> None:
    gate = LoginGate(1, wait=0.05)
    services = Services(backend=backend, throttle=quick_services(backend).throttle, logins=gate)
    session, out = make_session(backend, services=services)
    async with gate.slot():  # another login holds the only slot
        await assert_dialogue(
            session, out, "C: USER alice", "S~ \\+OK.*", "C: PASS secret",
            f"S: -ERR [SYS/TEMP] {LoginsBusy.wire_text}",
        )  # fmt: skip
    assert backend.attempts == 0  # the upstream was never asked
    # not a failed login: no delay, no strike, and the next try gets in
    await assert_dialogue(session, out, *LOGIN, "C: STAT", "S: +OK 2 44")


async def test_plaintext_refused_without_tls_unless_opted_in(backend: MemoryBackend) -> None:
    session, out = make_session(backend, SessionPolicy(plaintext_auth=False))
    await assert_dialogue(
        session, out,
        "C: CAPA", "S: +OK capability list follows", "S: TOP", "S: UIDL", "S: RESP-CODES",
        "S: AUTH-RESP-CODE", "S: PIPELINING", "S: EXPIRE NEVER", "S: IMPLEMENTATION popbridge",
        "S: .",
        "C: USER alice",
        "S: -ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections",
        "C: PASS secret", "S: -ERR PASS must follow a successful USER",
    )  # fmt: skip
    assert backend.opened == []


async def test_capa_is_the_same_in_both_states(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    before, _ = await exchange(session, out, b"CAPA\r\n")
    await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    after, _ = await exchange(session, out, b"CAPA\r\n")
    assert before == after and b"\r\nUSER\r\n" in before


async def test_message_expunged_upstream_during_session(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN)
    backend.stores["alice"].messages.pop(0)  # another client expunged message 1
    await assert_dialogue(
        session, out,
        "C: RETR 1", "S: -ERR message no longer available",
        "C: LIST", "S: +OK scan listing follows", "S: 1 18", "S: 2 26", "S: .",
        "C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
    )  # fmt: skip


async def test_new_mail_is_not_seen_until_the_next_session(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN)
    backend.stores["alice"].add(b"Subject: new\r\n\r\n")
    await assert_dialogue(
        session, out, "C: STAT", "S: +OK 2 44", "C: LIST 3", "S: -ERR no such message"
    )


@pytest.mark.parametrize("line", ["LIST 0", "LIST 3", "RETR 0", "DELE 99", "TOP 3 1", "UIDL 3"])
async def test_out_of_range_numbers(backend: MemoryBackend, line: str) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN, f"C: {line}", "S: -ERR no such message")


async def test_keyword_disposition_hides_messages_from_later_sessions(
    backend: MemoryBackend,
) -> None:
    policy = SessionPolicy(
        plaintext_auth=True,
        disposition=Disposition(DispositionKind.KEYWORD, keyword="$POP3Deleted"),
    )
    session, out = make_session(backend, policy)
    await assert_dialogue(session, out, *LOGIN, "C: DELE 2", "S~ \\+OK.*", "C: QUIT", "S: +OK bye")
    later, out2 = make_session(backend, policy)
    await assert_dialogue(
        later,
        out2,
        "C: USER alice",
        "S~ .*",
        "C: PASS secret",
        "S: +OK maildrop has 1 messages (18 octets)",
    )
    assert len(backend.stores["alice"].messages) == 2


async def test_mark_seen_on_retr_is_applied_only_at_quit(backend: MemoryBackend) -> None:
    policy = SessionPolicy(plaintext_auth=True, mark_seen_on_retr=True)
    session, out = make_session(backend, policy)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\nRETR 1\r\nTOP 2 0\r\n")
    assert backend.stores["alice"].mutations == []
    await exchange(session, out, b"QUIT\r\n")
    assert backend.stores["alice"].mutations == [("seen", ("m1",))]


async def test_apop_and_unknown_mechanisms_are_refused(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: APOP alice 0123", "S: -ERR command not supported",
        "C: AUTH FOOBAR", "S: -ERR unsupported authentication mechanism",
        "C: QUIT", "S: +OK bye",
    )  # fmt: skip


async def test_misreported_size_is_corrected_for_later_sessions(backend: MemoryBackend) -> None:
    backend.stores["alice"].misreported["m2"] = 24  # as IMAP does for an unterminated last line
    services = quick_services(backend)
    first, out = make_session(backend, services=services)
    await assert_dialogue(
        first, out, "C: USER alice", "S~ .*", "C: PASS secret", "S~ .*", "C: LIST 2", "S: +OK 2 24",
        "C: RETR 2", "S: +OK 24 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .",
        "C: QUIT", "S: +OK bye",
    )  # fmt: skip
    await first.abort()
    second, out2 = make_session(backend, services=services)
    await assert_dialogue(second, out2, *LOGIN, "C: LIST 2", "S: +OK 2 26")


class _CloseOnce(MemoryBackend):
    """Counts closes of every mailbox it opens; a second close of one fails the test."""

    def __init__(self, *, list_fails: bool) -> None:
        super().__init__()
        self.list_fails = list_fails
        self.closes: list[int] = []

    async def open(self, credentials: Credentials) -> MemoryMailbox:
        mailbox = await super().open(credentials)
        index = len(self.closes)
        self.closes.append(0)
        real_list, real_close = mailbox.list, mailbox.close

        async def listing(**options: Any) -> Sequence[RemoteMessage]:
            if self.list_fails:
                raise BackendUnavailable("listing failed")
            return await real_list(**options)

        async def close() -> None:
            self.closes[index] += 1
            assert self.closes[index] == 1, "Mailbox.close called twice"
            await real_close()

        mailbox.list, mailbox.close = listing, close  # type: ignore[method-assign]
        return mailbox


@pytest.mark.parametrize("list_fails", [True, False])
async def test_each_opened_mailbox_is_closed_exactly_once(list_fails: bool) -> None:
    # The contract promises one close per mailbox; a failed listing used to close it twice.
    backend = _CloseOnce(list_fails=list_fails)
    backend.user("alice", "secret", MSG1)
    services = quick_services(backend)
    session, out = make_session(backend, services=services)
    reply, _ = await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    assert (b"-ERR [SYS/TEMP]" in reply) is list_fails
    await exchange(session, out, b"QUIT\r\n")
    await session.abort()
    assert backend.closes == [1]
    backend.list_fails = False  # the lock was released too: the next login gets in
    again, out = make_session(backend, services=services)
    reply, _ = await exchange(again, out, b"USER alice\r\nPASS secret\r\n")
    assert reply.endswith(b"+OK maildrop has 1 messages (18 octets)\r\n")
    await again.abort()


class _Windowed(MemoryBackend):
    def __init__(self, expire: str | None) -> None:
        super().__init__()
        self.expire = expire


@pytest.mark.parametrize(
    ("expire", "line"), [("NEVER", b"EXPIRE NEVER"), ("30", b"EXPIRE 30"), (None, None)]
)
async def test_expire_tells_the_backends_truth(expire: str | None, line: bytes | None) -> None:
    # RFC 2449 §6.7: NEVER without a window, the days of a date window, nothing for a
    # window of the newest N (messages leave it with every arrival)
    backend = _Windowed(expire)
    session, out = make_session(backend)
    reply, _ = await exchange(session, out, b"CAPA\r\n")
    lines = reply.split(b"\r\n")
    assert [x for x in lines if x.startswith(b"EXPIRE")] == ([line] if line else [])
