"""A few seconds of the fuzz target in CI: the seeds and a few thousand seeded mutants.

The long run (a million inputs, coverage-guided with atheris) is documented in fuzz/README.md.
The tests after the first plant a bug of each kind the harness looks for and check that it
is caught, so a harness that silently stopped checking would fail here.
"""

from __future__ import annotations

import pytest

from devkit.memory_backend import MemoryMailbox
from fuzz import harness
from fuzz.fuzz_parser import plain
from popbridge.pop3.commands import User
from popbridge.pop3.replies import Err, Ok
from popbridge.session.session import Session
from popbridge.session.transaction import Transaction

LOGGED_IN = b"\x05\xff"  # preamble USER/PASS, plaintext allowed, whole stream at once


def test_seeds_and_mutants_keep_every_property() -> None:
    # any violated property raises; inputs that hit a bug proven in test_bugs.py are counted
    runs, known_bug_hits = plain(4000, seed=20240601)
    assert runs == 4000
    assert known_bug_hits < runs // 10, "a known bug hides most of the run"


def test_an_echoed_user_name_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    async def echo(self: Session, command: User) -> Err:
        return Err(f"no {command.name}")

    monkeypatch.setattr(Session, "_authorization", echo)
    with pytest.raises(AssertionError, match="no mallory"):
        harness.check(b"\x04\xffUSER mallory\r\n")


def test_an_overlong_reply_line_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "capabilities", lambda self: ["X" * 600])
    with pytest.raises(AssertionError, match="reply line of 602 octets"):
        harness.check(b"\x04\xffCAPA\r\n")


def test_a_deletion_without_quit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    async def dele_now(self: Transaction, command: object) -> Ok:
        mailbox = getattr(self.mailbox, "inner", None)  # inside the session's timing wrapper
        assert isinstance(mailbox, MemoryMailbox)
        mailbox.store.mutations.append(("expunge", ("m1",)))  # as if removed at once
        return Ok("message 1 deleted")

    monkeypatch.setattr(Transaction, "answer", dele_now)
    with pytest.raises(AssertionError, match="Dele"):
        harness.check(LOGGED_IN + b"DELE 1\r\n")


def test_an_exception_escaping_the_session_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    async def boom(self: Transaction, command: object) -> Ok:
        raise ValueError("unexpected")

    monkeypatch.setattr(Transaction, "answer", boom)
    with pytest.raises(ValueError, match="unexpected"):
        harness.check(LOGGED_IN + b"STAT\r\n")
