"""The contract harness for IMAP servers seeded over IMAP (Courier, GNU Mailutils imap4d).

This module owns `PeerHarness`, which gives `tests.backends.contract` a backend that reaches
the server over verified TLS from the first byte (both servers offer it), or in plain text
through a `RecordingProxy` when a test needs to read what went on the wire; and the checks of
the fallbacks those servers need, shared by their test modules: what a disposition sent, and
that nothing outside the given UIDs changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest

from backends.imap import create
from devkit.dovecot import free_port
from devkit.fake_imap import RecordingProxy
from devkit.imap_peer import ImapPeer
from popbridge.contract import Backend, Credentials, DisposeResult, Disposition, DispositionKind
from tests.backends.contract import Stored, Where, by_subject, message

CHUNK = 256 * 1024


class PeerHarness:
    """Seeds with APPEND, reads back with EXAMINE; the backend speaks implicit TLS."""

    fetch_chunk = CHUNK

    def __init__(self, peer: ImapPeer, user: str, proxy: RecordingProxy) -> None:
        self.peer = peer
        self.user = user
        self.proxy = proxy  # to the plain port, for the tests that read the wire
        self.credentials = Credentials(user, peer.users[user])
        self.move_folder = peer.folders["move"]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        table = {
            "type": "imap", "host": "localhost", "port": self.peer.imaps_port, "tls": "implicit",
            "ca_file": str(self.peer.pki.ca_file), "timeout": 20, "fetch_chunk": CHUNK,
        }  # fmt: skip
        return table | overrides

    def backend(self, **overrides: Any) -> Backend:
        return create(self.settings(**overrides), source="test.toml")

    def recorded(self, **overrides: Any) -> Backend:
        """A backend on the plain port through `proxy`, so `proxy.sent` is readable."""
        plain = {"host": "127.0.0.1", "port": self.proxy.port, "tls": "none", "ca_file": None}
        table = {k: v for k, v in (self.settings() | plain | overrides).items() if v is not None}
        return create(table, source="test.toml")

    def unreachable(self) -> Backend:
        return self.backend(port=free_port(), connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> None:
        self.peer.seed(self.user, messages)

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        return self.peer.seed_generated(self.user, count, size)

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        folder = "INBOX" if where == "maildrop" else self.peer.folders[where]
        return [
            Stored(
                subject=m.subject,
                seen="\\Seen" in m.flags,
                deleted="\\Deleted" in m.flags,
                keywords=frozenset(f for f in m.flags if not f.startswith("\\")),
            )
            for m in self.peer.stored(self.user, folder)
        ]

    def commands(self) -> list[str]:
        """The commands the recorded backend sent, without their tags."""
        found = re.findall(rb"^\S+ ((?:UID )?[A-Z]+)\b", bytes(self.proxy.sent), re.MULTILINE)
        return [name.decode() for name in found]


def subjects(stored: Sequence[Stored], *, deleted: bool | None = None) -> list[str]:
    """Subjects of `stored`, only those with (or without) `\\Deleted` when `deleted` is given."""
    return sorted(m.subject for m in stored if deleted is None or m.deleted == deleted)


async def dispose_a_and_b(
    harness: PeerHarness, how: Disposition, *, recorded: bool = False
) -> tuple[DisposeResult, set[str]]:
    """Seed a, b, c; dispose of a and b; return the result and what the next listing shows."""
    harness.seed([message("a"), message("b"), message("c")])
    backend = harness.recorded() if recorded else harness.backend()
    mailbox = await backend.open(harness.credentials)
    try:
        listed = await by_subject(mailbox)
        result = await mailbox.dispose([listed["a"].identity, listed["b"].identity], how)
    finally:
        await mailbox.close()
    again = await harness.backend().open(harness.credentials)
    try:
        return result, set(await by_subject(again, how.hides_keyword))
    finally:
        await again.close()


async def assert_trash_touches_nothing(
    harness: PeerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """For servers with no folder carrying `\\Trash` (RFC 6154): `trash` touches nothing and
    reports every message as not done."""
    how = Disposition(DispositionKind.TRASH)
    result, listed = await dispose_a_and_b(harness, how, recorded=True)
    assert not result.ok
    assert len(result.failed) == 2
    assert "no \\Trash special-use folder" in result.detail
    assert listed == {"a", "b", "c"}
    assert subjects(harness.stored(), deleted=False) == ["a", "b", "c"]
    assert harness.stored("trash") == []
    assert not {"UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE"} & set(harness.commands())
    assert "not trash" in caplog.text


async def assert_starttls_works(harness: PeerHarness) -> None:
    """The plain port upgrades with STARTTLS (RFC 3501 6.2.1), verified with the test CA."""
    harness.seed([message("after starttls")])
    backend = harness.backend(tls="starttls", port=harness.peer.imap_port)
    assert any(line.startswith("TLS verified: TLSv1.") for line in await backend.check())
    mailbox = await backend.open(harness.credentials)
    try:
        assert list(await by_subject(mailbox)) == ["after starttls"]
    finally:
        await mailbox.close()
