"""One upstream IMAP connection: deadlines, TLS, greeting and login.

This module owns the TCP/TLS connection (implicit TLS, STARTTLS via `loop.start_tls`,
TCP_NODELAY), the greeting, login, and `Connection.run`, the single helper every upstream
command goes through: it applies our own deadline (aioimaplib keeps no timers for most
commands), turns the tagged NO/BAD that aioimaplib returns instead of raising into our
errors, and marks the connection dead on timeout, loss or cancellation so it is never
reused; a reply the protocol refused (out of protocol, or over `max_literal_size`) is a
BackendFailure. A refused login is logged with every form of the secret cut out of the
server's text, which a hostile server may fill with what it was sent. It also works around
aioimaplib's missing STARTTLS and its unquoted LOGIN user name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from backends.imap import logins, resumption, wire
from backends.imap.config import ImapSettings
from backends.imap.protocol import ImapProtocol, LibraryError, Reply
from popbridge.contract import Credentials
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    BridgeError,
)
from popbridge.upstream.tlsreads import ReadSizing

logger = logging.getLogger(__name__)

# TLS read size while no FETCH is in flight: replies to LOGIN, EXAMINE and SEARCH are short,
# and an idle session should not hold asyncio's 256 KiB read buffer per upstream connection.
IDLE_READ = 8 * 1024


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT/EXAMINE told us about the folder."""

    uidvalidity: int
    read_only: bool
    data: tuple[wire.Part, ...] = ()  # the untagged lines (EXISTS, UIDNEXT, HIGHESTMODSEQ)


