"""The status page in a real headless Chromium while sessions are open, and its escaping."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from devkit.dovecot import Dovecot
from popbridge.admin.health import ProbeResult
from popbridge.admin.page import PageData, render
from popbridge.admin.status import AccountInfo, CertificateInfo
from popbridge.config import ListenerConfig
from popbridge.frontend.tls import TlsSettings, make_self_signed
from popbridge.telemetry import metrics
from popbridge.telemetry.board import SessionEntry
from tests.admin.conftest import StartAdmin, pop_session, wait_ready


class Tables(HTMLParser):
    """The text of every cell, per table id and row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def chromium(*args: str, profile: Path) -> bytes:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium (Debian package chromium) is missing: run scripts/bootstrap")
    process = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    return output


@pytest.mark.dovecot
async def test_chromium_renders_the_open_sessions(
    admin_bridge: StartAdmin, mailbox: Dovecot, tmp_path: Path
) -> None:
    mailbox.seed_generated("alice", 2, 300)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, ["127.0.0.1"], days=30)
    pop3s = ListenerConfig(host="127.0.0.1", port=0, mode="implicit", name="pop3s",
                           tls=TlsSettings(cert, key))  # fmt: skip
    running = await admin_bridge(token=None, tls=pop3s)  # a browser sends no bearer token
    await wait_ready(running)
    _, alice, replies = await pop_session(running.pop_port, b"USER alice", b"PASS secret")
    assert replies[-1].startswith(b"+OK")
    _, anonymous, _ = await pop_session(running.pop_port, b"CAPA")
    context = ssl.create_default_context(cafile=cert)
    reader, bob = await asyncio.open_connection(
        "127.0.0.1", running.pop3.addresses[1][1], ssl=context
    )
    await reader.readline()
    bob.write(b"USER bob\r\nPASS hunter2\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    assert (await reader.readline()).startswith(b"+OK")
    ids = {entry.id: entry for entry in running.pop3.board.entries()}
    assert len(ids) == 3

    dom = await chromium("--dump-dom", running.url + "/", profile=tmp_path / "profile")
    screenshot = tmp_path / "status-page.png"
    await chromium(
        f"--screenshot={screenshot}", "--window-size=1280,900", running.url + "/",
        profile=tmp_path / "profile",
    )  # fmt: skip
    print(f"status page screenshot: {screenshot}")

    parser = Tables()
    parser.feed(dom.decode())
    header, *rows = parser.tables["sessions"]
    assert header[:6] == ["id", "user", "client address", "listener", "TLS", "state"]
    shown = {row[0]: row for row in rows}
    assert set(shown) == set(ids)
    by_user = {row[1]: row for row in rows}
    assert by_user["alice"][5] == "transaction" and by_user["-"][5] == "authorization"
    assert all(row[2].startswith("127.0.0.1:") for row in rows)
    assert [by_user[user][3:5] for user in ("alice", "-", "bob")] == [
        ["pop3", "none"], ["pop3", "none"], ["pop3s", "TLSv1.3"],
    ]  # fmt: skip
    assert parser.tables["certificates"][1][:2] == ["pop3s", "CN=127.0.0.1"]
    assert parser.tables["certificates"][1][3].startswith(("29.", "30.0"))
    health = {row[0]: row[1] for row in parser.tables["health"][1:]}
    assert health == {"upstream": "ok", "store": "ok"}
    assert screenshot.stat().st_size > 1000 and screenshot.read_bytes()[:4] == b"\x89PNG"
    tls_sessions = ("popbridge_sessions_total", {"listener": "pop3s", "tls": "TLSv1.3"})
    before = metrics.REGISTRY.get_sample_value(*tls_sessions) or 0
    for writer in (alice, anonymous, bob):
        writer.close()
    for _ in range(100):
        if not running.pop3.board.entries():
            break
        await asyncio.sleep(0.05)
    assert metrics.REGISTRY.get_sample_value(*tls_sessions) == before + 1  # counted as TLS


def test_page_escapes_what_comes_from_outside() -> None:
    hostile = "<script>alert(1)</script>"
    connection = SimpleNamespace(
        protocol=SimpleNamespace(engine=SimpleNamespace(state="x"), transport=None),
        out=SimpleNamespace(sent=3),
        session=SimpleNamespace(user=f'"><img src=x onerror=alert(1)>{hostile}'),
    )
    entry = SessionEntry("s-1", hostile, "pop3", connection, started=0.0)
    page = render(
        PageData(
            sessions=[entry],
            probes={"upstream": ProbeResult(last_error=hostile)},
            not_ready={"upstream": hostile},
            certificates=[CertificateInfo("pop3s", f"CN={hostile}", None, "cannot load: X")],
            accounts=[AccountInfo(hostile, hostile, "oauth2", hostile)],
            now=100.0,
        )
    )
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;") >= 6
