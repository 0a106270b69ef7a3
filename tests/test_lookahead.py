"""The next RETR's answer prepared ahead: same bytes, one fetch per message, the snapshot
still in charge, never two calls on the mailbox at once, and bounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Sequence

import pytest

from devkit.dialogue import LOG, assert_dialogue, exchange, make_session
from devkit.memory_backend import MemoryBackend, MemoryMailbox
from popbridge.contract import (
    Credentials,
    DisposeResult,
    Disposition,
    ListingMemory,
    RemoteMessage,
    close_chunks,
)
from popbridge.pop3.wire import BodyEncoder
from popbridge.session.lookahead import Lookahead
from popbridge.upstream.budget import Budget

MSG1 = b"Subject: a\r\n\r\nhi\r\n"  # 18 octets
MSG2 = b"Subject: b\n\n.dot\nlast"  # LF only, no final newline: 26 octets on the wire
MSG3 = b"Subject: c\r\n\r\n" + b"x" * 70 + b"\r\n"  # 86 octets
LOGIN = ("C: USER alice", "S: +OK send PASS", "C: PASS secret", "S~ \\+OK .*")
RETR2 = ("C: RETR 2", "S: +OK 26 octets", "S: Subject: b", "S: ", "S: ..dot", "S: last", "S: .")


class Watched:
    """A mailbox that records its calls and fails if one starts while another runs."""

    def __init__(self, inner: MemoryMailbox) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.busy: str | None = None
        self.overlaps: list[str] = []  # also those a preparation's error handling swallowed

    @contextlib.contextmanager
    def _alone(self, call: str) -> Iterator[None]:
        if self.busy is not None:
            self.overlaps.append(f"{call} while {self.busy} runs")
        assert self.busy is None, self.overlaps[-1]
        self.busy = call
        self.calls.append(call)
        try:
            yield
        finally:
            self.busy = None

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> Sequence[RemoteMessage]:
        with self._alone("list"):
            return await self.inner.list(hidden_keyword=hidden_keyword)

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        with self._alone(f"fetch {identity}"):
            async for chunk in self.inner.fetch(identity, body_lines=body_lines):
                yield chunk

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        with self._alone("dispose"):
            return await self.inner.dispose(identities, how)

    async def close(self) -> None:
        with self._alone("close"):
            await self.inner.close()


class WatchedBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.watched: list[Watched] = []

    async def open(self, credentials: Credentials) -> Watched:
        watched = Watched(await super().open(credentials))
        self.watched.append(watched)
        return watched


@pytest.fixture
def backend() -> Iterator[WatchedBackend]:
    backend = WatchedBackend()
    backend.user("alice", "secret", MSG1, MSG2, MSG3)  # chunks of 7 octets: many awaits
    yield backend
    assert [o for mailbox in backend.watched for o in mailbox.overlaps] == []


async def settle() -> None:
    """Let a preparation running in the background finish."""
    for _ in range(100):
        await asyncio.sleep(0)


async def test_reading_in_order_fetches_each_message_once(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, *LOGIN, "C: RETR 1", "S: +OK 18 octets",
                          "S: Subject: a", "S: ", "S: hi", "S: .")  # fmt: skip
    await settle()
    mailbox = backend.watched[0]
    assert mailbox.calls == ["list", "fetch m1", "fetch m2"]  # m2 prepared before asked for
    await assert_dialogue(session, out, *RETR2, "C: QUIT", "S: +OK bye")
    await session.abort()  # the connection's end: the LOGOUT comes after +OK to QUIT
    # m2 came from the prepared answer; m3 was prepared, then waited for before QUIT
    assert mailbox.calls == ["list", "fetch m1", "fetch m2", "fetch m3", "close"]


async def test_the_prepared_answer_is_the_streamed_answer(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    prepared, _ = await exchange(session, out, b"RETR 1\r\nRETR 2\r\nRETR 3\r\n")
    await session.abort()
    streamed = b""
    for number in (1, 2, 3):  # each the first RETR of its session: none was prepared
        fresh, fresh_out = make_session(backend)
        await exchange(fresh, fresh_out, b"USER alice\r\nPASS secret\r\n")
        streamed += (await exchange(fresh, fresh_out, b"RETR %d\r\n" % number))[0]
        await fresh.abort()
    assert prepared == streamed
    assert prepared.count(b"+OK") == 3 and b"..dot" in prepared
    assert backend.watched[0].calls == ["list", "fetch m1", "fetch m2", "fetch m3", "close"]


async def test_a_dele_in_between_still_refuses_the_prepared_message(
    backend: WatchedBackend,
) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, *LOGIN, "C: RETR 1", "S~ \\+OK 18 octets", "S: Subject: a", "S: ",
        "S: hi", "S: .", "C: DELE 2", "S: +OK message 2 deleted",
        "C: RETR 2", "S: -ERR message already deleted",
        "C: RSET", "S: +OK deletion marks removed", *RETR2,
    )  # fmt: skip


async def test_a_message_gone_while_prepared_is_refused_at_retr(
    backend: WatchedBackend, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.stores["alice"]
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    store.messages = [m for m in store.messages if m.identity != "m2"]  # expunged upstream
    with caplog.at_level(logging.DEBUG, logger=LOG.logger.name):
        await exchange(session, out, b"RETR 1\r\n")
        await settle()
    assert "preparing 'm2' ahead failed: MessageGone" in caplog.text  # on the session's log
    await assert_dialogue(session, out, "C: RETR 2", "S: -ERR message no longer available")


async def test_top_and_other_orders_fetch_again(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\nRETR 1\r\n")
    reply, _ = await exchange(session, out, b"TOP 2 0\r\nRETR 3\r\nRETR 1\r\n")
    assert reply.startswith(b"+OK 26 octets\r\nSubject: b\r\n\r\n.\r\n+OK 86 octets\r\n")
    assert reply.endswith(b"+OK 18 octets\r\nSubject: a\r\n\r\nhi\r\n.\r\n")
    await settle()
    # m2 prepared after RETR 1 and dropped for TOP; m3 and m1 fetched when asked; RETR 3 and
    # then RETR 1 do not follow the RETR before them, so nothing is prepared after them
    assert backend.watched[0].calls[1:] == ["fetch m1", "fetch m2", "fetch m2", "fetch m3",
                                            "fetch m1"]  # fmt: skip


async def test_a_repeated_retr_prepares_nothing_more(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    reply, _ = await exchange(session, out, b"RETR 1\r\n" * 4 + b"RETR 2\r\nRETR 3\r\n")
    assert reply.count(b"+OK 18 octets\r\n") == 4 and reply.endswith(b"x" * 70 + b"\r\n.\r\n")
    await settle()
    # m2 prepared once, after the first RETR 1 (and dropped by the second); RETR 2 then
    # fetches m2 and, as it follows RETR 1, prepares m3, which RETR 3 takes
    assert backend.watched[0].calls[1:] == ["fetch m1", "fetch m2", "fetch m1", "fetch m1",
                                            "fetch m1", "fetch m2", "fetch m3"]  # fmt: skip


async def test_a_dropped_connection_waits_for_the_preparation(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\nRETR 1\r\n")
    await session.abort()  # the preparation of m2 is still in its first chunks
    assert backend.watched[0].calls == ["list", "fetch m1", "fetch m2", "close"]
    assert backend.stores["alice"].mutations == []
    again, out2 = make_session(backend)  # the maildrop lock was released
    await assert_dialogue(again, out2, *LOGIN)


async def test_quit_disposes_only_after_the_preparation(backend: WatchedBackend) -> None:
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\n")
    reply, closed = await exchange(session, out, b"DELE 1\r\nRETR 2\r\nQUIT\r\n")
    assert closed and reply.endswith(b"+OK bye\r\n")
    await session.abort()
    assert backend.watched[0].calls[-3:] == ["fetch m3", "dispose", "close"]
    assert backend.stores["alice"].mutations == [("expunge", ("m1",))]


async def test_large_messages_are_not_prepared(backend: WatchedBackend) -> None:
    backend.stores["alice"].add(b"X: big\r\n\r\n" + b"y" * 100_000 + b"\r\n")
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\nRETR 3\r\n")
    await settle()
    assert backend.watched[0].calls == ["list", "fetch m3"]  # m4 is over the limit
    reply, _ = await exchange(session, out, b"RETR 4\r\n")
    assert reply.startswith(b"+OK 100012 octets\r\n") and reply.endswith(b"y\r\n.\r\n")


async def test_an_understated_size_drops_the_preparation(backend: WatchedBackend) -> None:
    store = backend.stores["alice"]
    store.add(b"X: liar\r\n\r\n" + b"z" * 9000 + b"\r\n")
    store.misreported["m4"] = 100  # the backend lists far less than it sends
    session, out = make_session(backend)
    await exchange(session, out, b"USER alice\r\nPASS secret\r\nRETR 3\r\n")
    await settle()
    reply, _ = await exchange(session, out, b"RETR 4\r\n")
    assert reply.startswith(b"+OK 100 octets\r\n") and len(reply) > 9000  # streamed again
    assert backend.watched[0].calls.count("fetch m4") == 2


async def test_the_budget_bounds_what_sessions_hold_together() -> None:
    backend = MemoryBackend()
    backend.user("alice", "secret", MSG1, MSG2)
    mailbox = await backend.open(Credentials("alice", "secret"))
    shared = Budget(40)
    first, second = Lookahead(mailbox, budget=shared), Lookahead(mailbox, budget=shared)
    first.start("m1", 30)
    second.start("m2", 30)  # 10 octets left: not prepared
    assert shared.used == 30
    assert await second.take("m2") is None
    prepared = await first.take("m1")
    assert prepared is not None and prepared.octets == len(MSG1) == 18
    encoder = BodyEncoder()
    assert prepared.wire == encoder.feed(MSG1) + encoder.finish()
    assert shared.used == 0  # released once handed over
    first.start("m2", 26)
    assert await first.take("m1") is None  # another message was prepared: dropped
    assert shared.used == 0


async def test_close_chunks_runs_a_generators_cleanup_and_accepts_plain_iterators() -> None:
    cleaned: list[str] = []

    async def pieces() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            cleaned.append("closed")

    chunks = pieces()
    assert await anext(chunks) == b"a"  # left after the first piece, as TOP does
    await close_chunks(chunks)
    assert cleaned == ["closed"]

    class Plain:  # an async iterator without aclose: nothing to close, no error
        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> bytes:
            raise StopAsyncIteration

    await close_chunks(Plain())
