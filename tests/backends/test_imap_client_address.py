"""The device's address sent upstream with IMAP ID (RFC 2971), seen in a real Dovecot's log.

A Dovecot of its own, with `login_trusted_networks` covering the bridge (127.0.0.0/8), so
it believes `x-originating-ip`. Devices are told apart by the PROXY header a test client
sends (192.0.2.x), so the address Dovecot logs can only have come through the bridge.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.imap.ident import id_argument
from devkit.dovecot import Dovecot, ensure_installed, start_dovecot
from devkit.haproxy import v1_header
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.contract import Credentials, load_backend
from popbridge.frontend.proxy import networks
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy

pytestmark = pytest.mark.dovecot

USERS = {"dana": "d4na pw"}
LOG_DEADLINE = 10.0  # a bound against hanging, not a timing assertion


@pytest.fixture(scope="module")
def trusting_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    ensure_installed()
    directory = tmp_path_factory.mktemp("dovecot-trusting")
    server = start_dovecot(
        directory, dict(USERS), extra_config="login_trusted_networks = 127.0.0.0/8\n"
    )
    yield server
    server.stop()


@pytest.fixture
async def start(trusting_dovecot: Dovecot) -> AsyncIterator[Any]:
    servers = Servers()

    async def start(**backend: Any) -> Pop3Server:
        settings = {
            "type": "imap", "host": trusting_dovecot.host, "tls": "none", "timeout": 10,
            "port": trusting_dovecot.imap_port, **backend,
        }  # fmt: skip
        listener = ListenerConfig(
            host="127.0.0.1", port=0, plaintext_auth=True, proxy_protocol=True,
            proxy_trusted=networks(["127.0.0.1/32"]),
        )  # fmt: skip
        config = Config(
            source="test", backend_type="imap", backend_settings=settings,
            listeners=(listener,), server=ServerConfig(throttle=ThrottlePolicy(base_delay=0)),
        )  # fmt: skip
        return await servers.start(config, load_backend("imap", settings, source="test"))

    yield start
    await servers.stop()


async def pop3_login(server: Pop3Server, device: str, password: str) -> bytes:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(v1_header((device, 40000), ("127.0.0.1", 110)))
    await reader.readline()
    writer.write(f"USER dana\r\nPASS {password}\r\nQUIT\r\n".encode())
    await reader.readline()
    answer = await reader.readline()
    await reader.readline()
    writer.close()
    return answer


def login_lines(dovecot: Dovecot, device: str) -> list[str]:
    """Dovecot's imap-login lines for `device`, waiting until one is written."""
    deadline = time.monotonic() + LOG_DEADLINE
    log = Path(dovecot.directory) / "dovecot.log"
    while True:
        lines = [
            line for line in log.read_text(errors="replace").splitlines()
            if "imap-login:" in line and re.search(rf"rip={re.escape(device)}\b", line)
        ]  # fmt: skip
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


async def test_dovecot_logs_the_device_address(start: Any, trusting_dovecot: Dovecot) -> None:
    server = await start(send_client_address=True)
    assert (await pop3_login(server, "192.0.2.41", USERS["dana"])).startswith(b"+OK")
    assert (await pop3_login(server, "192.0.2.42", "wrong")).startswith(b"-ERR [AUTH]")
    ok = login_lines(trusting_dovecot, "192.0.2.41")
    assert any("Login: user=<dana>" in line for line in ok), ok
    failed = login_lines(trusting_dovecot, "192.0.2.42")
    assert any("auth failed" in line or "Aborted login" in line for line in failed), failed


async def test_without_the_key_dovecot_sees_only_the_bridge(
    start: Any, trusting_dovecot: Dovecot
) -> None:
    server = await start()  # send_client_address defaults to false
    assert (await pop3_login(server, "192.0.2.43", USERS["dana"])).startswith(b"+OK")
    assert login_lines(trusting_dovecot, "127.0.0.1")
    assert not login_lines(trusting_dovecot, "192.0.2.43")


def test_only_ip_addresses_are_sent() -> None:
    assert id_argument("192.0.2.1") == '("x-originating-ip" "192.0.2.1")'
    assert id_argument("2001:db8::1") == '("x-originating-ip" "2001:db8::1")'
    assert id_argument("") is None
    assert id_argument('1.2.3.4" "x') is None


def test_the_address_is_not_part_of_a_credentials_secret() -> None:
    credentials = Credentials("u", "s3cret", client_address="192.0.2.1")
    assert "s3cret" not in repr(credentials) and "192.0.2.1" in repr(credentials)
