"""The admin listener against a bridge in front of a real Dovecot: probes, the bearer token,
metrics that promtool accepts, and requests an attacker would send."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from devkit.dovecot import Dovecot, free_port
from tests.admin.conftest import TOKEN, StartAdmin, pop_session, wait_ready

pytestmark = pytest.mark.dovecot


async def test_healthz_is_open_and_everything_else_needs_the_token(
    admin_bridge: StartAdmin,
) -> None:
    running = await admin_bridge()
    assert await running.get("/healthz", headers={}) == (200, '{"status": "ok"}')
    for path in ("/readyz", "/metrics", "/", "/nosuch"):
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": "Bearer"},
        ):
            status, body = await running.get(path, headers=headers)
            assert status == 401, (path, headers)
            assert TOKEN not in body and "wrong-token" not in body
    await wait_ready(running)
    assert (await running.get("/readyz"))[0] == 200
    assert (await running.get("/readyz", headers={"Authorization": f"bearer {TOKEN}"}))[0] == 200


async def test_readyz_answers_from_cached_probes_never_one_per_request(
    admin_bridge: StartAdmin,
) -> None:
    running = await admin_bridge(probe_interval=3600)
    await wait_ready(running)
    answers = await asyncio.gather(*(running.get("/readyz") for _ in range(200)))
    assert {status for status, _ in answers} == {200}
    assert running.backend.checks == 1  # the start-up probe, and no other


async def test_readyz_is_503_with_a_json_reason_when_the_upstream_does_not_answer(
    admin_bridge: StartAdmin,
) -> None:
    running = await admin_bridge(imap_port=free_port(), probe_timeout=2)
    for _ in range(100):
        if running.admin.health.results["upstream"].probes:
            break
        await asyncio.sleep(0.05)
    status, body = await running.get("/readyz")
    assert status == 503
    reasons = json.loads(body)["reasons"]
    assert set(reasons) == {"upstream"} and "has not answered a probe" in reasons["upstream"]


async def test_readyz_turns_503_as_soon_as_draining_starts(
    admin_bridge: StartAdmin, mailbox: Dovecot
) -> None:
    running = await admin_bridge()
    await wait_ready(running)
    _, writer, replies = await pop_session(running.pop_port, b"USER alice", b"PASS secret")
    assert replies[-1].startswith(b"+OK")
    drain = asyncio.create_task(running.pop3.drain())
    await asyncio.sleep(0)
    status, body = await running.get("/readyz")
    assert status == 503 and "draining" in json.loads(body)["reasons"]["listeners"]
    writer.write(b"QUIT\r\n")
    await writer.drain()
    assert await drain == (1, 0)  # the session QUIT within the grace: drained, none cut
    writer.close()


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool (Debian package prometheus) is missing: run scripts/bootstrap")
    return subprocess.run([tool, *args], input=stdin, capture_output=True, timeout=60)


async def test_metrics_count_a_session_name_nobody_and_pass_promtool(
    admin_bridge: StartAdmin, mailbox: Dovecot
) -> None:
    mailbox.seed_generated("alice", 3, 400)
    running = await admin_bridge()
    await wait_ready(running)
    _, writer, _ = await pop_session(running.pop_port, b"USER alice", b"PASS wrong")
    writer.close()
    reader, writer, replies = await pop_session(running.pop_port, b"USER alice", b"PASS secret")
    assert replies[-1].startswith(b"+OK maildrop has 3 messages")
    _, second, refused = await pop_session(running.pop_port, b"USER alice", b"PASS secret")
    assert refused[-1].startswith(b"-ERR [IN-USE]")
    second.close()
    for command in (b"RETR 1", b"RETR 2"):  # in order: the second was prepared ahead
        writer.write(command + b"\r\n")
        assert (await reader.readuntil(b"\r\n.\r\n")).startswith(b"+OK")
    writer.write(b"DELE 1\r\nQUIT\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)  # the connection task ends after the last reply
    status, text = await running.get("/metrics")
    assert status == 200
    for line in (
        'popbridge_logins_total{mechanism="password",result="ok"}',
        'popbridge_logins_total{mechanism="password",result="failed"}',
        'popbridge_commands_total{command="DELE",result="ok"}',
        'popbridge_commands_total{command="RETR",result="ok"}',
        'popbridge_logins_total{mechanism="password",result="in_use"}',
        "popbridge_in_use_refusals_total ",
        'popbridge_lookahead_total{result="hit"}',
        "popbridge_sent_bytes_total ",
        'popbridge_updates_total{outcome="applied"}',
        'popbridge_upstream_seconds_bucket{backend="imap",le="+Inf",operation="open"}',
        'popbridge_upstream_errors_total{backend="imap",kind="AuthFailed",operation="open"}',
        'popbridge_sessions_total{listener="pop3",tls="none"}',
        "popbridge_upstream_up 1.0",
        "popbridge_build_info{",
    ):
        assert line in text, line
    assert "alice" not in text and "127.0.0.1" not in text and "secret" not in text
    checked = promtool("check", "metrics", stdin=text.encode())
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "path",
    [
        "/nosuch", "/healthz/", "/metrics/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd", "//healthz", "/readyz%00", "/" + "a" * 3000, "/%ff%fe",
        "/static/../../config.toml",
    ],
)  # fmt: skip
async def test_hostile_paths_are_not_found(admin_bridge: StartAdmin, path: str) -> None:
    running = await admin_bridge()
    host, port = running.admin.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ")[1] in (b"404", b"400"), answer[:100]
    assert TOKEN.encode() not in answer and b"root:" not in answer


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
async def test_other_methods_are_not_allowed(admin_bridge: StartAdmin, method: str) -> None:
    running = await admin_bridge()
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/", "/readyz"):
            async with http.request(method, running.url + path, headers=running.headers()) as r:
                assert r.status == 405, (method, path)
                assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}
                assert TOKEN not in await r.text()


async def test_request_bodies_and_oversized_headers_are_refused(admin_bridge: StartAdmin) -> None:
    running = await admin_bridge(token=None)
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/metrics", data=b"x" * 100_000) as response:
            assert response.status == 413
        async with http.get(running.url + "/", headers={"X-Big": "y" * 5_000}) as response:
            assert response.status in (400, 431)
        many = {f"X-H{i}": "v" for i in range(100)}
        async with http.get(running.url + "/", headers=many) as response:
            assert response.status in (400, 431)
        hostile = {"Host": "evil.example\r\nX-Injected: 1", "Authorization": "Bearer \x00\xff"}
        with pytest.raises(ValueError):  # the client refuses to send CR LF in a header
            await http.get(running.url + "/", headers=hostile)
    host, port = running.admin.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x00\x01\r\nAuthorization: Bearer \xff\xfe\r\n"
                 b"Connection: close\r\n\r\n")  # fmt: skip
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ")[1] in (b"200", b"400"), answer[:100]
    assert b"Content-Security-Policy" in answer or answer.split(b" ")[1] == b"400"


async def test_responses_carry_headers_that_keep_browsers_safe(admin_bridge: StartAdmin) -> None:
    running = await admin_bridge()
    async with (
        aiohttp.ClientSession() as http,
        http.get(running.url + "/", headers=running.headers()) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert TOKEN not in await response.text()


def test_rules_file_passes_promtool() -> None:
    rules = Path(__file__).parents[2] / "deploy" / "prometheus-rules.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
