"""One POP3 session's meaning: login, the maildrop snapshot, retrieval, and UPDATE.

The engine says *what* the client asked; the session decides the answer. It logs in
through the authenticator (USER/PASS or a SASL exchange), takes the maildrop lock only
after the credentials were accepted, snapshots the mailbox, streams RETR/TOP, keeps DELE
and RSET local, and at QUIT asks the backend to dispose of exactly the messages marked
deleted (RFC 1939 section 6). Any other end of the session, a dropped connection, a
timeout, a shutdown, goes through `abort`, which applies nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from popbridge.accounts.passthrough import Authenticator, PassthroughAuthenticator
from popbridge.contract import Backend, Disposition, DispositionKind, Mailbox
from popbridge.errors import AuthFailed, BridgeError, Code, LoginTooSoon, MailboxInUse
from popbridge.frontend.throttle import LoginGate, Throttle, ThrottlePolicy
from popbridge.pop3 import commands as c
from popbridge.pop3 import sasl
from popbridge.pop3.engine import Pop3Engine, Rejected
from popbridge.pop3.replies import Continue, Err, Ok, Reply
from popbridge.session.lookahead import Lookahead
from popbridge.session.retrieval import Output, SessionClosing, send_message
from popbridge.session.snapshot import NoSuchMessage, Snapshot
from popbridge.store.listings import ListingMemories, MemoryListings
from popbridge.store.locks import Lease, LocalLocks, MaildropLocks
from popbridge.store.sizes import MemorySizeCache, SizeCache
from popbridge.store.uidl import DerivedUidls, UidlMap

__all__ = ["Output", "Services", "Session", "SessionClosing", "SessionPolicy"]

PLAINTEXT_REFUSED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
SEEN = Disposition(DispositionKind.SEEN)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What the operator configured for sessions on one listener."""

    plaintext_auth: bool = False
    starttls: bool = False
    disposition: Disposition = field(default_factory=lambda: Disposition(DispositionKind.EXPUNGE))
    mark_seen_on_retr: bool = False
    max_auth_failures: int = 3
    sasl_mechanisms: tuple[str, ...] = sasl.ALL_MECHANISMS
    implementation: str = "popbridge"


@dataclass(slots=True)
class Services:
    """Process-wide collaborators shared by every session."""

    backend: Backend
    locks: MaildropLocks = field(default_factory=LocalLocks)
    uidls: UidlMap = field(default_factory=DerivedUidls)
    sizes: SizeCache = field(default_factory=MemorySizeCache)
    listings: ListingMemories = field(default_factory=MemoryListings)
    authenticator: Authenticator | None = None
    throttle: Throttle = field(default_factory=lambda: Throttle(ThrottlePolicy()))
    logins: LoginGate = field(default_factory=LoginGate)
    sasl_mechanisms: tuple[str, ...] = sasl.ALL_MECHANISMS  # what the authenticator can use

    def __post_init__(self) -> None:
        if self.authenticator is None:
            self.authenticator = PassthroughAuthenticator(self.backend)


