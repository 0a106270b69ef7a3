"""Graceful drain of a real `popbridge serve` on SIGTERM: readiness fails at once, new
connections are refused, open sessions may still QUIT (and have their deletions applied)
within `shutdown_grace`, the rest are cut without UPDATE; the exit status and the last log
line say which."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from devkit.dovecot import Dovecot
from popbridge.cli.commands import EXIT_CUT
from tests.admin.process import Client, Daemon, start_daemon

pytestmark = pytest.mark.dovecot


def logged_in_with_dele(daemon: Daemon, number: int) -> Client:
    client = Client(daemon.pop_port)
    assert client.send(b"USER alice").startswith(b"+OK")
    assert client.send(b"PASS secret").startswith(b"+OK")
    assert client.send(f"DELE {number}".encode()).startswith(b"+OK")
    return client


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def terminated(daemon: Daemon) -> bytes:
    """Send SIGTERM; the /readyz answer once the daemon handled it (on its next loop turn)."""
    daemon.terminate()
    for _ in range(500):
        status, body = daemon.http("/readyz")
        if status == 503:
            return body
        time.sleep(0.02)
    raise AssertionError("still ready after SIGTERM")


def test_a_session_that_quits_within_the_grace_is_drained(mailbox: Dovecot, tmp_path: Path) -> None:
    mailbox.seed_generated("alice", 3, 300)
    daemon = start_daemon(mailbox, tmp_path, grace=60)
    try:
        client = logged_in_with_dele(daemon, 1)
        assert b"draining" in terminated(daemon)
        assert refuses_connections(daemon.pop_port)
        assert daemon.process.poll() is None  # still waiting for the open session
        assert client.send(b"STAT").startswith(b"+OK 2 ")
        assert client.send(b"QUIT").startswith(b"+OK")
        client.close()
    finally:
        status, log = daemon.finish()
    assert status == 0
    assert log.splitlines()[-1].endswith("stopped: 1 sessions drained, 0 cut without UPDATE")
    assert sorted(mailbox.uids("alice")) == [2, 3]  # its QUIT applied its DELE


def test_a_second_signal_cuts_the_open_sessions_at_once(mailbox: Dovecot, tmp_path: Path) -> None:
    mailbox.seed_generated("alice", 2, 300)
    daemon = start_daemon(mailbox, tmp_path, grace=3600)
    try:
        held = logged_in_with_dele(daemon, 1)
        terminated(daemon)
        assert held.send(b"NOOP").startswith(b"+OK")  # still served while draining
        daemon.terminate()
        status, log = daemon.finish(timeout=30)  # far less than the hour of grace
        assert held.stream.readline() == b""
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert status == EXIT_CUT
    assert log.splitlines()[-1].endswith("stopped: 0 sessions drained, 1 cut without UPDATE")
    assert sorted(mailbox.uids("alice")) == [1, 2]


def test_sessions_still_open_after_the_grace_are_cut_without_update(
    mailbox: Dovecot, tmp_path: Path
) -> None:
    mailbox.seed_generated("alice", 3, 300)
    daemon = start_daemon(mailbox, tmp_path, grace=1, log_format="json")
    try:
        held = logged_in_with_dele(daemon, 2)
        idle = Client(daemon.pop_port)  # not even logged in
        daemon.terminate()
        status, log = daemon.finish()
        assert held.stream.readline() == b"" and idle.stream.readline() == b""
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert status == EXIT_CUT
    assert '"event": "stopped: 0 sessions drained, 2 cut without UPDATE"' in log.splitlines()[-1]
    assert sorted(mailbox.uids("alice")) == [1, 2, 3]  # the QUIT-less DELE 2 was not applied
