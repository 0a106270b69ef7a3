"""Log lines in both formats carry the session and the client, and never a secret or a body:
a real `popbridge serve` at DEBUG, sessions with known passwords, tokens and message bodies."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from devkit.dovecot import Dovecot
from tests.admin.process import Client, start_daemon

pytestmark = pytest.mark.dovecot

PASSWORD = "hunter2"  # bob's, in the Dovecot fixture
WRONG = "Wr0ng-P4ss-b1e7c9"
TOKEN = "ya29.T0KEN-c3d4e5f6a7"
BODY = "BODY-MARKER-7c1d9e0f"
ADMIN_TOKEN = "adm1n-T0ken-L0gs-9a8b7c6d"
GUESSED = "guessed-T0ken-aa11bb22"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_sessions(port: int) -> None:
    client = Client(port)
    assert client.send(b"USER bob").startswith(b"+OK")
    assert client.send(f"PASS {PASSWORD}".encode()).startswith(b"+OK")
    assert BODY.encode() + b"\r\n" in client.multiline(b"RETR 1")
    assert client.multiline(b"TOP 1 3")[0].startswith(b"+OK")
    assert client.send(b"QUIT").startswith(b"+OK")
    client.close()
    client = Client(port)
    assert client.send(b"USER bob").startswith(b"+OK")
    assert client.send(f"PASS {WRONG}".encode()).startswith(b"-ERR")
    plain = b64(f"\0bob\0{PASSWORD}")
    assert client.send(f"AUTH PLAIN {plain}".encode()).startswith(b"+OK")
    client.send(b"QUIT")
    client.close()
    client = Client(port)
    xoauth = b64(f"user=bob\x01auth=Bearer {TOKEN}\x01\x01")
    reply = client.send(f"AUTH XOAUTH2 {xoauth}".encode())
    if reply.startswith(b"+ "):
        client.send(b"")
    client.send(b"QUIT")
    client.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_or_body_in_either_log_format(
    mailbox: Dovecot, tmp_path: Path, log_format: str
) -> None:
    mailbox.reset_mailbox("bob")
    mailbox.seed("bob", [f"Subject: private\r\n\r\n{BODY}\r\nmore {BODY}\r\n".encode()])
    daemon = start_daemon(mailbox, tmp_path, log_format=log_format, token=ADMIN_TOKEN)
    try:
        run_sessions(daemon.pop_port)
        assert daemon.http("/metrics", token=GUESSED)[0] == 401
        assert daemon.http("/metrics")[0] == 200
    finally:
        daemon.terminate()
        status, log = daemon.finish()
    assert status == 0
    assert "aiohttp" not in log  # no access log; the admin listener took its limits
    for secret in (PASSWORD, WRONG, TOKEN, BODY, ADMIN_TOKEN, GUESSED):
        assert secret not in log, secret
    for encoded in (b64(f"\0bob\0{PASSWORD}"), b64(f"user=bob\x01auth=Bearer {TOKEN}\x01\x01")):
        assert encoded not in log
    lines = log.splitlines()
    logged_in = [line for line in lines if "'bob' logged in" in line]
    assert len(logged_in) == 2
    if log_format == "text":
        assert all(" INFO popbridge.frontend.client [" in line for line in logged_in)
        return
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "event"} <= set(r) for r in records)
    sessions = [r for r in records if r["event"].startswith("'bob' logged in")]
    assert len(sessions) == 2
    for record in sessions:
        assert record["client"].startswith("127.0.0.1:") and record["session"]
        assert record["level"] == "INFO" and record["logger"] == "popbridge.frontend.client"
    assert records[-1]["event"] == "stopped: 0 sessions drained, 0 cut without UPDATE"
