"""One POP3 session's meaning: login, the maildrop snapshot, retrieval, and UPDATE.

The engine says *what* the client asked; the session decides the answer. It logs in
through the backend (passthrough credentials), takes the maildrop lock only after the
credentials were accepted, snapshots the mailbox, streams RETR/TOP through the wire
encoder, keeps DELE and RSET local, and at QUIT asks the backend to dispose of exactly the
messages marked deleted (RFC 1939 section 6). Any other end of the session, a dropped
connection, a timeout, a shutdown, goes through `abort`, which applies nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from popbridge.auth import Authenticator, PassthroughAuthenticator
from popbridge.errors import AuthFailed, BridgeError, Code, MailboxInUse, MessageGone
from popbridge.locks import Lease, LocalLocks, MaildropLocks
from popbridge.maildrop import Backend, Disposition, DispositionKind, Mailbox
from popbridge.pop3 import commands as c
from popbridge.pop3.engine import Pop3Engine, Rejected
from popbridge.pop3.replies import Err, Ok, Reply
from popbridge.pop3.wire import BodyEncoder
from popbridge.sizes import MemorySizeCache, SizeCache
from popbridge.snapshot import Entry, NoSuchMessage, Snapshot
from popbridge.uidl import DerivedUidls, UidlMap

PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
SEEN = Disposition(DispositionKind.SEEN)


class Output(Protocol):
    """Where replies go: an asyncio StreamWriter fits."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What the operator configured for sessions on one listener."""

    plaintext_auth: bool = False
    disposition: Disposition = field(default_factory=lambda: Disposition(DispositionKind.EXPUNGE))
    mark_seen_on_retr: bool = False
    auth_failure_delay: float = 2.0
    max_auth_failures: int = 3
    implementation: str = "popbridge"


@dataclass(slots=True)
class Services:
    """Process-wide collaborators shared by every session."""

    backend: Backend
    locks: MaildropLocks = field(default_factory=LocalLocks)
    uidls: UidlMap = field(default_factory=DerivedUidls)
    sizes: SizeCache = field(default_factory=MemorySizeCache)
    authenticator: Authenticator | None = None

    def __post_init__(self) -> None:
        if self.authenticator is None:
            self.authenticator = PassthroughAuthenticator(self.backend)


class SessionClosing(Exception):
    """The reply was sent; the connection must now close."""


