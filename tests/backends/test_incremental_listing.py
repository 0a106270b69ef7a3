"""An incremental listing equals a full one: IMAP on real Dovecot, Cyrus and Courier (no
CONDSTORE: full listings that reuse remembered sizes), JMAP on Cyrus.

This module owns the model-equality proof of `backends.imap.listing` and
`backends.jmap.changes`: between logins,
another client changes the maildrop folder at random (arrivals with and without a CRLF at
the end, expunges, `\\Deleted` set and cleared, the hidden keyword set and cleared, `\\Seen`
changes, and the folder deleted and recreated, which gives it a new UIDVALIDITY); after
each change a login that starts from the stored listing must list exactly what a login
without memory lists, and on IMAP every size must be the octets RETR sends (RFC 1939
section 11), which the test knows from the messages it put in. It also checks what the
cheap IMAP paths send: an unchanged folder costs no command after the EXAMINE.
"""

from __future__ import annotations

import asyncio
import imaplib
import itertools
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backends.imap import create
from backends.imap.connection import Connection
from backends.jmap import changes
from backends.jmap import listing as listing_module
from devkit.cyrus import Cyrus, start_cyrus
from devkit.fake_imap import RecordingProxy
from popbridge.contract import Credentials, RemoteMessage, load_backend
from popbridge.pop3.wire import normalised_size
from popbridge.store.listings import MemoryListings
from tests.backends.contract import listed_as_told

FOLDER = "Drop"
KEYWORD = "popbridge_done"
USER = "bob"
_UID = re.compile(rb"UID (\d+)")


class Server(Protocol):
    host: str
    imap_port: int
    users: dict[str, str]

    def imap(self, user: str) -> imaplib.IMAP4: ...


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = start_cyrus({USER: "b0b pw"})
    yield server
    server.stop()


def login(server: Server) -> str:
    """The test user's login on `server` (some servers' logins are `user@domain`)."""
    return next(name for name in server.users if name.partition("@")[0] == USER)


@pytest.fixture(params=["dovecot", "cyrus"])
def server(request: pytest.FixtureRequest) -> Server:
    found: Server = request.getfixturevalue(request.param)
    return found