class Connection:
    """A connected (and possibly logged-in) IMAP session with our deadlines on every command."""

    def __init__(
        self,
        settings: ImapSettings,
        protocol: ImapProtocol,
        transport: asyncio.Transport,
        lost: asyncio.Future[None],
    ) -> None:
        self.settings = settings
        self.capabilities: frozenset[str] = frozenset()
        self.selected: str | None = None  # the folder the last SELECT/EXAMINE opened
        self._protocol = protocol
        self._transport = transport
        self._lost = lost
        self._dead: str | None = None
        self._reads = ReadSizing(transport, IDLE_READ)

    @property
    def peer(self) -> str:
        return self.settings.peer

    @property
    def usable(self) -> bool:
        """False once dead (a timeout, a loss, a cancellation) or closed by the server."""
        return self._dead is None and not self._lost.done()

    @property
    def commands_sent(self) -> int:
        """Commands written so far: lets a caller wait until one it started is on the wire."""
        return self._protocol.commands_sent

    @property
    def transport(self) -> asyncio.Transport:
        """The current transport (the TLS one after STARTTLS)."""
        return self._transport

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version, or None on a cleartext connection."""
        ssl_object = self._transport.get_extra_info("ssl_object")
        return ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None

    async def run(self, name: str, *args: str, uid: bool = False, check: bool = True) -> Reply:
        """Send one command and wait for its tagged reply, within `settings.timeout`.

        With `check`, NO and BAD become `BackendUnavailable` (`[UNAVAILABLE]`) or
        `BackendFailure`. A timeout, a lost connection or a cancellation marks the
        connection dead: aioimaplib still waits for the old reply, so it cannot be reused.
        """
        if self._dead is not None:
            raise BackendUnavailable(f"{self.peer}: connection unusable ({self._dead})")
        if self._lost.done():  # closed while idle (autologout, RFC 3501 5.4, or a restart)
            raise self._refused() or self._kill(f"connection closed by the server before {name}")
        try:
            command = self._protocol.command(name, args, uid=uid)
        except ValueError:  # NUL/CR/LF in an argument: our validation let something through
            raise BackendFailure(f"{self.peer}: refused to send a {name} argument") from None
        task = self._submit(command, name)
        try:
            async with asyncio.timeout(self.settings.timeout):
                await asyncio.wait((task, self._lost), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            task.cancel()
            raise self._kill(f"no reply to {name} within {self.settings.timeout:g} s") from None
        except asyncio.CancelledError:
            task.cancel()
            self._kill(f"cancelled during {name}")
            raise
        reply = await self._outcome(task, name)
        if check and not reply.ok:
            raise refusal(reply, f"{self.peer}: {name}")
        return reply

    def _submit(self, command: Any, name: str) -> asyncio.Future[Reply]:
        """Send `command`; a FETCH (a listing or bodies) reads in large pieces until it ends."""
        task = asyncio.ensure_future(self._protocol.submit(command))
        if name == "FETCH":
            self._reads.begin()
            task.add_done_callback(lambda _: self._reads.end())
        return task

    async def _outcome(self, task: asyncio.Future[Reply], name: str) -> Reply:
        if not task.done():
            # A reply followed at once by a close (LOGOUT, a BYE) completes the command in
            # the same loop turn as the loss: give the waiting task that turn.
            await asyncio.wait((task,), timeout=0.05)
        if not task.done() or task.cancelled():
            task.cancel()
            raise self._refused() or self._kill(f"connection lost during {name}")
        try:
            return task.result()
        except LibraryError as exc:  # e.g. "command illegal in state"
            raise self._kill(f"aioimaplib refused {name}: {exc}") from None

    def _kill(self, why: str) -> BackendUnavailable:
        """Mark dead, drop the transport, and return the error to raise."""
        if self._dead is None:
            self._dead = why
            logger.warning("%s: discarding IMAP connection: %s", self.peer, why)
        self._transport.abort()
        return BackendUnavailable(f"{self.peer}: {why}")

    def _refused(self) -> BackendFailure | None:
        """The error for a reply the protocol refused (it logged and dropped it), if any."""
        why = self._protocol.failure
        if why is None:
            return None
        self._dead = self._dead or why
        return BackendFailure(f"{self.peer}: {why}")

    def abort(self) -> None:
        """Drop the connection without a word to the server."""
        self._dead = self._dead or "closed"
        self._transport.abort()

    async def logout(self) -> None:
        """LOGOUT (RFC 3501 6.1.3: closes without expunging), then drop; never raises."""
        if self._dead is None:
            with contextlib.suppress(BridgeError):
                await self.run("LOGOUT", check=False)
        self.abort()

    async def refresh_capabilities(self, reply: Reply | None = None) -> None:
        """Take capabilities from `reply` if it carries them, else ask with CAPABILITY."""
        found = wire.capabilities(reply.data, reply.text, bare=False) if reply else None
        if found is None:
            asked = await self.run("CAPABILITY")
            found = wire.capabilities(asked.data, b"", bare=True) or frozenset()
        self.capabilities = found

    async def starttls(self) -> None:
        """Upgrade with STARTTLS (RFC 3501 6.2.1) and re-read the capabilities it voids."""
        if "STARTTLS" not in self.capabilities:
            raise BackendFailure(f"{self.peer}: tls = starttls but the server offers no STARTTLS")
        await self.run("STARTTLS")
        if self._protocol.incomplete_line:  # bytes after the OK would be read as if under TLS
            raise self._kill("data after the STARTTLS reply (injection attempt?)")
        loop = asyncio.get_running_loop()
        context = _resuming(self.settings.tls_context)
        if context is None:
            raise BackendFailure(f"{self.peer}: STARTTLS without a TLS context")
        with _connect_errors(self.peer):
            async with asyncio.timeout(self.settings.connect_timeout):
                upgraded = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    context,
                    server_hostname=self.settings.host,
                )
        if upgraded is None:
            raise self._kill("STARTTLS handshake returned no transport")
        self._transport = self._protocol.transport = upgraded
        self._reads.rebind(upgraded)
        self.capabilities = frozenset()
        await self.refresh_capabilities()

    async def login(self, credentials: Credentials) -> None:
        """Authenticate (conformance I-1, I-21); raises AuthFailed on a refusal."""
        try:
            if credentials.mechanism == "oauth2":
                reply = await self._authenticate(
                    "XOAUTH2", logins.xoauth2(credentials.user, credentials.secret)
                )
            elif credentials.mechanism == "password":
                reply = await self._password(credentials)
            else:
                raise AuthFailed(f"unsupported mechanism {credentials.mechanism!r}")
        except (ValueError, UnicodeError) as exc:  # unencodable credentials: never sent
            raise AuthFailed(f"{self.peer}: credentials refused before sending: {exc}") from None
        if not reply.ok:
            said = logins.scrub(reply.describe(), logins.secret_forms(credentials.secret))
            logger.info("%s: login as %r refused: %s", self.peer, credentials.user, said)
            raise login_refusal(reply, self.peer, said)
        self._protocol.authenticated()
        await self.refresh_capabilities(reply)

    async def _password(self, credentials: Credentials) -> Reply:
        if self._mechanism() == "PLAIN":
            return await self._authenticate(
                "PLAIN", logins.sasl_plain(credentials.user, credentials.secret)
            )
        # aioimaplib's login() sends the user name unquoted: build LOGIN ourselves.
        user, password = logins.login_arguments(credentials.user, credentials.secret)
        return await self.run("LOGIN", user, password, check=False)

    def _mechanism(self) -> str:
        """PLAIN or LOGIN, by `settings.auth` and what the server offers (RFC 2595 3.2)."""
        caps, mode = self.capabilities, self.settings.auth
        plain = "AUTH=PLAIN" in caps
        if mode == "plain" or (mode == "auto" and plain and "SASL-IR" in caps):
            if not plain:
                raise BackendFailure(f"{self.peer}: auth = plain but no AUTH=PLAIN offered")
            return "PLAIN"
        if "LOGINDISABLED" not in caps:
            return "LOGIN"
        if mode == "auto" and plain:
            return "PLAIN"
        raise BackendFailure(f"{self.peer}: server sends LOGINDISABLED (auth = {mode})")

    async def _authenticate(self, mechanism: str, response: str) -> Reply:
        if f"AUTH={mechanism}" not in self.capabilities:
            raise BackendFailure(f"{self.peer}: server does not offer AUTH={mechanism}")
        if "SASL-IR" in self.capabilities:  # RFC 4959: initial response on the command line
            return await self.run("AUTHENTICATE", mechanism, response, check=False)
        self._protocol.sasl_response = response
        return await self.run("AUTHENTICATE", mechanism, check=False)

    async def select(
        self, *, read_only: bool, folder: str | None = None, condstore: bool = False
    ) -> Selected:
        """EXAMINE (read-only, RFC 3501 6.3.2) or SELECT `folder` (default: the configured one).

        `selected` then names the folder; a refused SELECT leaves none selected (6.3.1).
        `condstore` asks for HIGHESTMODSEQ (RFC 7162 3.1.8) where the server offers it.
        """
        name = self.settings.folder if folder is None else folder
        verb = "EXAMINE" if read_only else "SELECT"
        self.selected = None
        extra = ("(CONDSTORE)",) if condstore and "CONDSTORE" in self.capabilities else ()
        reply = await self.run(verb, wire.quote(wire.encode_mailbox(name)), *extra, check=False)
        if not reply.ok:
            raise refusal(reply, f"{self.peer}: {verb} {name!r}")
        self._protocol.selected()
        validity = wire.uidvalidity(reply.data)
        if validity is None:
            raise BackendFailure(f"{self.peer}: {verb} returned no UIDVALIDITY")
        if any(
            isinstance(line, bytes) and b"[UIDNOTSTICKY]" in line.upper() for line in reply.data
        ):
            logger.warning("%s: UIDNOTSTICKY: UIDs are not kept between sessions", self.peer)
        self.selected = name
        return Selected(validity, read_only=reply.code == "READ-ONLY", data=reply.data)


def refusal(reply: Reply, what: str) -> BridgeError:
    """The error for a NO/BAD outside login: `[UNAVAILABLE]` is temporary (RFC 5530 3)."""
    if reply.code in ("UNAVAILABLE", "INUSE"):
        return BackendUnavailable(f"{what}: {reply.describe()}")
    return BackendFailure(f"{what}: {reply.describe()}")


def login_refusal(reply: Reply, peer: str, said: str) -> BridgeError:
    """RFC 5530 codes on a refused login: credentials, temporary, or needs an operator.
    `said` is the reply as it may be logged (scrubbed of the secret)."""
    if reply.code == "UNAVAILABLE":
        return BackendUnavailable(f"{peer}: login: {said}")
    if reply.code == "PRIVACYREQUIRED":
        return BackendFailure(f"{peer}: login needs TLS upstream: {said}")
    return AuthFailed(f"{peer}: login: {said}")


@contextlib.contextmanager
def _connect_errors(peer: str) -> Iterator[None]:
    """Map connect and handshake errors: certificate problems need an operator (S-8)."""
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise BackendFailure(f"{peer}: TLS certificate not trusted: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise BackendFailure(f"{peer}: TLS handshake failed: {exc.reason}") from None
    except TimeoutError:
        raise BackendUnavailable(f"{peer}: no connection within the deadline") from None
    except OSError as exc:
        raise BackendUnavailable(f"{peer}: cannot connect: {exc.strerror or exc}") from None


async def connect(settings: ImapSettings) -> Connection:
    """Connect, read the greeting, upgrade with STARTTLS if configured, read capabilities."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[None] = loop.create_future()

    def on_lost(exc: Any) -> None:
        if not lost.done():
            lost.set_result(None)
        logger.debug("%s: IMAP connection closed (%s)", settings.peer, exc)

    protocol = ImapProtocol(
        loop, on_lost, peer=settings.peer, max_literal=settings.max_literal_size
    )
    implicit = _resuming(settings.tls_context) if settings.tls == "implicit" else None
    with _connect_errors(settings.peer):
        async with asyncio.timeout(settings.connect_timeout):
            transport, _ = await loop.create_connection(
                lambda: protocol,
                settings.host,
                settings.port,
                ssl=implicit,
                server_hostname=settings.host if implicit else None,
            )
            connection = Connection(settings, protocol, transport, lost)
            try:
                await asyncio.wait((protocol.greeting, lost), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                connection.abort()
                raise
    _no_delay(transport)
    try:
        await _greeted(connection, protocol)
        if settings.tls == "starttls":
            await connection.starttls()
    except BaseException:
        connection.abort()
        raise
    resumption.remember(connection.transport)  # the server has spoken since the handshake
    return connection


def _resuming(context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """`context`, offering the upstream's last TLS session (see `backends.imap.resumption`)."""
    if context is not None:
        resumption.enable(context)
    return context


async def _greeted(connection: Connection, protocol: ImapProtocol) -> None:
    if not protocol.greeting.done():
        refused = connection._refused()
        if refused is not None:
            raise refused
        raise BackendUnavailable(f"{connection.peer}: closed before the greeting")
    greeting = protocol.greeting.result()
    if not protocol.greeted_ok:
        # BYE: busy or refusing; PREAUTH: we could not check the user's credentials at all.
        logger.warning("%s: unusable greeting: %s", connection.peer, wire.printable(greeting))
        if greeting.upper().startswith(b"* BYE"):
            raise BackendUnavailable(f"{connection.peer}: greeting was BYE")
        raise BackendFailure(f"{connection.peer}: unexpected greeting")
    found = wire.capabilities((), greeting, bare=False)  # `* OK [CAPABILITY ...]` saves a trip
    if found is not None:
        connection.capabilities = found
    else:
        await connection.refresh_capabilities()


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Commands are small writes awaiting replies: Nagle would add delayed-ACK stalls."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
