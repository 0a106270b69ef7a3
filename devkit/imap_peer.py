"""What the launchers of further real IMAP servers share: a running peer seeded and read over IMAP.

This module owns `ImapPeer`, the handle tests get for a server that is filled through IMAP APPEND
(Courier IMAP, GNU Mailutils imap4d): log in, seed messages, read back UIDs, flags and Subjects
with EXAMINE, empty the folders between tests, and stop the server by the PID it was started
with; and waiting until a freshly started server's ports accept.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dovecot import free_port, generate_message, pid_running, wire_form
from .installed import NotInstalled, require, unpacked
from .tlsca import TestPki

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_UID = re.compile(rb"UID (\d+)")
_SUBJECT = re.compile(rb"Subject: ?([^\r\n]*)", re.IGNORECASE)  # imap4d sends SUBJECT:


def wait_ready(process: subprocess.Popen[bytes], ports: Sequence[int], name: str) -> None:
    """Return once every port accepts a connection; raise if `process` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            raise ChildProcessError(f"{name} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} ports {pending} not accepting")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=1).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.05)


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, in increasing order."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Message:
    """One message as IMAP shows it."""

    uid: int
    subject: str
    flags: frozenset[str]


@dataclass
class ImapPeer:
    """A running server; `directory` (removed by `stop()`) holds its config, mail and `tls/`.

    `folders` maps the roles tests use ("trash", "move") to this server's folder names;
    `stop_signal` ends `process` and everything it started; with `group`, `process` leads a
    process group of its own (the server forks a child per connection) and the whole group
    gets the signal.
    """

    name: str
    directory: Path
    imap_port: int
    imaps_port: int
    pki: TestPki
    process: subprocess.Popen[bytes]
    users: dict[str, str]
    folders: dict[str, str]
    host: str = "127.0.0.1"
    stop_signal: signal.Signals = signal.SIGTERM
    group: bool = False
    # imap4d gives the newest message of Maildir's new/ another UID once a read-write SELECT
    # has moved it to cur/; seeding ends with one, so tests start from UIDs that stay.
    settle: bool = False
    # A faster way to seed many messages than one APPEND each, where the server needs one.
    bulk_seed: Callable[[str, Sequence[bytes]], None] | None = None
    log_files: tuple[str, ...] = ()

    @property
    def pid(self) -> int:
        return self.process.pid

    def imap(self, user: str, *, tls: bool = False) -> imaplib.IMAP4:
        """A logged-in client. TCP_NODELAY: imaplib writes a literal and its CRLF separately,
        which costs ~40 ms per command with Nagle and delayed ACK."""
        client: imaplib.IMAP4
        if tls:
            context = ssl.create_default_context(cafile=str(self.pki.ca_file))
            client = imaplib.IMAP4_SSL("localhost", self.imaps_port, ssl_context=context)
        else:
            client = imaplib.IMAP4(self.host, self.imap_port, timeout=60)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.login(user, self.users[user])
        return client

    @contextlib.contextmanager
    def session(self, user: str) -> Iterator[imaplib.IMAP4]:
        client = self.imap(user)
        try:
            yield client
        finally:
            client.logout()

    def capabilities(self, user: str) -> frozenset[str]:
        """What the server announces after LOGIN (RFC 3501 7.2.1)."""
        with self.session(user) as client:
            _, data = client.capability()
        return frozenset((data[0] or b"").decode().upper().split())

    def seed(self, user: str, messages: Sequence[bytes], folder: str = "INBOX") -> None:
        """APPEND each message (LF or CRLF; sent as CRLF) in order: the i-th gets the next UID."""
        with self.session(user) as client:
            for message in messages:
                typ, data = client.append(quote(folder), "", None, wire_form(message))
                if typ != "OK":
                    raise RuntimeError(f"APPEND to {folder} failed: {data!r}")
            if self.settle:
                client.select(quote(folder))  # read-write: see `settle`

    def seed_generated(self, user: str, count: int, size: int) -> list[bytes]:
        """Seed `count` generated messages of about `size` bytes; returns their CRLF forms."""
        messages = [wire_form(generate_message(i + 1, size)) for i in range(count)]
        if self.bulk_seed is None:
            self.seed(user, messages)
            return messages
        self.bulk_seed(user, messages)
        with self.session(user) as client:
            # read-write: Courier keeps the UIDs it hands out only then; numbered now, before
            # any later APPEND
            client.select("INBOX")
        return messages

    def stored(self, user: str, folder: str = "INBOX") -> list[Message]:
        """Every message in `folder` in UID order, read with EXAMINE (changes nothing)."""
        with self.session(user) as client:
            typ, data = client.select(quote(folder), readonly=True)
            if typ != "OK":
                raise RuntimeError(f"EXAMINE {folder} failed: {data!r}")
            if int(data[0] or 0) == 0:
                return []
            _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        items: list[Any] = list(data)  # imaplib's stubs say bytes; FETCH gives tuples too
        return sorted((_message(item) for item in items if isinstance(item, tuple)), key=_by_uid)

    def uids(self, user: str, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags (without `\\Recent`) of every message in `folder`."""
        return {m.uid: set(m.flags) for m in self.stored(user, folder)}

    def reset_mailbox(self, user: str) -> None:
        """Expunge everything in INBOX and the role folders (the folders themselves stay)."""
        with self.session(user) as client:
            for folder in ("INBOX", *self.folders.values()):
                typ, data = client.select(quote(folder))
                if typ == "OK" and int(data[0] or 0) > 0:
                    client.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
                    client.expunge()  # the test's own cleanup, not the bridge: all of it goes

    def log(self) -> str:
        """The tail of the server's log files, for a failing test's message."""
        parts = []
        for name in self.log_files:
            path = self.directory / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Signal the started process, wait until it has exited, remove the directory."""
        if self.process.poll() is None:
            if self.group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, self.stop_signal)
            else:
                self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        if self.group:
            self._wait_for_group()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _wait_for_group(self) -> None:
        """Until the children serving connections have exited too: SIGKILL after 2 s (an
        imap4d child waiting on a TLS read outlives SIGTERM).
        A child that ends as a zombie no one reaps (no init here) counts as exited."""
        for last, grace in ((False, 2.0), (True, STOP_TIMEOUT)):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                members = [p for p in _group_members(self.process.pid) if pid_running(p)]
                if not members:
                    return
                time.sleep(0.02)
            if not last:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)


def _group_members(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(int(stat.parent.name))
    return found


def _by_uid(message: Message) -> int:
    return message.uid


def _message(item: tuple[bytes, bytes]) -> Message:
    flags = _FLAGS.search(item[0])
    uid = _UID.search(item[0])
    subject = _SUBJECT.search(item[1])
    return Message(
        uid=int(uid.group(1)) if uid else 0,
        subject=subject.group(1).decode() if subject else "",
        flags=frozenset(flags.group(1).decode().split()) - {"\\Recent"} if flags else frozenset(),
    )


def ready(peer: ImapPeer) -> ImapPeer:
    """`peer` once both its ports accept; else it is stopped and the error carries its log."""
    try:
        wait_ready(peer.process, [peer.imap_port, peer.imaps_port], peer.name)
    except BaseException as exc:
        log = peer.log()
        peer.stop()
        raise RuntimeError(f"{peer.name} did not start: {exc}\n{log}") from exc
    return peer


__all__ = ["ImapPeer", "Message", "NotInstalled", "free_ports", "ready", "require", "unpacked"]
