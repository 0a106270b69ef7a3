"""Scenario (f), JMAP bulk: popbridge's JMAP backend against a raw JMAP download pass.

This module owns the (f) side of the benchmark: a real Cyrus (``devkit.cyrus``: IMAP and
JMAP on free loopback ports in a temp dir, seeded over IMAP, stopped by PID) with one user
holding the (a) mailbox, a fresh ``popbridge serve`` whose backend is ``type = "jmap"`` on
Cyrus' plain HTTP port, and the reference: one Python aiohttp session that reads the JMAP
Session resource, lists the inbox's Email ids (Email/query), gets their blobIds (Email/get)
and downloads every blob in turn on one keep-alive connection. Its sockets are the backend's
own ``QuickAckSocket``s, so neither side pays Cyrus' Nagle/delayed-ACK stall. The raw pass is
recorded in the ``direct`` column (straight from the backend, no proxy), so ``pb/direct`` is
popbridge / raw JMAP per run. Timed runs alternate raw, popbridge, raw, popbridge, ...
"""

from __future__ import annotations

import asyncio
import base64
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import aiohttp

from backends.jmap.sockets import quickack_socket
from bench.clients import LeanClient, Tally
from bench.peers import Popbridge, launch_popbridge
from bench.scenarios import PASSWORD, Outcome, Profile
from devkit.cyrus import Cyrus, start_cyrus
from devkit.dovecot import free_port

USER = "bulk"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10)
RAW, BRIDGE = "direct", "popbridge"  # the raw pass sits in the "direct" column

_CONFIG = string.Template("""\
# popbridge under benchmark, scenario (f) (written by bench/jmap.py)
[server]
auth_failure_delay = 0.1
log_level = "INFO"

[[listeners]]
host = "127.0.0.1"
port = $port
plaintext_auth = true

[backend]
type = "jmap"
url = "$url"
timeout = 60

[store]
type = "memory"
""")


def start_cyrus_peer(profile: Profile) -> tuple[Cyrus, int]:
    """Cyrus with USER's inbox seeded like (a); returns it and the seeded octets (CRLF)."""
    cyrus = start_cyrus({USER: PASSWORD})
    try:
        messages = cyrus.seed_generated(USER, *profile.bulk)
    except BaseException:
        cyrus.stop()
        raise
    return cyrus, sum(len(m) for m in messages)


def start_jmap_popbridge(directory: Path, cyrus: Cyrus) -> Popbridge:
    """``popbridge serve`` with its JMAP backend on Cyrus' plain HTTP origin."""
    port = free_port()
    config = _CONFIG.substitute(port=port, url=cyrus.http_url)
    return launch_popbridge(directory, port, config)


# ----------------------------------------------------------------- the raw JMAP pass