class Session:
    """Answers commands for one connection; `abort` must run if QUIT never came."""

    def __init__(
        self, engine: Pop3Engine, out: Output, services: Services, policy: SessionPolicy, *,
        secure: bool, log: logging.LoggerAdapter[logging.Logger], address: str = "",
    ) -> None:  # fmt: skip
        self.engine = engine
        self.secure = secure
        self._out = out
        self._services = services
        self._policy = policy
        self._log = log
        self._address = address
        self._user: str | None = None
        self._sasl: sasl.Mechanism | None = None
        self._sasl_refusal: Err | None = None
        self._account = ""
        self._failures = 0
        self._mailbox: Mailbox | None = None
        self._lookahead: Lookahead | None = None
        self._lease: Lease | None = None
        self._snapshot: Snapshot | None = None
        self._retrieved: set[str] = set()
        self._last_retr: int | None = None  # the number of the last message RETR sent

    @property
    def plaintext_allowed(self) -> bool:
        """RFC 2595 section 2.3 / RFC 5034 section 4: no cleartext passwords without TLS."""
        return self.secure or self._policy.plaintext_auth

    def tls_started(self) -> None:
        """STLS succeeded: forget what the client said before TLS (conformance E-2.5)."""
        self.secure = True
        self._user = None
        self.engine.tls_established()

    async def handle(self, event: c.Command | Rejected) -> None:
        """Answer one event; raises `SessionClosing` after the last reply."""
        if isinstance(event, Rejected):
            self._sasl, self._sasl_refusal = None, None  # a refused line ends any exchange
            self._out.write(self.engine.send(event.reply))
            if event.close:
                raise SessionClosing
            return
        if isinstance(event, c.Retr | c.Top):
            await self._send_message(event)
            return
        reply = await self._answer(event)
        self._out.write(self.engine.send(reply))
        if isinstance(event, c.Quit):
            raise SessionClosing
        # after the final answer, not after an RFC 7628 error challenge that precedes it
        if self._failures >= self._policy.max_auth_failures and not isinstance(reply, Continue):
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
            case c.Auth(None):
                return Ok("SASL mechanisms follow", self._offered_mechanisms())
            case c.Auth(name, initial) if name is not None:
                return await self._auth(name, initial)
            case c.SaslResponse(data):
                return await self._sasl_response(data)
            case c.Stls():
                return self._stls()
            case c.Quit():
                return await self._quit()
            case c.Stat() | c.List() | c.Uidl() | c.Dele() | c.Noop() | c.Rset():
                return self._transaction(command, self._require_snapshot())
        # APOP needs the backend's shared secret, which a bridge never has (conformance P-2.2)
        return Err("command not supported")

    def capabilities(self) -> list[str]:
        """RFC 2449 section 5; STLS only where it is permitted (RFC 2595 section 4)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.plaintext_allowed:
            caps.insert(1, "USER")
            if mechanisms := self._offered_mechanisms():
                caps.append("SASL " + " ".join(mechanisms))
        if self._stls_permitted():
            caps.append("STLS")
        if (delay := self._services.throttle.policy.login_delay) > 0:
            caps.append(f"LOGIN-DELAY {delay}")
        caps.append(f"IMPLEMENTATION {self._policy.implementation}")
        return caps

    def _offered_mechanisms(self) -> tuple[str, ...]:
        return self._policy.sasl_mechanisms if self.plaintext_allowed else ()

    def _stls_permitted(self) -> bool:
        return self._policy.starttls and not self.secure and self._snapshot is None

    def _stls(self) -> Reply:
        if self.secure:
            return Err("command not permitted when TLS active")  # RFC 2595 section 4
        if not self._policy.starttls:
            return Err("TLS not available on this port")
        return Ok("Begin TLS negotiation now")

    def _user_command(self, name: str) -> Reply:
        if not self.plaintext_allowed:
            return Err(PLAINTEXT_REFUSED, Code.AUTH)
        self._user = name
        return Ok("send PASS")  # RFC 1939 section 13: the same answer for every name

    async def _auth(self, name: str, initial: str | None) -> Reply:
        if not self.plaintext_allowed:
            return Err(PLAINTEXT_REFUSED, Code.AUTH)
        mechanism = sasl.mechanism(name) if name in self._policy.sasl_mechanisms else None
        if mechanism is None:
            return Err("unsupported authentication mechanism")  # RFC 5034 section 4
        try:
            response = None if initial is None else sasl.decode(initial, initial=True)
            step = mechanism.start(response)
        except sasl.SaslFailed as failed:
            return Err(str(failed))
        return await self._sasl_step(mechanism, step)

    async def _sasl_response(self, data: str) -> Reply:
        mechanism, self._sasl = self._sasl, None
        refusal, self._sasl_refusal = self._sasl_refusal, None
        if refusal is not None:  # RFC 7628 section 3.2.3: the client's reply to the error
            return refusal
        if data == "*" or mechanism is None:
            return Err("authentication cancelled")  # RFC 5034 section 4
        try:
            step = mechanism.step(sasl.decode(data))
        except sasl.SaslFailed as failed:
            return Err(str(failed))
        return await self._sasl_step(mechanism, step)

    async def _sasl_step(self, mechanism: sasl.Mechanism, step: sasl.Step) -> Reply:
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            return Continue(sasl.encode(step.data))
        reply = await self.login(step.user, step.secret, step.mechanism)
        challenge = mechanism.failure_challenge()
        if isinstance(reply, Err) and reply.code is Code.AUTH and challenge is not None:
            # RFC 7628 section 3.2.2 / XOAUTH2: the error is a challenge, then -ERR
            self._sasl_refusal = reply
            return Continue(sasl.encode(challenge))
        return reply

    async def login(self, user: str, secret: str, mechanism: str = "password") -> Reply:
        """PASS or a finished SASL exchange: open, lock and snapshot the maildrop."""
        throttle = self._services.throttle
        if (refusal := throttle.refuse(self._address, user)) is not None:
            self._failures += 1
            self._log.info("login of %r refused by throttling: %s", user, refusal.text)
            return Err(refusal.text, refusal.code)
        try:
            async with self._services.logins.slot():
                account = await self._open(user, secret, mechanism)
        except AuthFailed as error:
            self._failures += 1
            self._log.info("login failed for %r: %s", user, error)
            await asyncio.sleep(throttle.failed(self._address, user))
            return Err(AuthFailed.wire_text, Code.AUTH)
        except BridgeError as error:
            self._log.warning("login of %r not completed: %r", user, error)
            return Err(error.wire_text, error.code)
        throttle.succeeded(self._address, user, account)
        assert self._snapshot is not None
        count, octets = self._snapshot.stat()
        self._log.info("%r logged in, %d messages", user, count)
        return Ok(f"maildrop has {count} messages ({octets} octets)")

    async def _open(self, user: str, secret: str, mechanism: str) -> str:
        """Authenticate, lock, snapshot; on any failure leave nothing held."""
        assert self._services.authenticator is not None
        login = await self._services.authenticator.authenticate(user, secret, mechanism=mechanism)
        mailbox = await login.backend.open(login.credentials)
        try:
            if self._services.throttle.too_soon(login.account):
                raise LoginTooSoon(login.account)
            lease = await self._services.locks.try_acquire(login.account)
            if lease is None:
                raise MailboxInUse(login.account)
            self._mailbox, self._lease = mailbox, lease
            self._lookahead = Lookahead(mailbox, log=self._log)
            listing = await mailbox.list(
                hidden_keyword=self._policy.disposition.hides_keyword,
                memory=self._services.listings.for_account(login.account),
            )
            listing = await self._services.sizes.correct(login.account, listing)
            uidls = await self._services.uidls.assign(login.account, listing)
            self._account = login.account
            self._snapshot = Snapshot(listing, uidls)
        except BaseException:
            await self.abort()
            await mailbox.close()
            raise
        return login.account

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
                    lines = tuple(f"{e.number} {e.size}" for e in snapshot.live())
                    return Ok("scan listing follows", lines)
                case c.List(number) if number is not None:
                    return Ok(f"{number} {snapshot.get(number).size}")
                case c.Uidl(None):
                    lines = tuple(f"{e.number} {e.uidl}" for e in snapshot.live())
                    return Ok("unique-id listing follows", lines)
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
        try:
            entry = self._require_snapshot().get(command.msg)
        except NoSuchMessage as missing:
            self._out.write(self.engine.send(Err(str(missing))))
            return
        assert self._lookahead is not None
        lines = command.lines if isinstance(command, c.Top) else None
        octets = await send_message(
            self.engine, self._out, self._lookahead, entry, lines, self._log
        )
        if octets is None or lines is not None:
            return
        self._retrieved.add(entry.message.identity)
        in_order = self._last_retr in (None, entry.number - 1)  # not a repeated or random RETR
        self._last_retr = entry.number
        with contextlib.suppress(NoSuchMessage):
            following = self._require_snapshot().get(entry.number + 1)
            if in_order:  # the client reads in order: prepare the next
                self._lookahead.start(following.message.identity, following.size)
        if octets != entry.size:
            # Later sessions list the size sent now (conformance I-8): content is immutable.
            self._log.warning(
                "message %d: listed %d, sent %d octets", entry.number, entry.size, octets
            )
            await self._services.sizes.record(self._account, entry.message.identity, octets)

    async def _quit(self) -> Reply:
        """RFC 1939 section 6: QUIT in TRANSACTION is the only way into UPDATE."""
        if self._snapshot is None or self._mailbox is None:
            return Ok("bye")
        try:
            await self._settle()
            failed = await self._update(self._mailbox, self._snapshot)
        finally:
            await self.abort()
        if failed:
            return Err("some deleted messages not removed", Code.SYS_TEMP)
        return Ok("bye")

    async def _update(self, mailbox: Mailbox, snapshot: Snapshot) -> int:
        """Apply the disposition to exactly the DELE'd messages; returns how many failed."""
        deleted = snapshot.deleted_identities()
        if deleted:
            try:
                result = await mailbox.dispose(deleted, self._policy.disposition)
            except BridgeError as error:
                self._log.warning("UPDATE failed: %r", error)
                return len(deleted)
            if result.failed:
                self._log.warning("UPDATE: %d not disposed: %s", len(result.failed), result.detail)
                return len(result.failed)
            self._log.info("UPDATE: %d disposed", len(deleted))
        await self._mark_retrieved_seen(mailbox, set(deleted))
        return 0

    async def _mark_retrieved_seen(self, mailbox: Mailbox, deleted: set[str]) -> None:
        """The optional "RETR sets \\Seen" policy, applied at UPDATE (conformance I-2)."""
        seen = self._retrieved - deleted
        if not (self._policy.mark_seen_on_retr and seen):
            return
        try:
            result = await mailbox.dispose(sorted(seen), SEEN)
            if result.failed:
                self._log.warning("marking retrieved messages seen: %s", result.detail)
        except BridgeError as error:
            self._log.warning("marking retrieved messages seen failed: %r", error)

    async def _settle(self) -> None:
        """Let a RETR answer in preparation finish: the mailbox serves one call at a time."""
        lookahead, self._lookahead = self._lookahead, None
        if lookahead is not None:
            await lookahead.settle()

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
                await self._close(mailbox)

    async def _close(self, mailbox: Mailbox) -> None:
        """Close `mailbox` once a RETR answer in preparation is done with it."""
        try:
            await self._settle()
        finally:
            await mailbox.close()
