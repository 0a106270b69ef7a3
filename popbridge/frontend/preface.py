"""The first bytes of a connection on a `proxy_protocol` listener: the PROXY header.

`ProxyPreface` is the asyncio protocol such a connection starts with. It refuses a peer
outside `proxy_trusted` at once, reads the header with reads sized by
`popbridge.frontend.proxy.remaining` (so not one byte after it is consumed: a TLS
ClientHello or a pipelined command stays in the socket), then hands the transport to the
POP3 protocol and reports the header. A malformed, oversized, late or missing header
closes the connection; nothing is ever sent to a peer that did not send a valid header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from popbridge.config import ListenerConfig
from popbridge.frontend import proxy

log = logging.getLogger(__name__)


class ProxyRefused(Exception):
    """Why a connection was closed before its PROXY header was accepted (safe to log)."""


class ProxyPreface(asyncio.BufferedProtocol):
    """Reads one PROXY header, then gives the transport to `inner`."""

    def __init__(
        self, inner: asyncio.BaseProtocol, trusted: Sequence[proxy.IPNetwork], timeout: float
    ) -> None:
        self._inner = inner
        self._trusted = trusted
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._data = b""
        self._accepted = False
        self._buffer = memoryview(bytearray(proxy.FIRST_READ))
        self.peer: object = None
        self.header: asyncio.Future[proxy.ProxyHeader] = asyncio.get_running_loop().create_future()

    @classmethod
    def for_listener(
        cls, inner: asyncio.BaseProtocol, listener: ListenerConfig
    ) -> ProxyPreface | None:
        """The preface a connection to `listener` starts with; None without PROXY protocol."""
        if not listener.proxy_protocol:
            return None
        return cls(inner, listener.proxy_trusted, listener.handshake_timeout)

    async def accepted(self, session_id: str) -> proxy.ProxyHeader | None:
        """The header once the POP3 protocol has the transport; None if the connection was
        refused (logged here). Cancelled (server stopping): the connection is closed."""
        try:
            header = await self.header
        except ProxyRefused as error:
            log.info("[%s %s] refused: %s", session_id, _peer(self.peer), error)
            return None
        except asyncio.CancelledError:
            self.fail("server stopping")
            raise
        client = _peer(header.source or self.peer)
        log.info("[%s %s] via proxy %s", session_id, client, _peer(self.peer))
        return header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = transport.get_extra_info("peername")
        address = self.peer[0] if isinstance(self.peer, tuple) else str(self.peer)
        if not proxy.is_trusted(address, self._trusted):
            self.fail("connection from outside proxy_trusted")
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self.fail, "no PROXY header within the deadline"
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._data += bytes(self._buffer[:nbytes])
        try:
            need = proxy.remaining(self._data)
            if need > 0:
                self._buffer = memoryview(bytearray(need))
                return
            header = proxy.parse(self._data)
        except proxy.ProxyError as error:
            self.fail(f"bad PROXY header: {error}")
            return
        self._finish(header)

    def _finish(self, header: proxy.ProxyHeader) -> None:
        if self.header.done():  # no one waits any more: the server is stopping
            self.fail("server stopping")
            return
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        assert transport is not None
        self._accepted = True
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)
        self.header.set_result(header)

    def eof_received(self) -> bool:
        self.fail("closed before a whole PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail("closed before a whole PROXY header")

    def fail(self, why: str) -> None:
        """Close the connection (nothing sent) and report why; the first reason wins."""
        if self._timer is not None:
            self._timer.cancel()
        if self._accepted:
            return  # the transport is the POP3 protocol's now
        if not self.header.done():  # (it is when the waiting task was cancelled)
            self.header.set_exception(ProxyRefused(why))
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
