"""The asyncio POP3 server: listeners, admission limits, certificates, shutdown.

The server binds every configured listener and, per accepted socket, admits it (the
process-wide connection cap, the per-address cap) and hands it to a `ClientConnection`
task, which does the rest. It watches the listeners' certificate files and reloads them,
so a renewed certificate serves new connections while old ones keep theirs. Shutdown
stops listening, lets sessions already in UPDATE finish within a grace period, and cancels
the rest, which apply nothing (RFC 1939 §6).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets

from popbridge.config import Config, ListenerConfig
from popbridge.frontend.client import ClientConnection
from popbridge.frontend.connection import Pop3Protocol
from popbridge.frontend.preface import ProxyPreface
from popbridge.frontend.tls import CertificateSet
from popbridge.pop3.engine import Pop3Engine, State
from popbridge.session import Services, SessionPolicy
from popbridge.telemetry.board import SessionBoard, SessionEntry
from popbridge.telemetry.engine import CountedEngine

log = logging.getLogger(__name__)


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
        self.board = SessionBoard()  # what the status page shows
        self.draining = False  # set by `drain`: readiness fails from then on

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

    async def drain(self, hurry: asyncio.Event | None = None) -> tuple[int, int]:
        """Graceful shutdown: stop accepting, let sessions end by QUIT within
        `shutdown_grace` (or until `hurry` is set), then `stop` (the rest close without
        UPDATE). Returns how many sessions ended by themselves and how many were cut."""
        self.draining = True
        for server in self._servers:
            server.close()
        open_now = list(self._connections)
        if open_now:  # cancelling a wait leaves the sessions it waited for running
            grace = asyncio.ensure_future(
                asyncio.wait(open_now, timeout=self._config.server.shutdown_grace)
            )
            waits = {grace} if hurry is None else {grace, asyncio.ensure_future(hurry.wait())}
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in pending:
                waiting.cancel()
        cut = sum(1 for task in open_now if not task.done())
        await self.stop()
        return len(open_now) - cut, cut

    def _protocol(
        self, listener: ListenerConfig, certs: CertificateSet | None
    ) -> asyncio.BaseProtocol:
        protocol = Pop3Protocol(CountedEngine())
        preface = ProxyPreface.for_listener(protocol, listener)  # None: no PROXY protocol
        task = asyncio.create_task(self._connection(protocol, listener, certs, preface))
        self._connections[task] = protocol.engine
        task.add_done_callback(self._connections.pop)
        return preface or protocol

    async def _connection(
        self, protocol: Pop3Protocol, listener: ListenerConfig, certs: CertificateSet | None,
        preface: ProxyPreface | None,
    ) -> None:  # fmt: skip
        sid = f"{self._prefix}-{next(self._ids)}"
        peer = None  # the socket's peer, unless a PROXY header names the client
        if preface is not None:
            header = await preface.accepted(sid)
            if header is None:
                return  # closed without a byte sent; the preface logged why
            peer = header.source
        await protocol.connected
        client = ClientConnection(
            protocol, listener, certs, session_id=sid,
            idle_timeout=self._config.server.idle_timeout, peer=peer,
            login_timeout=self._config.server.login_timeout,
        )  # fmt: skip
        entry = self.board.add(SessionEntry(sid, client.peer, listener.name or "pop3", client))
        refusal = self._admission(client.address)
        if refusal is not None:
            client.refuse(refusal)
            return
        try:
            await client.serve(self._services, self._policy(listener))
        except asyncio.CancelledError:
            pass  # shutdown: the session already cleaned up and applied nothing
        finally:
            self.board.remove(entry)
            self._services.throttle.disconnect(client.address)

    def _admission(self, address: str) -> str | None:
        if len(self._connections) > self._config.server.max_connections:
            return "too many connections, try again later"
        if not self._services.throttle.connect(address):
            return "too many connections from your address, try again later"
        return None

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
