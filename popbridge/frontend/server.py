"""The asyncio POP3 server: listeners, one task per connection, TLS, limits, shutdown.

Each accepted connection gets an engine, a session and a task that answers commands in
order (pipelining, RFC 2449 section 6.6) with backpressure both ways. Implicit-TLS
listeners handshake before the greeting (RFC 8314); plain listeners with a certificate
upgrade on STLS (RFC 2595 section 4), with the current certificate of that listener, so a
reloaded certificate serves new connections while old ones keep theirs. The idle timer
(RFC 1939 section 3) is reset by complete commands only, so a trickle of bytes cannot keep
a session alive. Every way out except QUIT goes through `Session.abort`, which applies no
deletions. Shutdown stops listening, lets sessions already in UPDATE finish within a grace
period, and cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import ssl
from collections.abc import MutableMapping
from typing import Any

from popbridge.config import Config, ListenerConfig
from popbridge.frontend.connection import BufferedOutput, Pop3Protocol
from popbridge.frontend.tls import CertificateSet
from popbridge.pop3.engine import NeedData, Pop3Engine, State
from popbridge.session.session import Services, Session, SessionClosing, SessionPolicy

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 10.0


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the session id and the peer."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra['session']} {extra['peer']}] {msg}", kwargs


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; the connection is closed, never downgraded."""


