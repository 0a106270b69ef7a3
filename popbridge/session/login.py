"""The AUTHORIZATION state: USER/PASS, SASL exchanges, throttling, the maildrop lock.

A login goes: throttling may refuse it before anything reaches the upstream, and holds its
place in the failure count until it is answered; it waits for a login slot, where it is
checked again; the authenticator resolves who it is upstream; the backend opens the mailbox
(the upstream checks the credentials); LOGIN-DELAY and the maildrop lock are checked only
then, so a second session learns `[IN-USE]` only with correct credentials (RFC 2449
§8.1.2). What holds the mailbox afterwards is a `Held`, handed to the transaction; if the
transaction cannot start, the login releases what it took, closing the mailbox once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from popbridge.contract import Mailbox
from popbridge.errors import AuthFailed, BridgeError, Code, LoginTooSoon, MailboxInUse
from popbridge.pop3 import sasl
from popbridge.pop3.replies import Continue, Err, Ok, Reply
from popbridge.session.services import Services
from popbridge.session.throttle import Throttled
from popbridge.store.locks import Lease
from popbridge.telemetry import metrics
from popbridge.telemetry.upstream import timed_open

LOGOUT_DEADLINE: Final = 10.0  # seconds an upstream LOGOUT may take before it is abandoned
PLAINTEXT_REFUSED: Final = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections"


@dataclass(frozen=True, slots=True)
class Held:
    """An opened mailbox, its maildrop lock, and the account both are keyed on."""

    mailbox: Mailbox
    lease: Lease
    account: str


Enter = Callable[[Held], Awaitable[tuple[int, int | None]]]
"""Starts the transaction on what a login holds; returns STAT's (count, octets), octets None
while some sizes are not yet exact."""


class Login:
    """One connection's logins: counts its failures and keeps a SASL exchange's state."""

    def __init__(
        self, services: Services, mechanisms: tuple[str, ...], *,
        log: logging.LoggerAdapter[logging.Logger], address: str,
    ) -> None:  # fmt: skip
        self._services = services
        self._mechanisms = mechanisms
        self._log = log
        self._address = address
        self._sasl: sasl.Mechanism | None = None
        self._refusal: Err | None = None  # an RFC 7628 error waiting for the client's reply
        self.failures = 0
        self.user: str | None = None  # who logged in, for the status page

    def exchange_ended(self) -> None:
        """A refused line ends any SASL exchange (RFC 5034 §4)."""
        self._sasl, self._refusal = None, None

    async def auth(self, name: str, initial: str | None, enter: Enter) -> Reply:
        """AUTH with a mechanism (RFC 5034 §4)."""
        mechanism = sasl.mechanism(name) if name in self._mechanisms else None
        if mechanism is None:
            return Err("unsupported authentication mechanism")
        try:
            response = None if initial is None else sasl.decode(initial, initial=True)
            step = mechanism.start(response)
        except sasl.SaslFailed as failed:
            return Err(str(failed))
        return await self._sasl_step(mechanism, step, enter)

    async def sasl_response(self, data: str, enter: Enter) -> Reply:
        """A line sent in answer to a `+ ` challenge."""
        mechanism, self._sasl = self._sasl, None
        refusal, self._refusal = self._refusal, None
        if refusal is not None:  # RFC 7628 §3.2.3: the client's reply to the error
            return refusal
        if data == "*" or mechanism is None:
            return Err("authentication cancelled")  # RFC 5034 §4
        try:
            step = mechanism.step(sasl.decode(data))
        except sasl.SaslFailed as failed:
            return Err(str(failed))
        return await self._sasl_step(mechanism, step, enter)

    async def _sasl_step(self, mechanism: sasl.Mechanism, step: sasl.Step, enter: Enter) -> Reply:
        if isinstance(step, sasl.Challenge):
            self._sasl = mechanism
            return Continue(sasl.encode(step.data))
        reply = await self.login(step.user, step.secret, enter, step.mechanism)
        challenge = mechanism.failure_challenge()
        if isinstance(reply, Err) and reply.code is Code.AUTH and challenge is not None:
            # RFC 7628 §3.2.2 / XOAUTH2: the error is a challenge, then -ERR
            self._refusal = reply
            return Continue(sasl.encode(challenge))
        return reply

    async def login(
        self, user: str, secret: str, enter: Enter, mechanism: str = "password"
    ) -> Reply:
        """PASS or a finished SASL exchange: authenticate, lock, enter the transaction."""
        try:  # the attempt counts as a failure from here until it is settled
            async with self._services.throttle.attempt(self._address, user) as attempt:
                async with self._services.logins.slot():
                    await attempt.recheck()
                    account, (count, octets) = await self._open(user, secret, mechanism, enter)
                attempt.succeeded(account)
        except Throttled as throttled:
            self.failures += 1
            metrics.login_refused(mechanism, throttled.refusal.code)
            self._log.info("login of %r refused by throttling: %s", user, throttled)
            return Err(throttled.refusal.text, throttled.refusal.code)
        except AuthFailed as error:
            self.failures += 1
            metrics.login(mechanism, "failed")
            self._log.info("login failed for %r: %s", user, error)
            return Err(AuthFailed.wire_text, Code.AUTH)
        except BridgeError as error:
            metrics.login_error(mechanism, error)
            self._log.warning("login of %r not completed: %r", user, error)
            return Err(error.wire_text, error.code)
        self.user = user
        metrics.login(mechanism, "ok")
        self._log.info("%r logged in, %d messages", user, count)
        if octets is None:
            return Ok(f"maildrop has {count} messages")
        return Ok(f"maildrop has {count} messages ({octets} octets)")

    async def _open(
        self, user: str, secret: str, mechanism: str, enter: Enter
    ) -> tuple[str, tuple[int, int | None]]:
        """Authenticate, lock, enter; on any failure leave nothing held."""
        assert self._services.authenticator is not None
        login = await self._services.authenticator.authenticate(user, secret, mechanism=mechanism)
        credentials = replace(login.credentials, client_address=self._address)
        mailbox = await timed_open(login.backend, credentials)
        lease: Lease | None = None
        try:
            if self._services.throttle.too_soon(login.account):
                raise LoginTooSoon(login.account)
            lease = await self._services.locks.try_acquire(login.lock_key)
            if lease is None:
                raise MailboxInUse(login.account)
            return login.account, await enter(Held(mailbox, lease, login.account))
        except BaseException:
            try:
                if lease is not None:
                    await lease.release()
            finally:
                # the only close: `enter` failed, nothing else owns it. Under our own
                # deadline, and a LOGOUT that overruns it must not hide why the login failed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(mailbox.close(), LOGOUT_DEADLINE)
            raise