class RawJmap:
    """One aiohttp session against one JMAP server, authenticated with HTTP Basic."""

    def __init__(self, http: aiohttp.ClientSession, origin: str) -> None:
        self.http = http
        self.origin = origin
        self.api_url = self.download_url = self.account = ""
        self.max_get = 500

    async def open(self) -> None:
        """GET the Session resource (RFC 8620 section 2) and keep what the pass needs."""
        async with self.http.get(self.origin + "/.well-known/jmap") as response:
            response.raise_for_status()
            session = await response.json(content_type=None)
            base = str(response.url)
        self.api_url = urljoin(base, session["apiUrl"])
        self.download_url = urljoin(base, session["downloadUrl"])
        self.account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        core = session["capabilities"]["urn:ietf:params:jmap:core"]
        self.max_get = int(core.get("maxObjectsInGet", 500))

    async def call(self, method: str, arguments: dict[str, Any]) -> dict[str, Any]:
        body = {"using": USING, "methodCalls": [[method, arguments, "0"]]}
        async with self.http.post(self.api_url, json=body) as response:
            response.raise_for_status()
            reply = await response.json(content_type=None)
        name, result, _ = reply["methodResponses"][0]
        if name != method:
            raise RuntimeError(f"{method}: {name} {result}")
        return dict(result)

    async def inbox_ids(self) -> list[str]:
        """Every Email id in the inbox (Email/query, paged by position)."""
        found = await self.call("Mailbox/query", {"accountId": self.account,
                                                  "filter": {"role": "inbox"}})  # fmt: skip
        query = {"accountId": self.account, "filter": {"inMailbox": found["ids"][0]},
                 "sort": [{"property": "receivedAt"}], "calculateTotal": True}  # fmt: skip
        ids: list[str] = []
        while True:
            page = await self.call("Email/query", {**query, "position": len(ids)})
            ids += page["ids"]
            if not page["ids"] or len(ids) >= page["total"]:
                return ids

    async def blob_ids(self, ids: list[str]) -> list[str]:
        blobs: list[str] = []
        for start in range(0, len(ids), self.max_get):
            chunk = ids[start : start + self.max_get]
            got = await self.call("Email/get", {"accountId": self.account, "ids": chunk,
                                                "properties": ["blobId"]})  # fmt: skip
            by_id = {item["id"]: item["blobId"] for item in got["list"]}
            blobs += [by_id[email] for email in chunk]
        return blobs

    async def download(self, blob: str) -> int:
        """Octets of one blob, read whole in pieces (as a POP3 RETR needs it)."""
        url = (
            self.download_url.replace("{accountId}", quote(self.account, safe=""))
            .replace("{blobId}", quote(blob, safe=""))
            .replace("{name}", "message.eml")
            .replace("{type}", quote("message/rfc822", safe=""))
        )
        octets = 0
        async with self.http.get(url) as response:
            response.raise_for_status()
            async for piece in response.content.iter_chunked(1 << 20):
                octets += len(piece)
        return octets


async def raw_pass(origin: str, user: str, password: str) -> Tally:
    """Session, Email/query, Email/get, then every blob, sequentially on one connection."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    connector = aiohttp.TCPConnector(limit=1, socket_factory=quickack_socket)
    headers = {"Authorization": f"Basic {token}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=TIMEOUT) as http:
        client = RawJmap(http, origin)
        await client.open()
        blobs = await client.blob_ids(await client.inbox_ids())
        tally = Tally(expected_messages=len(blobs))
        for blob in blobs:
            tally.octets += await client.download(blob)
            tally.messages += 1
    return tally


# ----------------------------------------------------------------- one run of (f)


def raw_run(cyrus: Cyrus, seeded: tuple[int, int]) -> Outcome:
    """(f) reference: the raw JMAP pass, timed whole."""
    outcome = Outcome()
    started = time.perf_counter()
    tally = asyncio.run(raw_pass(cyrus.http_url, USER, PASSWORD))
    outcome.figures["f.wall"] = time.perf_counter() - started
    tally.expected_octets = seeded[1]  # JMAP has no STAT: the seeded CRLF octets instead
    outcome.add(tally, seeded[0])
    return outcome


def bridge_run(bridge: Popbridge, seeded: tuple[int, int]) -> Outcome:
    """(f) popbridge: USER, PASS, STAT, UIDL, RETR all, QUIT with the lean client, timed whole."""
    outcome, tally, cpu = Outcome(), Tally(), bridge.cpu_seconds()
    started = time.perf_counter()
    client = LeanClient(bridge.port)
    client.login(USER, PASSWORD)
    client.retrieve_all(tally)
    client.quit()
    outcome.figures["f.wall"] = time.perf_counter() - started
    outcome.figures["f.cpu"] = bridge.cpu_seconds() - cpu
    outcome.add(tally, seeded[0])
    if tally.expected_octets != seeded[1]:
        outcome.failed += 1
        outcome.problems.append(f"STAT said {tally.expected_octets} octets, {seeded[1]} seeded")
    return outcome


def runs(cyrus: Cyrus, bridge: Popbridge, seeded: tuple[int, int]) -> list[Callable[[], Outcome]]:
    """The two sides of one (f) run, in the order they alternate."""
    return [lambda: raw_run(cyrus, seeded), lambda: bridge_run(bridge, seeded)]
