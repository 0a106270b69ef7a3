"""Durable state end to end: real `popbridge serve` processes, a real Dovecot, a real PostgreSQL.

This module owns the tests that only whole processes can show: a mailbox rebuilt under the
bridge (Dovecot's UID list and indexes deleted, so the IMAP UIDVALIDITY really changes,
RFC 3501 section 2.3.1.1) leaves every POP3 UIDL unchanged through a restart of a bridge
on the SQLite store (RFC 1939 section 7); and two bridge processes sharing one PostgreSQL
store give a second session on the same mailbox `-ERR [IN-USE]` (RFC 2449 section 8.1.2)
until the process holding the lock is killed with SIGKILL, after which the other process
lets the user in. Every bridge is stopped by PID, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import poplib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import Dovecot, free_port
from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)

pytestmark = pytest.mark.dovecot

USER = "bob"
START_TIMEOUT = 20.0
LOCK_RELEASE_DEADLINE = 60.0  # a bound against hanging, not a timing assertion


class Bridge:
    """One `popbridge serve` process on its own port, logging to a file."""

    def __init__(
        self, directory: Path, dovecot: Dovecot, store: str, name: str, *,
        server: str = "", listener: str = "", maildrop: str = "",
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.config = directory / f"{name}.toml"
        self.log = directory / f"{name}.log"
        self.config.write_text(
            f"""
[server]
auth_failure_delay = 0
log_level = "DEBUG"
{server}

[[listeners]]
host = "127.0.0.1"
port = {self.port}
plaintext_auth = true
{listener}

[backend]
type = "imap"
host = "{dovecot.host}"
port = {dovecot.imap_port}
tls = "none"
timeout = 10

[store]
{store}

[maildrop]
{maildrop}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Bridge:
        script = Path(sys.executable).with_name("popbridge")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(script), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "popbridge did not start listening"
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, sig)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def login(self, password: str) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", self.port, timeout=20)
        try:
            client.user(USER)
            client.pass_(password)
        except BaseException:
            client.close()
            raise
        return client


def _die_with_parent() -> None:
    # In the child before exec: SIGTERM the bridge if the test process dies first.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@pytest.fixture
def bridges() -> Iterator[list[Bridge]]:
    started: list[Bridge] = []
    yield started
    for bridge in started:
        bridge.stop()


def uidls_by_message_id(client: poplib.POP3) -> dict[str, str]:
    """Message-ID -> UIDL for the whole maildrop (TOP n 0 reads only the header)."""
    found = {}
    for line in client.uidl()[1]:
        number, uidl = line.decode().split()
        header = b"\n".join(client.top(int(number), 0)[1])
        match = re.search(rb"^Message-ID: *(\S+)", header, re.MULTILINE | re.IGNORECASE)
        assert match is not None
        found[match.group(1).decode()] = uidl
    return found


def uidvalidity(dovecot: Dovecot) -> int:
    client = dovecot.imap(USER)
    try:
        typ, _ = client.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(client.response("UIDVALIDITY")[1][0])
    finally:
        client.logout()


def rebuild(dovecot: Dovecot) -> None:
    """What a Maildir copied or restored without Dovecot's UID list does: new UIDs for all.

    The Maildir files stay (same content, same mtime, so the same INTERNALDATE); the UID
    list and the indexes go, so Dovecot numbers the messages again under a new UIDVALIDITY
    (it keeps `dovecot-uidvalidity`, which makes the new value differ from the old one).
    """
    root = dovecot.maildir(USER)
    for entry in root.iterdir():
        if entry.is_file() and (
            entry.name == "dovecot-uidlist" or entry.name.startswith("dovecot.index")
        ):
            entry.unlink()


def sqlite_bridge(
    dovecot: Dovecot, tmp_path: Path, bridges: list[Bridge], messages: int, maildrop: str = ""
) -> tuple[Bridge, str]:
    """A bridge with a sqlite store in front of USER's mailbox, seeded afresh; and the password."""
    dovecot.reset_mailbox(USER)
    dovecot.seed_generated(USER, messages, 700)
    store = f'type = "sqlite"\npath = "{tmp_path / "state.sqlite3"}"'
    bridge = Bridge(tmp_path, dovecot, store, "sqlite", maildrop=maildrop).start()
    bridges.append(bridge)
    return bridge, dovecot.users[USER]


