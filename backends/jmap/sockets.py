"""The TCP sockets the JMAP backend's connection pool is built from: no Nagle, no delayed ACK.

This module owns one fix for one stall. Some JMAP servers (Cyrus 3.6 httpd over HTTP/1.1)
leave Nagle's algorithm on and write a response in 4 KiB pieces: every piece after the first
waits until the previous one is acknowledged, while our kernel delays that ACK by about 40 ms
because a lone small segment does not call for an immediate one (RFC 1122 section 4.2.3.2;
RFC 896). On a keep-alive connection every download then takes ~44 ms whatever its size.
TCP_NODELAY on our side cannot help (the held data is the server's); what helps is asking for
an immediate ACK. Linux clears TCP_QUICKACK again after it has been used, so it is re-armed
before every `recv`: asyncio's transports read through `sock.recv`/`recv_into`, so a socket
subclass handed to aiohttp's `socket_factory` hook sees every read, TLS or not. Setting the
option also sends an ACK that is already pending (Linux `tcp(7)`), one cheap syscall per read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

logger = logging.getLogger(__name__)

# socket.TCP_QUICKACK exists on Linux only; elsewhere the sockets just have TCP_NODELAY.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class QuickAckSocket(socket.socket):
    """A TCP socket that asks for an immediate ACK before every read."""

    def _rearm(self) -> None:
        if _QUICKACK is not None:
            # closed or not yet connected: the read itself will say why
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self._rearm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        self._rearm()
        return super().recv_into(buffer, nbytes, flags)


def quickack_socket(addr_info: AddrInfo) -> socket.socket:
    """aiohttp's `socket_factory`: a `QuickAckSocket` with TCP_NODELAY (our requests are
    single small writes awaiting a reply; aiohttp sets it too once connected)."""
    family, kind, proto, _, _ = addr_info
    sock = QuickAckSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        logger.debug("TCP_NODELAY not available on this socket")
    return sock
