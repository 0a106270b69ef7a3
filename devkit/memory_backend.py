"""An in-memory backend for unit tests of the engine, session and server.

It implements the backend contract over Python lists and records every mutating call, so
a test can assert that nothing changed upstream. It never replaces the real-server tests:
it exists to make protocol transcripts fast and exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field

from popbridge.contract import (
    Credentials,
    DisposeResult,
    Disposition,
    DispositionKind,
    ListingMemory,
    RemoteMessage,
)
from popbridge.errors import AuthFailed, BackendUnavailable, MessageGone
from popbridge.pop3.wire import normalised_size


@dataclass
class StoredMessage:
    identity: str
    data: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class MemoryUpstream:
    """The upstream mailbox of one user, plus what was done to it."""

    password: str
    token: str | None = None  # a bearer token this user may log in with (XOAUTH2)
    messages: list[StoredMessage] = field(default_factory=list)
    mutations: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fail_dispose: set[str] = field(default_factory=set)
    misreported: dict[str, int] = field(default_factory=dict)  # identity -> size listed
    # list raw sizes as not exact (as IMAP's RFC822.SIZE is) and measure them when asked
    provisional: bool = False
    estimates: bool = True  # with `provisional`: False lists 0 (no estimate), as Graph does
    measured: list[tuple[str, ...]] = field(default_factory=list)  # each `measure` call
    fail_measure: bool = False
    chunk_size: int = 7
    next_id: int = 1

    def add(self, data: bytes, flags: Collection[str] = ()) -> str:
        identity = f"m{self.next_id}"
        self.next_id += 1
        self.messages.append(StoredMessage(identity, data, set(flags)))
        return identity


class MemoryMailbox:
    def __init__(self, store: MemoryUpstream) -> None:
        self.store = store
        self.closed = False
        self.withheld: frozenset[str] = frozenset()  # hidden by the keyword, still here

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> Sequence[RemoteMessage]:
        self.withheld = frozenset(
            m.identity
            for m in self.store.messages
            if hidden_keyword is not None and hidden_keyword in m.flags
        )
        return [
            self._listed(m)
            for m in self.store.messages
            if "\\Deleted" not in m.flags
            and (hidden_keyword is None or hidden_keyword not in m.flags)
        ]

    def _listed(self, message: StoredMessage) -> RemoteMessage:
        if self.store.provisional:
            estimate = len(message.data) if self.store.estimates else 0
            return RemoteMessage(message.identity, estimate, exact=False)
        size = self.store.misreported.get(message.identity, normalised_size(message.data))
        return RemoteMessage(message.identity, size)

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        self.store.measured.append(tuple(identities))
        if self.store.fail_measure:
            raise BackendUnavailable("measuring refused")
        return {
            m.identity: normalised_size(m.data)
            for m in self.store.messages
            if m.identity in identities
        }

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        found = [m for m in self.store.messages if m.identity == identity]
        if not found:
            raise MessageGone(identity)
        data, size = found[0].data, self.store.chunk_size
        for start in range(0, len(data), size):
            await asyncio.sleep(0)
            yield data[start : start + size]

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        self.store.mutations.append((how.kind.value, tuple(identities)))
        failed = frozenset(set(identities) & self.store.fail_dispose)
        for message in list(self.store.messages):
            if message.identity not in identities or message.identity in failed:
                continue
            if how.kind in (DispositionKind.EXPUNGE, DispositionKind.TRASH, DispositionKind.MOVE):
                self.store.messages.remove(message)
            elif how.kind is DispositionKind.SEEN:
                message.flags.add("\\Seen")
            else:
                assert how.keyword is not None
                message.flags.add(how.keyword)
        return DisposeResult(failed, "injected failure" if failed else "")

    async def close(self) -> None:
        self.closed = True


class MemoryBackend:
    """Users and their stores; `open` checks the password like an IMAP LOGIN would."""

    def __init__(self) -> None:
        self.stores: dict[str, MemoryUpstream] = {}
        self.opened: list[MemoryMailbox] = []
        self.unavailable = False
        self.logins: list[str] = []  # the mechanism of every accepted login
        self.attempts = 0

    def user(self, name: str, password: str, *messages: bytes) -> MemoryUpstream:
        store = MemoryUpstream(password)
        for data in messages:
            store.add(data)
        self.stores[name] = store
        return store

    async def open(self, credentials: Credentials) -> MemoryMailbox:
        self.attempts += 1
        if self.unavailable:
            raise BackendUnavailable("injected outage")
        store = self.stores.get(credentials.user)
        expected = None if store is None else store.password
        if store is not None and credentials.mechanism == "oauth2":
            expected = store.token
        if store is None or expected is None or expected != credentials.secret:
            raise AuthFailed("bad credentials")
        self.logins.append(credentials.mechanism)
        mailbox = MemoryMailbox(store)
        self.opened.append(mailbox)
        return mailbox

    async def check(self) -> list[str]:
        return ["memory backend"]
