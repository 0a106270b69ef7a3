"""Behind a real HAProxy: two `popbridge serve` processes sharing one PostgreSQL store.

HAProxy (`mode tcp`, round-robin, `send-proxy-v2`) stands in front of two bridges whose
listeners take the PROXY protocol from 127.0.0.1 only; both talk to the real Dovecot.
Clients connect from 127.0.0.2, 127.0.0.3, ..., so the address HAProxy names differs from
the address the bridges see (127.0.0.1); the bridges' logs say which instance served whom.
`[IN-USE]` and a login lockout counted on one instance hold on the other. Every process is
stopped by PID.
"""

from __future__ import annotations

import asyncio
import poplib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.dovecot import Dovecot
from devkit.haproxy import HAProxy, start_haproxy
from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)
from tests.e2e.test_durable_state import USER, Bridge

pytestmark = pytest.mark.dovecot

LOG_DEADLINE = 10.0  # a bound against hanging, not a timing assertion
PROXIED = 'proxy_protocol = true\nproxy_trusted = ["127.0.0.1/32"]'


class Pop3From(poplib.POP3):
    """poplib's client, connecting from a chosen loopback source address."""

    def __init__(self, source: str, address: tuple[str, int]) -> None:
        self._source = source
        super().__init__(*address, timeout=20)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


@pytest.fixture
def cluster(
    dovecot: Dovecot,
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[HAProxy, list[Bridge]]]:
    dovecot.reset_mailbox(USER)
    dovecot.seed_generated(USER, 2, 400)
    database = asyncio.run(create_database(postgres))
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(postgres.dsn(database) + "\n")
    store = f'type = "postgres"\ndsn_file = "{dsn_file}"'
    server = "max_failures_per_user = 2\nmax_auth_failures = 3"
    bridges: list[Bridge] = []
    proxy: HAProxy | None = None
    try:
        for name in ("one", "two"):
            bridge = Bridge(tmp_path, dovecot, store, name, server=server, listener=PROXIED)
            bridges.append(bridge.start())
        proxy = start_haproxy(tmp_path / "haproxy", [b.port for b in bridges])
        yield proxy, bridges
    finally:
        if proxy is not None:
            proxy.stop()
        for bridge in bridges:
            bridge.stop()
        asyncio.run(drop_database(postgres, database))


def sessions_from(bridge: Bridge, source: str) -> list[str]:
    """The log lines of sessions whose client address is `source`."""
    pattern = re.compile(rf"\[\w+-\d+ {re.escape(source)}:\d+\]")
    return [line for line in bridge.log.read_text().splitlines() if pattern.search(line)]


def which_bridge(bridges: list[Bridge], source: str) -> Bridge:
    """The bridge that served `source`, once its log (written by a thread) shows it."""
    deadline = time.monotonic() + LOG_DEADLINE
    while not (found := [b for b in bridges if sessions_from(b, source)]):
        assert time.monotonic() < deadline, f"no bridge logged a session from {source}"
        time.sleep(0.05)
    (bridge,) = found
    return bridge


def on_the_other_bridge(
    proxy: HAProxy, bridges: list[Bridge], avoid: Bridge, first_source: int
) -> tuple[Pop3From, str]:
    """A connection (greeted) that reached the bridge that is not `avoid`, from a fresh
    127.0.0.N. Round-robin alternates, but HAProxy's own readiness probe may have taken a
    turn, so a connection that lands on `avoid` is closed and another one made."""
    for number in range(first_source, first_source + 4):
        source = f"127.0.0.{number}"
        client = Pop3From(source, (proxy.host, proxy.port))
        if which_bridge(bridges, source) is not avoid:
            return client, source
        client.quit()
    raise AssertionError("four connections in a row reached the same bridge")


def test_the_client_address_reaches_the_bridge_and_in_use_holds_across_instances(
    cluster: tuple[HAProxy, list[Bridge]], dovecot: Dovecot
) -> None:
    proxy, bridges = cluster
    password = dovecot.users[USER]
    holder = Pop3From("127.0.0.2", (proxy.host, proxy.port))
    holder.user(USER)
    holder.pass_(password)
    first = which_bridge(bridges, "127.0.0.2")
    other, _ = on_the_other_bridge(proxy, bridges, first, 10)
    other.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        other.pass_(password)  # the lock is held on the other instance
    other.quit()
    holder.quit()
    lines = sessions_from(first, "127.0.0.2")
    assert any("via proxy 127.0.0.1:" in line for line in lines)
    assert any(f"{USER!r} logged in" in line for line in lines)
    assert not any("127.0.0.1:" in line.split("]")[0] for line in lines)
    for bridge in bridges:
        assert password not in bridge.log.read_text()


def test_a_lockout_counted_on_one_instance_holds_on_the_other(
    cluster: tuple[HAProxy, list[Bridge]], dovecot: Dovecot
) -> None:
    proxy, bridges = cluster
    guesser = Pop3From("127.0.0.4", (proxy.host, proxy.port))
    for _ in range(2):  # max_failures_per_user = 2, both counted where this connection is
        guesser.user(USER)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            guesser.pass_("wrong guess")
    guesser.quit()
    owner, _ = on_the_other_bridge(proxy, bridges, which_bridge(bridges, "127.0.0.4"), 20)
    owner.user(USER)
    try:
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):  # the right password
            owner.pass_(dovecot.users[USER])
    finally:
        owner.close()