@pytest.fixture(
    params=["dovecot/imap", "cyrus/imap", "cyrus/jmap", "dovecot/imap-ESEARCH",
            "cyrus/imap-CONDSTORE", "dovecot/imap+merged"]
)  # fmt: skip
def upstream(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    """A server and protocol; `-X`: as if the server did not offer extension X (its
    fallback: a plain UID SEARCH for expunges; without CONDSTORE, full listings);
    `+merged`: a maildrop of two folders, each with its own mark."""
    name, protocol = request.param.split("/")
    protocol, _, merged = protocol.partition("+")
    protocol, _, missing = protocol.partition("-")
    if missing:
        hide(monkeypatch, missing)
    folders = (FOLDER, f"{FOLDER}2") if merged else (FOLDER,)
    return Upstream(request.getfixturevalue(name), protocol, folders)


def hide(monkeypatch: pytest.MonkeyPatch, capability: str) -> None:
    refresh = Connection.refresh_capabilities

    async def without(self: Connection, reply: Any = None) -> None:
        await refresh(self, reply)
        self.capabilities -= {capability}

    monkeypatch.setattr(Connection, "refresh_capabilities", without)


@dataclass
class Upstream:
    """Another client of the folder, and what the test put in it (Message-ID -> bytes)."""

    server: Server
    protocol: str = "imap"
    folders: tuple[str, ...] = (FOLDER,)
    sent: dict[str, bytes] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=itertools.count)

    def client(self, folder: str) -> imaplib.IMAP4:
        client = self.server.imap(login(self.server))
        client.select(folder)
        return client

    def settings(self) -> dict[str, Any]:
        if len(self.folders) > 1:
            return {"folders": list(self.folders)}
        return {"folder": self.folders[0]}

    def start(self) -> None:
        self.sent.clear()
        for folder in self.folders:
            self.recreate(folder, keep=False)

    def recreate(self, folder: str, keep: bool = True) -> None:
        """Replace the folder by a new one (a new UIDVALIDITY), putting its mail back."""
        client = self.server.imap(login(self.server))
        try:
            client.select(folder, readonly=True)
            present = self._bodies(client) if keep else []
            client.select("INBOX", readonly=True)
            # RENAME, not DELETE: Cyrus's delayed delete refuses a second one in a second
            client.rename(folder, f"{folder}-gone-{uuid.uuid4().hex}")
            assert client.create(folder)[0] == "OK"
            for body in present:
                client.append(folder, "", None, body)
        finally:
            client.logout()

    def _bodies(self, client: imaplib.IMAP4) -> list[bytes]:
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [item[1] for item in data if isinstance(item, tuple)]

    def uids(self, client: imaplib.IMAP4) -> list[int]:
        _, data = client.uid("SEARCH", "ALL")
        return [int(u) for u in (data[0] or b"").split()]

    def arrive(self, size: int, terminated: bool, folder: str | None = None) -> None:
        folder = folder or self.folders[0]
        mid = f"<{next(self.serial)}.{id(self)}@listing.test>"
        text = b"y" * size + (b"\r\n" if terminated else b"")
        body = f"Message-ID: {mid}\r\nSubject: s\r\n\r\n".encode() + text
        self.sent[mid] = body
        client = self.client(folder)
        try:
            client.append(folder, "", None, body)
        finally:
            client.logout()

    def act(self, step: tuple[Any, ...]) -> None:
        kind, pick = step[0], step[1]
        folder = self.folders[pick // 7 % len(self.folders)]
        if kind == "arrive":
            self.arrive(pick % 700, bool(step[2]), folder)
            return
        if kind == "reset":
            self.recreate(folder)
            return
        client = self.client(folder)
        try:
            uids = self.uids(client)
            if not uids:
                return
            uid = str(uids[pick % len(uids)])
            if kind == "expunge":
                client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
                client.uid("EXPUNGE", uid)
            else:
                flag = {"deleted": "\\Deleted", "keyword": KEYWORD, "seen": "\\Seen"}[kind]
                change = "+FLAGS.SILENT" if step[2] else "-FLAGS.SILENT"
                client.uid("STORE", uid, change, f"({flag})")
        finally:
            client.logout()


STEPS = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 10_000), st.booleans()),
    st.tuples(st.sampled_from(["expunge"]), st.integers(0, 100)),
    st.tuples(st.sampled_from(["deleted", "keyword", "seen"]), st.integers(0, 100), st.booleans()),
    st.tuples(st.just("reset"), st.just(0)),
)


async def listing(
    server: Server, memory: Any = None, protocol: str = "imap", **overrides: Any
) -> list[RemoteMessage]:
    if protocol == "jmap":
        assert isinstance(server, Cyrus)
        table = {"type": "jmap", "url": server.http_url, "timeout": 10, "mailbox": FOLDER}
        backend = load_backend("jmap", table, source="test.toml")
    else:
        where = {} if {"folder", "folders"} & overrides.keys() else {"folder": FOLDER}
        address = {"host": server.host, "port": server.imap_port, "tls": "none"}
        table = {"type": "imap", "timeout": 10, **address, **where, **overrides}
        backend = create(table, source="test.toml")
    user = login(server)
    mailbox = await backend.open(Credentials(user, server.users[user]))
    try:
        return await listed_as_told(mailbox, memory, hidden_keyword=KEYWORD)
    finally:
        await mailbox.close()


