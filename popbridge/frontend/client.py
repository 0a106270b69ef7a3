"""One client connection's life: handshake, greeting, the command loop, deadlines, cleanup.

A `ClientConnection` is made per accepted socket by the server. It owns the connection's
logging context (session id and peer on every line), its TLS handshakes (implicit TLS
before the greeting, RFC 8314 §3.3; STLS after `+OK`, RFC 2595 §4, with the listener's
current certificate), and the loop that answers commands in order (pipelining, RFC 2449
§6.6) with backpressure both ways. The idle timer (RFC 1939 §3) is reset by complete
commands only, so a trickle of bytes cannot keep a session alive; a connection not logged
in within `login_timeout` of its connect is closed whatever it sends, so silent or chatting
sockets cannot hold every slot. Every way out except QUIT goes through `Session.abort`,
which applies no deletions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import MutableMapping
from typing import Any, Final

from popbridge.config import LOGIN_TIMEOUT, ListenerConfig
from popbridge.errors import Code
from popbridge.frontend.connection import BufferedOutput, Pop3Protocol
from popbridge.frontend.tls import CertificateSet
from popbridge.pop3.engine import NeedData, State
from popbridge.pop3.replies import Err, encode
from popbridge.session import Services, Session, SessionClosing, SessionPolicy

log = logging.getLogger(__name__)
CLOSE_TIMEOUT: Final = 10.0


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the session id and the peer."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = extra  # the session and peer fields of a JSON log line
        return f"[{extra['session']} {extra['peer']}] {msg}", kwargs


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; the connection is closed, never downgraded."""


class ClientConnection:
    """Serves one accepted connection from greeting to close."""

    def __init__(
        self, protocol: Pop3Protocol, listener: ListenerConfig,
        certificates: CertificateSet | None, *, session_id: str, idle_timeout: float,
        peer: tuple[str, int] | None = None, login_timeout: float = LOGIN_TIMEOUT,
    ) -> None:  # fmt: skip
        """`peer`: the client as a PROXY header named it; default: the socket's peer."""
        assert protocol.transport is not None
        self.protocol = protocol
        self._listener = listener
        self._certificates = certificates
        self._idle_timeout = idle_timeout
        self._login_by = asyncio.get_running_loop().time() + login_timeout
        peer = peer or protocol.transport.get_extra_info("peername")
        self.address = _address(peer)
        self.peer = _peer(peer)
        self.session: Session | None = None  # once serving: what the status page asks
        self.log = SessionLog(log, {"session": session_id, "peer": _peer(peer)})
        self.out = BufferedOutput(protocol, write_timeout=idle_timeout)

    def refuse(self, reason: str) -> None:
        """Answer a connection the server will not serve (RFC 3206 §4), then close it."""
        self.log.info("refused: %s", reason)
        assert self.protocol.transport is not None
        self.protocol.transport.write(encode(Err(reason, Code.SYS_TEMP)))
        _close(self.protocol)  # asyncio sends what was written before closing

    async def serve(self, services: Services, policy: SessionPolicy) -> None:
        """Greet, answer commands until the session ends, then release everything."""
        transport = self.protocol.transport
        local = transport.get_extra_info("sockname") if transport else None
        self.log.info("connected to %s", _peer(local))
        implicit = self._listener.mode == "implicit"
        session = Session(
            self.protocol.engine, self.out, services, policy,
            secure=implicit, log=self.log, address=self.address,
        )  # fmt: skip
        self.session = session
        try:
            await self._run(session, implicit)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.out.flush(), CLOSE_TIMEOUT)
            _close(self.protocol)  # the client has its last answer: the upstream can wait
            await _shielded_abort(session)
            self.log.info("disconnected")

    async def _run(self, session: Session, implicit: bool) -> None:
        """The session with every way it can end logged; only QUIT applies anything."""
        try:
            if implicit:
                await self._handshake()
            self.out.write(self.protocol.engine.greeting())
            await self._command_loop(session)
        except SessionClosing:
            self.log.info("closing")
        except TimeoutError:
            if self.protocol.engine.state is State.AUTHORIZATION:
                self.log.info("no login within the login timeout, closing")
            else:
                self.log.info("idle timeout, closing without UPDATE")
        except HandshakeFailed as error:
            self.log.info("TLS handshake failed: %s", error)
        except (ConnectionError, ssl.SSLError) as error:
            self.log.info("connection lost: %s", error.__class__.__name__)
        except asyncio.CancelledError:
            self.log.info("server stopping, closing without UPDATE")
            raise
        except Exception:
            self.log.exception("session failed, closing without UPDATE")

    async def _command_loop(self, session: Session) -> None:
        protocol, out = self.protocol, self.out
        engine = protocol.engine
        clock = asyncio.get_running_loop().time
        last_command = clock()
        while True:
            if engine.state is State.AUTHORIZATION and clock() >= self._login_by:
                raise TimeoutError  # a client that chats but never logs in goes too
            event = engine.next_event()
            if not isinstance(event, NeedData):
                last_command = clock()  # RFC 1939 §3: any command resets it
                await session.handle(event)
                await out.drain()
                continue
            await out.flush()
            if engine.tls_pending:  # +OK to STLS is out: handshake right after its CRLF
                await self._handshake()
                session.tls_started()
                continue
            if protocol.eof or protocol.lost:
                return  # a command without its CRLF is never executed (RFC 1939 §3)
            protocol.resume_reading()
            deadline = last_command + self._idle_timeout
            if engine.state is State.AUTHORIZATION:
                deadline = min(deadline, self._login_by)
            await protocol.wait_readable(deadline)

    async def _handshake(self) -> None:
        protocol = self.protocol
        assert self._certificates is not None
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        # No await between this and start_tls pausing the plaintext transport: nothing
        # sent in clear after STLS can reach the engine (RFC 2595 §4).
        protocol.engine.discard_plaintext()
        try:
            transport = await loop.start_tls(
                protocol.transport, protocol, self._certificates.context, server_side=True,
                ssl_handshake_timeout=self._listener.handshake_timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            raise HandshakeFailed(error.__class__.__name__) from error
        if transport is None:
            raise HandshakeFailed("connection closed during handshake")
        protocol.tls_started(transport)
        tls = transport.get_extra_info("ssl_object")
        self.log.info("TLS established: %s %s", tls.version(), tls.cipher()[0] if tls else "")


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


async def _shielded_abort(session: Session) -> None:
    """Release lock and mailbox even while being cancelled; bounded by a deadline."""
    task = asyncio.ensure_future(session.abort())
    try:
        await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
    except (asyncio.CancelledError, TimeoutError):
        await asyncio.wait([task], timeout=CLOSE_TIMEOUT)
    except Exception:  # a failing upstream logout must not mask why the session ended
        log.debug("abort failed", exc_info=True)


def _close(protocol: Pop3Protocol) -> None:
    if protocol.transport is not None and not protocol.transport.is_closing():
        protocol.transport.close()
