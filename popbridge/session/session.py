"""One POP3 session: routes each command to the phase it belongs to.

The engine says *what* the client asked; the session decides the answer. Commands of the
AUTHORIZATION state go to `Login`, which on success hands the opened, locked mailbox to a
`Transaction`; QUIT after a transaction runs UPDATE (`apply_update`), the only step that
changes anything upstream (RFC 1939 §6). Any other end of the session, a dropped
connection, a timeout, a shutdown, goes through `abort`, which applies nothing.
"""

from __future__ import annotations

import logging

from popbridge.contract import expire_policy
from popbridge.errors import Code
from popbridge.pop3 import commands as c
from popbridge.pop3.engine import Pop3Engine, Rejected
from popbridge.pop3.replies import Continue, Err, Ok, Reply
from popbridge.session.login import PLAINTEXT_REFUSED, Held, Login
from popbridge.session.retrieval import Output, SessionClosing
from popbridge.session.services import Services, SessionPolicy
from popbridge.session.transaction import Transaction
from popbridge.session.update import apply_update
from popbridge.telemetry import metrics

__all__ = [
    "PLAINTEXT_REFUSED",
    "Output",
    "Services",
    "Session",
    "SessionClosing",
    "SessionPolicy",
]


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
        self._login = Login(services, policy.sasl_mechanisms, log=log, address=address)
        self.transaction: Transaction | None = None

    @property
    def user(self) -> str | None:
        """Who logged in (None before), for the status page."""
        return self._login.user

    @property
    def plaintext_allowed(self) -> bool:
        """RFC 2595 §2.3 / RFC 5034 §4: no cleartext passwords without TLS."""
        return self.secure or self._policy.plaintext_auth

    def tls_started(self) -> None:
        """STLS succeeded: the engine forgets what the client said before TLS (RFC 2595 §4)."""
        self.secure = True
        self.engine.tls_established()

    async def handle(self, event: c.Command | Rejected) -> None:
        """Answer one event; raises `SessionClosing` after the last reply."""
        if isinstance(event, Rejected):
            self._login.exchange_ended()
            self._out.write(self.engine.send(event.reply))
            if event.close:
                raise SessionClosing
            return
        if isinstance(event, c.Retr | c.Top):
            await self._require_transaction().send(event, self.engine, self._out)
            return
        reply = await self._answer(event)
        self._out.write(self.engine.send(reply))
        if isinstance(event, c.Quit):
            raise SessionClosing
        # after the final answer, not after an RFC 7628 error challenge that precedes it
        failures = self._login.failures
        if failures >= self._policy.max_auth_failures and not isinstance(reply, Continue):
            raise SessionClosing

    async def _answer(self, command: c.Command) -> Reply:
        match command:
            case c.Capa():
                return Ok("capability list follows", tuple(self.capabilities()))
            case c.Quit():
                return await self._quit()
            case c.Stls():
                return self._stls()
            case c.Stat() | c.List() | c.Uidl() | c.Dele() | c.Noop() | c.Rset():
                return await self._require_transaction().answer(command)
            case c.User() | c.Pass() | c.Auth() | c.SaslResponse():
                return await self._authorization(command)
        # APOP needs the backend's shared secret, which a bridge never has (RFC 1939 §7)
        return Err("command not supported")

    async def _authorization(self, command: c.User | c.Pass | c.Auth | c.SaslResponse) -> Reply:
        match command:
            case c.Pass(password, user):  # the engine passes PASS only after an accepted USER
                return await self._login.login(user, password, self._enter)
            case c.SaslResponse(data):
                return await self._login.sasl_response(data, self._enter)
            case c.Auth(None):
                return Ok("SASL mechanisms follow", self._offered_mechanisms())
        if not self.plaintext_allowed:
            return Err(PLAINTEXT_REFUSED, Code.AUTH)
        if isinstance(command, c.Auth) and command.mechanism is not None:
            return await self._login.auth(command.mechanism, command.initial_response, self._enter)
        return Ok("send PASS")  # USER; RFC 1939 §13: the same answer for every name

    async def _enter(self, held: Held) -> tuple[int, int | None]:
        transaction = await Transaction.enter(held, self._services, self._policy, self._log)
        self.transaction = transaction
        count, octets = transaction.snapshot.stat()
        # Sizes not yet exact are measured when STAT or LIST asks, not at every login.
        return count, octets if transaction.snapshot.exact() else None

    def capabilities(self) -> list[str]:
        """RFC 2449 §5; STLS only where it is permitted (RFC 2595 §4)."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.plaintext_allowed:
            caps.insert(1, "USER")
            if mechanisms := self._offered_mechanisms():
                caps.append("SASL " + " ".join(mechanisms))
        if self._stls_permitted():
            caps.append("STLS")
        if (delay := self._services.throttle.policy.login_delay) > 0:
            caps.append(f"LOGIN-DELAY {delay}")
        if (expire := expire_policy(self._services.backend)) is not None:
            caps.append(f"EXPIRE {expire}")
        caps.append(f"IMPLEMENTATION {self._policy.implementation}")
        return caps

    def _offered_mechanisms(self) -> tuple[str, ...]:
        return self._policy.sasl_mechanisms if self.plaintext_allowed else ()

    def _stls_permitted(self) -> bool:
        return self._policy.starttls and not self.secure and self.transaction is None

    def _stls(self) -> Reply:
        if self.secure:
            return Err("command not permitted when TLS active")  # RFC 2595 §4
        if not self._policy.starttls:
            return Err("TLS not available on this port")
        return Ok("Begin TLS negotiation now")

    def _require_transaction(self) -> Transaction:
        if self.transaction is None:  # the engine's state table makes this unreachable
            raise RuntimeError("transaction command without a maildrop")
        return self.transaction

    async def _quit(self) -> Reply:
        """RFC 1939 §6: QUIT in TRANSACTION is the only way into UPDATE.

        The mailbox is not closed here: `+OK` goes out and the connection closes first,
        and the upstream LOGOUT runs in `abort` afterwards, under its own deadline, so a
        slow upstream never holds a client that has its answer.
        """
        transaction = self.transaction
        if transaction is None or transaction.mailbox is None:
            return Ok("bye")
        try:
            await transaction.settle()
            failed = await apply_update(
                transaction.mailbox, transaction.snapshot, transaction.retrieved,
                self._policy, self._log,
            )  # fmt: skip
            metrics.update_done(len(transaction.snapshot.deleted_identities()), failed)
        except BaseException:
            await self.abort()
            raise
        # The lock is kept until the LOGOUT ends: some servers (GNU Mailutils imap4d) store
        # flag changes only when the IMAP session ends, so a POP3 session let in earlier
        # could still list what this one just deleted.
        if failed:
            return Err("some deleted messages not removed", Code.SYS_TEMP)
        return Ok("bye")

    async def abort(self) -> None:
        """End the session without UPDATE: release the lock and the mailbox, apply nothing."""
        transaction, self.transaction = self.transaction, None
        if transaction is not None:
            await transaction.close()