class Session:
    """Answers commands for one connection; `abort` must run if QUIT never came."""

    def __init__(
        self,
        engine: Pop3Engine,
        out: Output,
        services: Services,
        policy: SessionPolicy,
        *,
        secure: bool,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.engine = engine
        self.secure = secure
        self._out = out
        self._services = services
        self._policy = policy
        self._log = log
        self._user: str | None = None
        self._account = ""
        self._failures = 0
        self._mailbox: Mailbox | None = None
        self._lease: Lease | None = None
        self._snapshot: Snapshot | None = None
        self._retrieved: set[str] = set()

    @property
    def plaintext_allowed(self) -> bool:
        """RFC 2595 section 2.3 / RFC 5034 section 4: no cleartext passwords without TLS."""
        return self.secure or self._policy.plaintext_auth

    async def handle(self, event: c.Command | Rejected) -> None:
        """Answer one event; raises `SessionClosing` after the last reply."""
        if isinstance(event, Rejected):
            self._out.write(self.engine.send(event.reply))
            if event.close:
                raise SessionClosing
            return
        if isinstance(event, c.Retr | c.Top):
            await self._send_message(event)
            return
        reply = await self._answer(event)
        self._out.write(self.engine.send(reply))
        if isinstance(event, c.Quit) or self._failures >= self._policy.max_auth_failures:
            raise SessionClosing

    async def _answer(self, command: c.Command) -> Reply:
        match command:
            case c.Capa():
                return Ok("capability list follows", tuple(self.capabilities()))
            case c.User(name):
                return self._user_command(name)
            case c.Pass(password):
                assert self._user is not None  # the engine lets PASS through only after USER
                return await self.login(self._user, password)
            case c.Quit():
                return await self._quit()
            case c.Stat() | c.List() | c.Uidl() | c.Dele() | c.Noop() | c.Rset():
                return self._transaction(command, self._require_snapshot())
            case _:
                # APOP needs the backend's shared secret (conformance P-2.2); AUTH and STLS
                # are answered by the TLS/SASL layer when it is configured.
                return Err("command not supported")

    def capabilities(self) -> list[str]:
        """RFC 2449 section 5; the same set in both states (section 5, conformance E-1.2)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.plaintext_allowed:
            caps.insert(1, "USER")
        caps.append(f"IMPLEMENTATION {self._policy.implementation}")
        return caps

    def _user_command(self, name: str) -> Reply:
        if not self.plaintext_allowed:
            return Err(PLAINTEXT_REFUSED, Code.AUTH)
        self._user = name
        return Ok("send PASS")  # RFC 1939 section 13: the same answer for every name

    async def login(self, user: str, secret: str, mechanism: str = "password") -> Reply:
        """PASS or a finished SASL exchange: open, lock and snapshot the maildrop."""
        try:
            await self._open(user, secret, mechanism)
        except AuthFailed as error:
            self._failures += 1
            self._log.info("login failed for %r: %s", user, error)
            await asyncio.sleep(self._policy.auth_failure_delay)
            return Err(AuthFailed.wire_text, Code.AUTH)
        except BridgeError as error:
            self._log.warning("login of %r not completed: %r", user, error)
            return Err(error.wire_text, error.code)
        assert self._snapshot is not None
        count, octets = self._snapshot.stat()
        self._log.info("%r logged in, %d messages", user, count)
        return Ok(f"maildrop has {count} messages ({octets} octets)")

    async def _open(self, user: str, secret: str, mechanism: str) -> None:
        """Authenticate, lock, snapshot; on any failure leave nothing held."""
        assert self._services.authenticator is not None
        login = await self._services.authenticator.authenticate(user, secret, mechanism=mechanism)
        mailbox = await login.backend.open(login.credentials)
        try:
            lease = await self._services.locks.try_acquire(login.account)
            if lease is None:
                raise MailboxInUse(login.account)
            self._mailbox, self._lease = mailbox, lease
            listing = await mailbox.list(hidden_keyword=self._policy.disposition.hides_keyword)
            listing = await self._services.sizes.correct(login.account, listing)
            uidls = await self._services.uidls.assign(login.account, listing)
            self._account = login.account
            self._snapshot = Snapshot(listing, uidls)
        except BaseException:
            await self.abort()
            await mailbox.close()
            raise

    def _require_snapshot(self) -> Snapshot:
        if self._snapshot is None:  # the engine's state table makes this unreachable
            raise RuntimeError("transaction command without a maildrop")
        return self._snapshot

    def _transaction(self, command: c.Command, snapshot: Snapshot) -> Reply:
        try:
            match command:
                case c.Stat():
                    count, octets = snapshot.stat()
                    return Ok(f"{count} {octets}")
                case c.List(None):
                    return Ok(
                        "scan listing follows",
                        tuple(f"{e.number} {e.size}" for e in snapshot.live()),
                    )
                case c.List(number) if number is not None:
                    return Ok(f"{number} {snapshot.get(number).size}")
                case c.Uidl(None):
                    return Ok(
                        "unique-id listing follows",
                        tuple(f"{e.number} {e.uidl}" for e in snapshot.live()),
                    )
                case c.Uidl(number) if number is not None:
                    return Ok(f"{number} {snapshot.get(number).uidl}")
                case c.Dele(number):
                    snapshot.delete(number)
                    return Ok(f"message {number} deleted")
                case c.Rset():
                    snapshot.reset()
                    return Ok("deletion marks removed")
            return Ok()  # NOOP
        except NoSuchMessage as missing:
            return Err(str(missing))

    async def _send_message(self, command: c.Retr | c.Top) -> None:
        """RETR/TOP: stream the body; the status line waits for the first chunk."""
        try:
            entry = self._require_snapshot().get(command.msg)
        except NoSuchMessage as missing:
            self._out.write(self.engine.send(Err(str(missing))))
            return
        lines = command.lines if isinstance(command, c.Top) else None
        assert self._mailbox is not None
        async with _closing(
            self._mailbox.fetch(entry.message.identity, body_lines=lines)
        ) as chunks:
            first = await self._first_chunk(chunks)
            if first is None:
                return
            self._out.write(self.engine.send(Ok(f"{entry.size} octets")))
            encoder = BodyEncoder(body_lines=lines)
            await self._stream(first, chunks, encoder)
        if lines is None:
            await self._retrieved_whole(entry, encoder.octets)

    async def _retrieved_whole(self, entry: Entry, octets: int) -> None:
        self._retrieved.add(entry.message.identity)
        if octets != entry.size:
            # Later sessions list the size sent now (conformance I-8): content is immutable.
            self._log.warning(
                "message %d: listed %d octets, sent %d", entry.number, entry.size, octets
            )
            await self._services.sizes.record(self._account, entry.message.identity, octets)

    async def _first_chunk(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        """The first chunk, or None after answering `-ERR` (nothing was sent yet)."""
        try:
            return await anext(chunks, b"")
        except MessageGone:
            self._out.write(self.engine.send(Err(MessageGone.wire_text)))
        except BridgeError as error:
            self._log.warning("fetch failed: %r", error)
            self._out.write(self.engine.send(Err(error.wire_text, error.code)))
        return None

    async def _stream(
        self, first: bytes, chunks: AsyncIterator[bytes], encoder: BodyEncoder
    ) -> None:
        """Write the body with backpressure; a failure mid-body can only close the connection."""
        chunk = first
        try:
            while True:
                self._out.write(encoder.feed(chunk))
                await self._out.drain()
                if encoder.done:
                    break
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
        except BridgeError as error:
            self._log.warning("fetch failed after the status line, closing: %r", error)
            raise SessionClosing from error
        self._out.write(encoder.finish())

    async def _quit(self) -> Reply:
        """RFC 1939 section 6: QUIT in TRANSACTION is the only way into UPDATE."""
        if self._snapshot is None:
            return Ok("bye")
        try:
            failed = await self._update(self._snapshot)
        finally:
            await self.abort()
        if failed:
            return Err("some deleted messages not removed", Code.SYS_TEMP)
        return Ok("bye")

    async def _update(self, snapshot: Snapshot) -> int:
        """Apply the disposition to exactly the DELE'd messages; returns how many failed."""
        assert self._mailbox is not None
        deleted = snapshot.deleted_identities()
        failed = len(deleted)
        try:
            if deleted:
                result = await self._mailbox.dispose(deleted, self._policy.disposition)
                if result.failed:
                    self._log.warning("UPDATE: %s", result.detail)
            failed = len(result.failed) if deleted else 0
        except BridgeError as error:
            self._log.warning("UPDATE failed: %r", error)
            return failed
        self._log.info("UPDATE: %d disposed, %d failed", len(deleted) - failed, failed)
        await self._mark_retrieved_seen(set(deleted))
        return failed

    async def _mark_retrieved_seen(self, deleted: set[str]) -> None:
        """The optional "RETR sets \\Seen" policy, applied at UPDATE (conformance I-2)."""
        seen = self._retrieved - deleted
        if not (self._policy.mark_seen_on_retr and seen):
            return
        try:
            result = await self._mailbox.dispose(sorted(seen), SEEN)  # type: ignore[union-attr]
            if result.failed:
                self._log.warning("marking retrieved messages seen: %s", result.detail)
        except BridgeError as error:
            self._log.warning("marking retrieved messages seen failed: %r", error)

    async def abort(self) -> None:
        """End the session without UPDATE: release the lock and the mailbox, apply nothing."""
        mailbox, self._mailbox = self._mailbox, None
        lease, self._lease = self._lease, None
        self._snapshot = None
        try:
            if lease is not None:
                await lease.release()
        finally:
            if mailbox is not None:
                await mailbox.close()


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close a backend's chunk stream even when TOP stops early or the client went away."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