def test_a_uidvalidity_reset_changes_no_uidl(
    dovecot: Dovecot, tmp_path: Path, bridges: list[Bridge]
) -> None:
    bridge, password = sqlite_bridge(dovecot, tmp_path, bridges, 6)
    client = bridge.login(password)
    before = uidls_by_message_id(client)
    client.quit()
    old_validity = uidvalidity(dovecot)
    assert all(uidl.startswith(f"{old_validity}.") for uidl in before.values())

    bridge.stop()
    rebuild(dovecot)
    new_validity = uidvalidity(dovecot)
    assert new_validity != old_validity  # the IMAP identities really changed

    bridge.start()
    client = bridge.login(password)
    after = uidls_by_message_id(client)
    assert after == before  # RFC 1939 section 7: not one UIDL changed
    client.dele(1)
    client.quit()
    dovecot.seed_generated(USER, 1, 700)  # a new arrival after the reset and a delete
    client = bridge.login(password)
    latest = uidls_by_message_id(client)
    client.quit()
    (new,) = set(latest.values()) - set(before.values())
    assert new.startswith(f"{new_validity}.") and new not in before.values()
    assert password not in bridge.log.read_text()


def test_a_copy_of_a_hidden_message_gets_a_uidl_of_its_own(
    dovecot: Dovecot, tmp_path: Path, bridges: list[Bridge]
) -> None:
    # Another client sets the hiding keyword on a message, copies it and clears the keyword
    # on the copy: same Message-ID, date (RFC 3501 6.4.7 keeps INTERNALDATE) and size. A
    # client that keeps mail has the hidden one's UIDL; were the copy to inherit it, that
    # client would never download the copy (RFC 1939 section 7).
    keyword = 'disposition = "keyword"\nkeyword = "$POP3Deleted"'
    bridge, password = sqlite_bridge(dovecot, tmp_path, bridges, 3, maildrop=keyword)
    client = bridge.login(password)
    before = [line.split()[1] for line in client.uidl()[1]]
    client.quit()
    imap = dovecot.imap(USER)
    try:
        imap.select("INBOX")
        imap.uid("STORE", "2", "+FLAGS", "($POP3Deleted)")
        imap.uid("COPY", "2", "INBOX")
        _, data = imap.response("COPYUID")  # RFC 4315 section 3: uidvalidity, source, copy
        imap.uid("STORE", data[0].split()[-1].decode(), "-FLAGS", "($POP3Deleted)")
    finally:
        imap.logout()
    client = bridge.login(password)
    after = [line.split()[1] for line in client.uidl()[1]]
    client.quit()
    assert after[:-1] == [before[0], before[2]]
    assert after[-1] not in before


def test_two_processes_on_one_postgres_share_the_lock(
    dovecot: Dovecot,
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    bridges: list[Bridge],
) -> None:
    dovecot.reset_mailbox(USER)
    dovecot.seed_generated(USER, 3, 500)
    database = asyncio.run(create_database(postgres))
    try:
        dsn_file = tmp_path / "dsn"
        dsn_file.write_text(postgres.dsn(database) + "\n")
        store = f'type = "postgres"\ndsn_file = "{dsn_file}"'
        first = Bridge(tmp_path, dovecot, store, "first").start()
        second = Bridge(tmp_path, dovecot, store, "second").start()
        bridges += [first, second]
        _contend_then_kill(first, second, dovecot.users[USER])
        for bridge in bridges:
            log = bridge.log.read_text()
            assert postgres.password not in log and dovecot.users[USER] not in log
    finally:
        for bridge in bridges:
            bridge.stop()
        asyncio.run(drop_database(postgres, database))


def _contend_then_kill(first: Bridge, second: Bridge, password: str) -> None:
    holder = first.login(password)
    seen = holder.uidl()[1]
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.login(password).quit()
    assert first.process is not None
    first.stop(signal.SIGKILL)  # the holder dies without releasing anything
    holder.close()
    client = _login_once_free(second, password)
    assert client.uidl()[1] == seen  # one UID map for both processes
    client.quit()


def _login_once_free(bridge: Bridge, password: str) -> poplib.POP3:
    """Log in, retrying while the answer is `[IN-USE]` (bounded by a deadline)."""
    deadline = time.monotonic() + LOCK_RELEASE_DEADLINE
    while True:
        try:
            return bridge.login(password)
        except poplib.error_proto as refused:
            reply = refused.args[0]
        if b"[IN-USE]" not in reply:
            raise AssertionError(reply)
        if time.monotonic() > deadline:
            raise AssertionError("the dead holder's lock was never released")
        time.sleep(0.1)
