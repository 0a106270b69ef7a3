"""Warm upstream connections: connected, TLS-verified and greeted, never logged in.

A login storm (devices polling on the same minute) pays, per login and before the upstream
sees any credentials, a TCP connect, a TLS handshake and the greeting, while the logins
behind it wait for a slot (`popbridge.session.logingate.LoginGate`). While logins overlap,
this module keeps up to `size` such connections ready, made in the background, so a login
starts at its credentials. Each connection is handed to one login and to no one else, and
it authenticates there with that login's own credentials: nothing authenticated is ever
kept or shared here, so a changed password or a revoked token counts at every login.

Connections are made only while logins overlap or the last one was served from here: a
single login now and then costs the upstream one connection, as without this module. One
unused for `LIFETIME` seconds is dropped (a quiet bridge holds none; servers drop idle
unauthenticated connections on their own, RFC 3501 section 5.4 leaves that to them), and one
the server closed meanwhile is never handed out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final

from backends.imap.config import ImapSettings
from backends.imap.connection import Connection

logger = logging.getLogger(__name__)

LIFETIME: Final = 3.0  # seconds a warm connection waits for a login before it is dropped

Connect = Callable[[ImapSettings], Awaitable[Connection]]


class WarmConnections:
    """Connections for the next logins; `size` 0 makes every login connect for itself."""

    def __init__(
        self, settings: ImapSettings, connect: Connect, *, size: int, lifetime: float = LIFETIME
    ) -> None:
        self._settings = settings
        self._connect = connect
        self._size = size
        self._lifetime = lifetime
        self._ready: collections.deque[tuple[Connection, asyncio.TimerHandle]] = collections.deque()
        self._warming: set[asyncio.Task[None]] = set()
        self._opening = 0  # logins between `opening` and their end
        self._served = False  # the last connection handed out was warm
        self._closed = False

    @property
    def ready(self) -> int:
        """Warm connections waiting for a login now."""
        return len(self._ready)

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Around a whole login: how many overlap says whether a storm is on."""
        self._opening += 1
        try:
            yield
        finally:
            self._opening -= 1

    async def connection(self) -> Connection:
        """A warm connection if one is ready and still open, else a new one."""
        found = self._take()
        self._served = found is not None
        if (self._opening > 1 or self._served) and not self._closed:
            self._warm_up()
        if found is not None:
            return found
        return await self._connect(self._settings)

    def _take(self) -> Connection | None:
        while self._ready:
            connection, expiry = self._ready.popleft()
            expiry.cancel()
            if connection.usable:
                return connection
            connection.abort()  # closed by the server while it waited
        return None

    def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self._ready) + len(self._warming) < self._size:
            task = loop.create_task(self._make())
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _make(self) -> None:
        try:
            connection = await self._connect(self._settings)
        except Exception as error:  # a login that needs one connects and reports it itself
            logger.debug("%s: warm connection failed: %r", self._settings.peer, error)
            return
        if self._closed:
            connection.abort()
            return
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(self._lifetime, self._expire, connection)
        self._ready.append((connection, expiry))

    def _expire(self, connection: Connection) -> None:
        for index, (waiting, _) in enumerate(self._ready):
            if waiting is connection:
                del self._ready[index]
                break
        connection.abort()

    def close(self) -> None:
        """Drop every warm connection and stop making more."""
        self._closed = True
        for task in self._warming:
            task.cancel()
        while self._ready:
            connection, expiry = self._ready.popleft()
            expiry.cancel()
            connection.abort()
