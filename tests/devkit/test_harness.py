"""Proof that the harness works: real clients against Dovecot's OWN POP3 (the direct reference).

This module owns the evidence that ``dovecot.py`` serves what it was seeded with and that every
client runner in ``clients.py`` returns messages byte-for-byte equal to the IMAP ``BODY[]`` of
the originals once :func:`strip_client_additions` is applied, in every TLS mode the client
supports, and that the delete modes really delete (checked over IMAP). If a bridge test fails
while these pass, the bridge is at fault, not the harness.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit import dovecot, installed
from devkit.clients import (
    ClientFailed,
    Pop3Target,
    curl_command,
    curl_list,
    curl_retr,
    curl_retr_all,
    pop3_form,
    poplib_fetch_all,
    run_fetchmail,
    run_getmail,
    run_mpop,
    strip_client_additions,
)
from devkit.courier import start_courier
from devkit.dovecot import Dovecot, pid_running, start_dovecot, wire_form
from devkit.imap_peer import ImapPeer
from devkit.installed import NotInstalled
from devkit.mailutils import start_imap4d

pytestmark = pytest.mark.dovecot
USER, PASSWORD = "alice", "s3cret pass"
# The awkward cases: dot-stuffing, no final newline, 8-bit body, "From " lines, a lone dot.
SPECIAL = [
    b"From: a@example.org\nTo: alice@example.org\nSubject: dots\n\n.leading\n..two\n.\nend\n",
    b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line has no newline",
    "From: a@example.org\nSubject: 8bit\nContent-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n\nGrüße, 日本語\n".encode()
    + b"\xff\xfe raw bytes\n",
    b"From: a@example.org\nSubject: from lines\n\nFrom here on\n>From quoted\n.\n",
]


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    instance = start_dovecot(tmp_path_factory.mktemp("dovecot"), {USER: PASSWORD, "bob": "x"})
    yield instance
    instance.stop()


@pytest.fixture
def originals(reference: Dovecot) -> list[bytes]:
    """A fresh INBOX: 3 generated messages, then SPECIAL; returns their IMAP BODY[] bytes."""
    reference.reset_mailbox(USER)
    generated = reference.seed_generated(USER, 3, 3000)
    reference.seed(USER, SPECIAL)
    return generated + [wire_form(m) for m in SPECIAL]


@pytest.fixture
def expected(originals: list[bytes]) -> list[bytes]:
    return [pop3_form(m) for m in originals]


def target(reference: Dovecot, tls: str) -> Pop3Target:
    port = reference.pop3s_port if tls == "implicit" else reference.pop3_port
    return Pop3Target(reference.host, port, USER, PASSWORD, tls, reference.pki.ca_file)


def imap_bodies(reference: Dovecot) -> list[bytes]:
    client = reference.imap(USER)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    finally:
        client.logout()
    return [item[1] for item in data if isinstance(item, tuple)]


def test_seeded_messages_are_served_in_order_as_seeded(
    reference: Dovecot, originals: list[bytes]
) -> None:
    assert imap_bodies(reference) == originals
    assert list(reference.uids(USER)) == list(range(1, len(originals) + 1))
    assert originals[0].endswith(b"\r\n")
    assert len(originals[0].replace(b"\r\n", b"\n")) == 3000  # the size asked for, on disk


def test_imap_has_special_use_folders_and_extensions(reference: Dovecot) -> None:
    client = reference.imap(USER)
    try:
        _, caps = client.capability()
        _, folders = client.list()
    finally:
        client.logout()
    assert {"UIDPLUS", "MOVE", "SPECIAL-USE", "CONDSTORE"} <= set(caps[0].decode().split())
    listing = b"\n".join(f for f in folders if isinstance(f, bytes))
    for folder in (b"\\Trash", b"\\Junk", b"Archive"):
        assert folder in listing


def test_append_returns_uid_and_sets_flags(reference: Dovecot, originals: list[bytes]) -> None:
    uid = reference.append(USER, b"Subject: appended\n\nhello\n", flags="\\Seen")
    assert uid == len(originals) + 1
    assert reference.uids(USER)[uid] == {"\\Seen"}
    assert imap_bodies(reference)[-1] == b"Subject: appended\r\n\r\nhello\r\n"


def test_reset_gives_empty_mailbox_with_new_uidvalidity(reference: Dovecot) -> None:
    def uidvalidity() -> bytes:
        client = reference.imap("bob")
        try:
            return client.status("INBOX", "(UIDVALIDITY MESSAGES)")[1][0] or b""
        finally:
            client.logout()

    reference.seed("bob", [b"Subject: x\n\nx\n"])
    before = uidvalidity()
    reference.reset_mailbox("bob")
    after = uidvalidity()
    assert before != after
    assert b"MESSAGES 0" in after


@pytest.mark.clients
@pytest.mark.parametrize("tls", ["none", "implicit", "starttls"])
def test_poplib_reads_everything_and_deletes(
    reference: Dovecot, expected: list[bytes], tls: str
) -> None:
    assert poplib_fetch_all(target(reference, tls), delete=False) == expected
    assert poplib_fetch_all(target(reference, tls), delete=True) == expected
    assert reference.uids(USER) == {}


@pytest.mark.clients
@pytest.mark.parametrize(("tls", "keep"), [("none", True), ("implicit", False), ("starttls", True)])
def test_fetchmail(
    reference: Dovecot, expected: list[bytes], tmp_path: Path, tls: str, keep: bool
) -> None:
    got = run_fetchmail(target(reference, tls), tmp_path, keep=keep)
    assert [strip_client_additions("fetchmail", m) for m in got] == expected
    if keep:
        # TOP n 99999999 downloads, so nothing is \Seen; the UIDL list stops a second fetch.
        assert all("\\Seen" not in flags for flags in reference.uids(USER).values())
        assert len(reference.uids(USER)) == len(expected)
        assert run_fetchmail(target(reference, tls), tmp_path, keep=keep) == []
    else:
        assert reference.uids(USER) == {}


@pytest.mark.clients
@pytest.mark.parametrize(("tls", "keep"), [("none", True), ("implicit", True), ("starttls", False)])
def test_mpop(
    reference: Dovecot, expected: list[bytes], tmp_path: Path, tls: str, keep: bool
) -> None:
    got = run_mpop(target(reference, tls), tmp_path, keep=keep)
    assert [strip_client_additions("mpop", m) for m in got] == expected
    assert len(reference.uids(USER)) == (len(expected) if keep else 0)
    if keep:
        assert run_mpop(target(reference, tls), tmp_path, keep=keep) == []


@pytest.mark.clients
@pytest.mark.parametrize(("tls", "delete"), [("none", False), ("implicit", True)])
def test_getmail(
    reference: Dovecot, expected: list[bytes], tmp_path: Path, tls: str, delete: bool
) -> None:
    got = run_getmail(target(reference, tls), tmp_path, delete=delete)
    assert [strip_client_additions("getmail", m) for m in got] == expected
    assert len(reference.uids(USER)) == (0 if delete else len(expected))


@pytest.mark.clients
def test_getmail_rewrites_long_and_tabbed_header_lines(reference: Dovecot, tmp_path: Path) -> None:
    reference.reset_mailbox(USER)
    subject = b"Subject:" + b" word" * 30 + b"\n"
    reference.seed(USER, [b"X-Tab:\tvalue\n" + subject + b"\nbody\n"])
    [got] = run_getmail(target(reference, "none"), tmp_path, delete=False)
    header, body = strip_client_additions("getmail", got).split(b"\r\n\r\n", 1)
    assert body == b"body\r\n"
    assert header.startswith(b"X-Tab: value\r\nSubject: word")  # the tab became a space
    assert b"\r\n word" in header  # refolded at 78 characters
    assert header.replace(b"\r\n ", b" ") + b"\r\n" == subject.replace(b"\n", b"\r\n").replace(
        b"Subject:", b"X-Tab: value\r\nSubject:"
    )


@pytest.mark.clients
def test_getmail_has_no_stls(reference: Dovecot, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="STLS"):
        run_getmail(target(reference, "starttls"), tmp_path, delete=False)


@pytest.mark.clients
@pytest.mark.parametrize("tls", ["none", "implicit", "starttls"])
def test_curl(
    reference: Dovecot, originals: list[bytes], expected: list[bytes], tmp_path: Path, tls: str
) -> None:
    pop3 = target(reference, tls)
    # LIST counts the stored message: not the CRLF a reply adds after "no final newline".
    sizes = "".join(f"{n} {len(m)}\r\n" for n, m in enumerate(originals, 1))
    assert curl_list(pop3) == sizes
    assert curl_retr(pop3, 1) == expected[0]
    assert curl_retr_all(pop3, len(expected), tmp_path) == expected
    assert curl_command(pop3, "STAT") == f"+OK {len(originals)} {sum(map(len, originals))}"
    assert curl_command(pop3, "LIST 99").startswith("-ERR")
    assert curl_command(pop3, "TOP 1 0").endswith("\r\n\r\n")
    assert curl_command(pop3, "DELE 2").startswith("+OK")
    assert sorted(reference.uids(USER)) == [1, *range(3, len(expected) + 1)]


@pytest.mark.clients
def test_client_failure_carries_output(reference: Dovecot, tmp_path: Path) -> None:
    wrong = Pop3Target(reference.host, reference.pop3_port, USER, "n0t-it")
    with pytest.raises(ClientFailed, match="mpop") as failure:
        run_mpop(wrong, tmp_path, keep=True)
    assert "authentication failed" in str(failure.value).lower()
    assert "n0t-it" not in str(failure.value)


@pytest.mark.parametrize(
    ("client", "data"),
    [
        ("mpop", b"Subject: no Received field\n\nbody\n"),
        ("getmail", b"Received: x\nSubject: y\n\nbody\n"),
        ("fetchmail", b"Received: from x\r\n\tby y\r\nSubject: z\r\n\r\ncrlf\r\n"),
    ],
)
def test_strip_client_additions_refuses_unexpected_input(client: str, data: bytes) -> None:
    with pytest.raises(ValueError, match=r"expected"):
        strip_client_additions(client, data)


def test_strip_client_additions_removes_folded_fields() -> None:
    data = b"Received: from x\n\tby y\n  for z\nSubject: s\n\nbody\n"
    assert strip_client_additions("mpop", data) == b"Subject: s\r\n\r\nbody\r\n"
    assert strip_client_additions("curl", b"a\r\n") == b"a\r\n"


def test_missing_programs_name_bootstrap_and_install_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[object] = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: ran.append(args))
    monkeypatch.setattr(dovecot, "REQUIRED_PROGRAMS", ("/nonexistent/dovecot", "no-such-client"))
    with pytest.raises(NotInstalled, match=r"/nonexistent/dovecot, no-such-client .*scripts/boot"):
        dovecot.ensure_installed()
    monkeypatch.setattr(installed, "cache_dir", lambda: tmp_path)
    with pytest.raises(NotInstalled, match=r"courier-imap .*run scripts/bootstrap"):
        installed.unpacked("courier-imap")
    (tmp_path / "cyrus-imapd-1_2.3" / "usr").mkdir(parents=True)
    assert installed.unpacked("cyrus-imapd", "1:2.3") == tmp_path / "cyrus-imapd-1_2.3"
    with pytest.raises(NotInstalled, match=r"cyrus-imapd 1:2.4 "):
        installed.unpacked("cyrus-imapd", "1:2.4")
    assert ran == []


def test_launchers_install_nothing() -> None:
    """Only scripts/bootstrap installs system packages; the launchers only start servers."""
    devkit_dir = Path(dovecot.__file__).parent
    for source in devkit_dir.glob("*.py"):
        assert "apt-get" not in source.read_text(), source.name
    bootstrap = (devkit_dir.parent / "scripts" / "bootstrap").read_text()
    for package in ("dovecot-imapd", "cyrus-imapd", "courier-imap", "mailutils-imap4d",
                    "postgresql", "haproxy", "chromium", "prometheus", "fetchmail", "mpop",
                    "getmail6", "curl", "openssl"):  # fmt: skip
        assert package in bootstrap
    assert "scripts/bootstrap" in (devkit_dir.parent / "scripts" / "test").read_text()


def test_cli_starts_and_stops_an_instance(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cli = [sys.executable, "-m", "devkit.dovecot"]
    directory = tmp_path / "cli"
    start = [*cli, "start", str(directory), "--user", "carol:pw", "--seed", "carol:2:500"]
    out = subprocess.run(start, cwd=root, capture_output=True, text=True, check=True, timeout=60)
    info = json.loads(out.stdout)
    try:
        assert (directory / "dovecot.pid").read_text().strip() == str(info["pid"])
        ca_file = Path(info["ca_file"])
        carol = Pop3Target(info["host"], info["pop3s_port"], "carol", "pw", "implicit", ca_file)
        assert len(poplib_fetch_all(carol, delete=False)) == 2
    finally:
        subprocess.run([*cli, "stop", str(directory)], cwd=root, check=True, timeout=60)
    assert not pid_running(info["pid"])


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes() and pid_running(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return found


@pytest.mark.parametrize(
    ("launch", "user"),
    [
        pytest.param(start_courier, "dan", marks=pytest.mark.courier, id="courier"),
        pytest.param(start_imap4d, "dan@example.org", marks=pytest.mark.mailutils, id="imap4d"),
    ],
)
def test_peer_stops_by_pid_with_every_process_it_started(
    launch: Callable[[dict[str, str]], ImapPeer], user: str
) -> None:
    peer = launch({user: "pw 1"})
    try:
        peer.seed(user, [b"Subject: s\n\nbody\n"])
        open_session = peer.imap(user, tls=True)  # a child serving a connection
        assert [m.subject for m in peer.stored(user)] == ["s"]
        assert _processes_mentioning(str(peer.directory))
    finally:
        peer.stop()
    open_session.shutdown()
    assert not pid_running(peer.pid)
    assert not peer.directory.exists()
    assert _processes_mentioning(str(peer.directory)) == []
