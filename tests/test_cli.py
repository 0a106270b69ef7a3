"""The `popbridge` command: `check` and `serve` against a real Dovecot, in-process and as
the installed console script, including SIGTERM without applying pending deletions."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devkit.dovecot import Dovecot, free_port
from popbridge.cli import commands as cli
from popbridge.cli.commands import main

pytestmark = pytest.mark.dovecot


def write_config(
    path: Path, dovecot: Dovecot, *, imap_port: int | None = None, pop_port: int = 0,
    server: str = 'log_level = "INFO"\nshutdown_grace = 1', extra: str = "",
) -> Path:  # fmt: skip
    path.write_text(
        f"""
[server]
auth_failure_delay = 0
{server}

[[listeners]]
host = "127.0.0.1"
port = {pop_port}
plaintext_auth = true

[backend]
type = "imap"
host = "127.0.0.1"
port = {imap_port or dovecot.imaps_port}
tls = "implicit"
ca_file = "{dovecot.pki.ca_file}"
{extra}
"""
    )
    return path


def test_check_reports_a_working_upstream(
    dovecot: Dovecot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(write_config(tmp_path / "c.toml", dovecot))]) == 0
    out = capsys.readouterr().out
    assert "config" in out and "plaintext passwords allowed" in out and "backend imap:" in out


def test_check_fails_on_unreachable_upstream(
    dovecot: Dovecot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.toml", dovecot, imap_port=free_port())
    assert main(["check", "--config", str(config)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_config_errors_exit_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[listeners]]\nport = "110"\n[backend]\ntype = "imap"\nhost = "x"\n')
    assert main(["check", "--config", str(config)]) == 2
    assert f"{config}: listeners[0].port: must be an integer" in capsys.readouterr().err
    config.write_text('[[listeners]]\n[backend]\ntype = "nosuch"\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "unknown backend 'nosuch'" in capsys.readouterr().err


def pop_exchange(port: int, lines: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        replies = [stream.readline()]
        for line in lines:
            stream.write(line + b"\r\n")
            stream.flush()
            replies.append(stream.readline())
        return replies


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("popbridge did not start listening")


def test_serve_then_sigterm_applies_no_pending_deletion(mailbox: Dovecot, tmp_path: Path) -> None:
    mailbox.seed_generated("alice", 3, 500)
    port = free_port()
    config = write_config(tmp_path / "c.toml", mailbox, pop_port=port)
    script = Path(sys.executable).with_name("popbridge")
    process = subprocess.Popen(
        [str(script), "serve", "--config", str(config)], stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, process)
        replies = pop_exchange(port, [b"USER alice", b"PASS secret", b"STAT", b"DELE 1", b"QUIT"])
        assert replies[3].startswith(b"+OK 3 ") and replies[4].startswith(b"+OK")
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.recv(100)
            held.sendall(b"USER alice\r\nPASS secret\r\nDELE 2\r\n")
            time.sleep(0.5)
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(timeout=15) == cli.EXIT_CUT  # it never sent QUIT
            assert held.recv(4096).count(b"\r\n") == 3  # its replies, then the close
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stderr.read().decode() if process.stderr else ""
    assert sorted(mailbox.uids("alice")) == [2, 3]  # the QUIT-less DELE 2 was not applied
    assert "secret" not in log and "server stopping, closing without UPDATE" in log
    assert log.rstrip().endswith("stopped: 0 sessions drained, 1 cut without UPDATE")


def test_logging_goes_through_a_queue_and_is_written_out_by_the_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in the daemon: nothing configured yet
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    with cli.logging_to_stderr("INFO"):
        (handler,) = root.handlers
        assert isinstance(handler, logging.handlers.QueueHandler)  # the loop never writes
        logging.getLogger("popbridge.test").info("queued line %d", 7)
    assert root.handlers == []
    assert "INFO popbridge.test queued line 7" in capsys.readouterr().err


def test_a_burst_of_records_is_written_in_one_batch() -> None:
    class Stream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Stream()
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    writer = cli._LogWriter(records, stream)
    writer.start()
    handler = logging.handlers.QueueHandler(records)
    logger = logging.getLogger("popbridge.burst")
    for number in range(50):  # well within the pause the first record starts
        handler.handle(
            logger.makeRecord(logger.name, logging.INFO, "x", 1, "line %d", (number,), None)
        )
    writer.stop()
    lines = stream.getvalue().splitlines()
    assert [line.split(" INFO popbridge.burst ")[1] for line in lines] == [
        f"line {number}" for number in range(50)
    ]
    assert stream.writes == 1
    assert not writer.is_alive()