class Pop3Server:
    """Serves every configured listener until `stop` is awaited."""

    def __init__(self, config: Config, services: Services) -> None:
        self._config = config
        self._services = services
        self._servers: list[asyncio.Server] = []
        self._certificates: list[CertificateSet] = []
        self._connections: dict[asyncio.Task[None], Pop3Engine] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(2)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listening socket, in listener order."""
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._config.listeners:
            certificates = CertificateSet(listener.tls) if listener.tls is not None else None
            if certificates is not None:
                self._certificates.append(certificates)
            factory = functools.partial(self._protocol, listener, certificates)
            # asyncio's default backlog is 100: a burst of devices connecting at once
            # (a shift starting, a cron minute) overflows it, and each dropped SYN costs
            # the client a 1 s, then 3 s, retransmission before it is even greeted.
            server = await loop.create_server(
                factory, listener.host, listener.port, backlog=self._config.server.listen_backlog
            )
            self._servers.append(server)
            log.info("listening: %s", listener.describe())
        if self._certificates and self._config.server.certificate_check_interval > 0:
            self._watcher = asyncio.create_task(self._watch_certificates())

    def reload_certificates(self) -> None:
        """SIGHUP: rebuild every listener's TLS context from its files."""
        for certificates in self._certificates:
            certificates.reload(force=True)

    async def _watch_certificates(self) -> None:
        """Reload when the files change (ACME renewals, Kubernetes secret updates)."""
        while True:
            await asyncio.sleep(self._config.server.certificate_check_interval)
            for certificates in self._certificates:
                certificates.reload()

    async def stop(self) -> None:
        """Stop listening; finish sessions in UPDATE, cancel the others (no deletions)."""
        if self._watcher is not None:
            self._watcher.cancel()
        for server in self._servers:
            server.close()
        updating = [t for t, engine in self._connections.items() if engine.state is State.UPDATE]
        for task in self._connections:
            if task not in updating:
                task.cancel()
        if updating:
            await asyncio.wait(updating, timeout=self._config.server.shutdown_grace)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def _protocol(self, listener: ListenerConfig, certs: CertificateSet | None) -> Pop3Protocol:
        protocol = Pop3Protocol(Pop3Engine())
        task = asyncio.create_task(self._connection(protocol, listener, certs))
        self._connections[task] = protocol.engine
        task.add_done_callback(self._connections.pop)
        return protocol

    async def _connection(
        self, protocol: Pop3Protocol, listener: ListenerConfig, certs: CertificateSet | None
    ) -> None:
        await protocol.connected
        assert protocol.transport is not None
        peer = protocol.transport.get_extra_info("peername")
        address = _address(peer)
        slog = SessionLog(
            log, {"session": f"{self._prefix}-{next(self._ids)}", "peer": _peer(peer)}
        )
        refusal = self._admission(address)
        if refusal is not None:
            slog.info("refused: %s", refusal)
            protocol.transport.write(b"-ERR [SYS/TEMP] " + refusal.encode() + b"\r\n")
            protocol.transport.close()
            return
        try:
            await self._serve(protocol, listener, certs, slog, address)
        except asyncio.CancelledError:
            pass  # shutdown: the session already cleaned up and applied nothing
        finally:
            self._services.throttle.disconnect(address)

    def _admission(self, address: str) -> str | None:
        if len(self._connections) > self._config.server.max_connections:
            return "too many connections, try again later"
        if not self._services.throttle.connect(address):
            return "too many connections from your address, try again later"
        return None

    async def _serve(
        self, protocol: Pop3Protocol, listener: ListenerConfig, certs: CertificateSet | None,
        slog: SessionLog, address: str,
    ) -> None:  # fmt: skip
        local = protocol.transport.get_extra_info("sockname") if protocol.transport else None
        slog.info("connected to %s", _peer(local))
        out = BufferedOutput(protocol, write_timeout=self._config.server.idle_timeout)
        implicit = listener.mode == "implicit"
        session = Session(
            protocol.engine, out, self._services, self._policy(listener),
            secure=implicit, log=slog, address=address,
        )  # fmt: skip
        try:
            if implicit:
                await self._handshake(protocol, listener, certs, slog)
            out.write(protocol.engine.greeting())
            await self._command_loop(protocol, out, session, listener, certs, slog)
        except SessionClosing:
            slog.info("closing")
        except TimeoutError:
            slog.info("idle timeout, closing without UPDATE")
        except HandshakeFailed as error:
            slog.info("TLS handshake failed: %s", error)
        except (ConnectionError, ssl.SSLError) as error:
            slog.info("connection lost: %s", error.__class__.__name__)
        except asyncio.CancelledError:
            slog.info("server stopping, closing without UPDATE")
            raise
        except Exception:
            slog.exception("session failed, closing without UPDATE")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(out.flush(), CLOSE_TIMEOUT)
            await _shielded_abort(session)
            _close(protocol)
            slog.info("disconnected")

    async def _command_loop(
        self, protocol: Pop3Protocol, out: BufferedOutput, session: Session,
        listener: ListenerConfig, certs: CertificateSet | None, slog: SessionLog,
    ) -> None:  # fmt: skip
        engine = protocol.engine
        idle_timeout = self._config.server.idle_timeout
        clock = asyncio.get_running_loop().time
        last_command = clock()
        while True:
            event = engine.next_event()
            if not isinstance(event, NeedData):
                last_command = clock()  # RFC 1939 section 3: any command resets it
                await session.handle(event)
                await out.drain()
                continue
            await out.flush()
            if engine.tls_pending:  # +OK to STLS is out: handshake right after its CRLF
                await self._handshake(protocol, listener, certs, slog)
                session.tls_started()
                continue
            if protocol.eof or protocol.lost:
                return  # a command without its CRLF is never executed (conformance P-4.2)
            protocol.resume_reading()
            await protocol.wait_readable(last_command + idle_timeout)

    async def _handshake(
        self, protocol: Pop3Protocol, listener: ListenerConfig, certs: CertificateSet | None,
        slog: SessionLog,
    ) -> None:  # fmt: skip
        assert certs is not None
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        # No await between this and start_tls pausing the plaintext transport: nothing
        # sent in clear after STLS can reach the engine (RFC 2595 section 4).
        protocol.engine.discard_plaintext()
        try:
            transport = await loop.start_tls(
                protocol.transport, protocol, certs.context, server_side=True,
                ssl_handshake_timeout=listener.handshake_timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            raise HandshakeFailed(error.__class__.__name__) from error
        if transport is None:
            raise HandshakeFailed("connection closed during handshake")
        protocol.transport = transport
        tls = transport.get_extra_info("ssl_object")
        slog.info("TLS established: %s %s", tls.version(), tls.cipher()[0] if tls else "")

    def _policy(self, listener: ListenerConfig) -> SessionPolicy:
        maildrop = self._config.maildrop
        offered = self._services.sasl_mechanisms
        mechanisms = tuple(m for m in listener.sasl_mechanisms or offered if m in offered)
        return SessionPolicy(
            plaintext_auth=listener.plaintext_auth,
            starttls=listener.mode == "plain" and listener.tls is not None,
            disposition=maildrop.disposition,
            mark_seen_on_retr=maildrop.mark_seen_on_retr,
            max_auth_failures=self._config.server.max_auth_failures,
            sasl_mechanisms=mechanisms,
        )


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