class Recorded(logging.Handler):
    """The listings' "listing in full" log records while in a `with` block."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._loggers = [logging.getLogger(n) for n in ("backends.imap", "backends.jmap")]

    def emit(self, record: logging.LogRecord) -> None:
        if "in full" in record.getMessage():
            self.records.append(record)

    def __enter__(self) -> Recorded:
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level in zip(self._loggers, self._levels, strict=True):
            logger.removeHandler(self)
            logger.setLevel(level)


def check_against_full(upstream: Upstream, memories: MemoryListings) -> None:
    async def both() -> tuple[list[RemoteMessage], list[RemoteMessage]]:
        memory = memories.for_account(USER)
        server, protocol, more = upstream.server, upstream.protocol, upstream.settings()
        return (
            await listing(server, memory, protocol, **more),
            await listing(server, None, protocol, **more),
        )

    with Recorded() as fallbacks:
        incremental, full = asyncio.run(both())
    assert incremental == full
    # nothing changes while the test lists: every fallback would be a shortcut's failure
    assert not fallbacks.records
    if upstream.protocol == "jmap":
        return  # JMAP sizes are the server's until RETR measures them (no partial download)
    for message in full:  # exact from the first listing: what RETR will send
        assert message.message_id is not None
        assert message.size == normalised_size(upstream.sent[message.message_id])


def sessions_between_changes(
    upstream: Upstream, steps: list[tuple[Any, ...]], seed: list[bool]
) -> None:
    upstream.start()
    for terminated in seed:
        upstream.arrive(40, terminated)
    memories = MemoryListings()
    check_against_full(upstream, memories)
    for step in steps:
        upstream.act(step)
        check_against_full(upstream, memories)


# Few examples, each a handful of logins against a real server; no shrinking, since every
# shrink step replays logins (a failure prints the example as it was generated).
FEW = settings(
    deadline=None, suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)  # fmt: skip
STEP_LISTS = st.lists(STEPS, min_size=1, max_size=8)


@settings(FEW, max_examples=5)
@given(steps=STEP_LISTS, seed=st.lists(st.booleans(), max_size=4))
def test_incremental_listing_equals_a_full_one(
    upstream: Upstream, steps: list[tuple[Any, ...]], seed: list[bool]
) -> None:
    sessions_between_changes(upstream, steps, seed)


@settings(FEW, max_examples=2)  # a Courier login is slow; its listings are full
@given(steps=STEP_LISTS, seed=st.lists(st.booleans(), max_size=4))
def test_without_condstore_too(
    courier: Server, steps: list[tuple[Any, ...]], seed: list[bool]
) -> None:
    trash = getattr(courier, "folders", {})["trash"]  # Courier's folders are under "INBOX."
    folder = trash[: -len("Trash")] + FOLDER
    sessions_between_changes(Upstream(courier, "imap", (folder,)), steps, seed)


async def test_an_unchanged_folder_costs_no_command_after_the_examine(server: Server) -> None:
    upstream = Upstream(server)
    upstream.start()
    for size in (10, 11, 600):
        upstream.arrive(size, size != 11)
    memories = MemoryListings()
    first = await listing(server, memories.for_account(USER))
    async with RecordingProxy(server.imap_port) as proxy:
        again = await listing(server, memories.for_account(USER), port=proxy.port)
        sent = [line.split()[1] for line in proxy.lines if line.split()[1:2] != [b"LOGIN"]]
    assert again == first and len(again) == 3
    # besides logging in and out: the EXAMINE, and nothing else
    assert [verb for verb in sent if verb not in (b"AUTHENTICATE", b"LOGOUT")] == [b"EXAMINE"]


async def test_a_changed_folder_costs_only_its_changes(server: Server) -> None:
    upstream = Upstream(server)
    upstream.start()
    for size in range(30):
        upstream.arrive(size, True)
    memories = MemoryListings()
    await listing(server, memories.for_account(USER))
    upstream.arrive(5, False)
    async with RecordingProxy(server.imap_port) as proxy:
        again = await listing(server, memories.for_account(USER), port=proxy.port)
        sent = b"\n".join(proxy.lines)
    newest = again[-1]
    assert len(again) == 31
    assert newest.size == normalised_size(upstream.sent[newest.message_id or ""])
    # nothing was expunged: the one UID SEARCH is of what the hidden keyword leaves out,
    # asked because a message arrived (no copy may inherit a withheld message's UIDL)
    assert b"CHANGEDSINCE" in sent and sent.count(b"UID SEARCH") == 1
    assert b"UNDELETED" in sent
    assert sent.count(b"RFC822.SIZE") == 1 and b"UID FETCH 31 (UID RFC822.SIZE" in sent


async def test_jmap_lists_in_full_only_once(cyrus: Cyrus, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = Upstream(cyrus, "jmap")
    upstream.start()
    upstream.arrive(10, True)
    full_listings = []
    list_emails = listing_module.list_emails

    async def counted(*args: Any, **kwargs: Any) -> Any:
        full_listings.append(args)
        return await list_emails(*args, **kwargs)

    monkeypatch.setattr(changes, "list_emails", counted)
    memories = MemoryListings()
    first = await listing(cyrus, memories.for_account(USER), "jmap")
    upstream.arrive(20, False)
    upstream.act(("expunge", 0))
    second = await listing(cyrus, memories.for_account(USER), "jmap")
    third = await listing(cyrus, memories.for_account(USER), "jmap")
    assert len(first) == 1 and len(second) == 1 and second == third
    assert second[0].identity != first[0].identity
    assert len(full_listings) == 1  # the later ones came from Email/queryChanges
