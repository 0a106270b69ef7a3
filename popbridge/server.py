"""The asyncio POP3 server: listeners, one task per connection, limits and shutdown.

Each accepted connection gets an engine, a session and a loop that reads bytes, answers
commands in order, and flushes replies in batches (pipelining, RFC 2449 section 6.6) with
backpressure, so a client that sends without reading stops being read. The idle timer
(RFC 1939 section 3) is reset by complete commands only, so a trickle of bytes cannot
keep a session alive. Every way out of the loop except QUIT goes through `Session.abort`,
which applies no deletions. Shutdown stops listening, lets sessions already in UPDATE
finish within a grace period, and cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
from collections.abc import MutableMapping
from typing import Any

from popbridge.config import Config, ListenerConfig
from popbridge.pop3.engine import NeedData, Pop3Engine, State
from popbridge.session import Services, Session, SessionClosing, SessionPolicy

log = logging.getLogger(__name__)
READ_SIZE = 65536
FLUSH_THRESHOLD = 65536
CLOSE_TIMEOUT = 10.0


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the session id and the peer."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra['session']} {extra['peer']}] {msg}", kwargs


class BufferedOutput:
    """Collects reply bytes so pipelined answers leave in few writes, then drains."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if data:
            self._pending.append(data)
            self._size += len(data)

    async def drain(self) -> None:
        if self._size >= FLUSH_THRESHOLD:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            self._writer.write(b"".join(self._pending))
            self._pending.clear()
            self._size = 0
        await self._writer.drain()


class Pop3Server:
    """Serves every configured listener until `stop` is awaited."""

    def __init__(self, config: Config, services: Services) -> None:
        self._config = config
        self._services = services
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], Pop3Engine] = {}
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(2)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listening socket; port 0 resolves here."""
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    async def start(self) -> None:
        for listener in self._config.listeners:
            server = await asyncio.start_server(
                functools.partial(self._accept, listener=listener),
                listener.host,
                listener.port,
                limit=READ_SIZE,
            )
            self._servers.append(server)
        log.info("listening on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def stop(self) -> None:
        """Stop listening; finish sessions in UPDATE, cancel the others (no deletions)."""
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

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: ListenerConfig
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        engine = Pop3Engine()
        if len(self._connections) >= self._config.server.max_connections:
            writer.write(b"-ERR [SYS/TEMP] too many connections, try again later\r\n")
            await _close(writer)
            return
        self._connections[task] = engine
        try:
            await self._serve(reader, writer, listener, engine)
        except asyncio.CancelledError:
            # Shutdown cancelled this connection; it has cleaned up. Ending the task
            # normally keeps asyncio's stream callback from logging the cancellation.
            pass
        finally:
            del self._connections[task]

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: ListenerConfig,
        engine: Pop3Engine,
    ) -> None:
        peer = writer.get_extra_info("peername")
        session_log = SessionLog(
            log, {"session": f"{self._prefix}-{next(self._ids)}", "peer": _peer(peer)}
        )
        session_log.info("connected")
        out = BufferedOutput(writer)
        session = Session(
            engine, out, self._services, self._policy(listener), secure=False, log=session_log
        )
        try:
            out.write(engine.greeting())
            await self._command_loop(reader, out, engine, session)
        except SessionClosing:
            session_log.info("closing")
        except TimeoutError:
            session_log.info("idle timeout, closing without UPDATE")
        except asyncio.CancelledError:
            session_log.info("server stopping, closing without UPDATE")
            raise
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            session_log.info("connection lost: %s", error.__class__.__name__)
        except Exception:
            session_log.exception("session failed, closing without UPDATE")
        finally:
            with contextlib.suppress(Exception):
                await out.flush()
            await _shielded_abort(session)
            await _close(writer)
            session_log.info("disconnected")

    async def _command_loop(
        self,
        reader: asyncio.StreamReader,
        out: BufferedOutput,
        engine: Pop3Engine,
        session: Session,
    ) -> None:
        idle_timeout = self._config.server.idle_timeout
        last_command = time.monotonic()
        while True:
            event = engine.next_event()
            if isinstance(event, NeedData):
                await out.flush()
                remaining = last_command + idle_timeout - time.monotonic()
                async with asyncio.timeout(max(remaining, 0)):
                    data = await reader.read(READ_SIZE)
                if not data:
                    engine.connection_closed()
                    return
                engine.receive(data)
                continue
            last_command = time.monotonic()  # RFC 1939 section 3: any command resets it
            await session.handle(event)
            await out.drain()

    def _policy(self, listener: ListenerConfig) -> SessionPolicy:
        server, maildrop = self._config.server, self._config.maildrop
        return SessionPolicy(
            plaintext_auth=listener.plaintext_auth,
            disposition=maildrop.disposition,
            mark_seen_on_retr=maildrop.mark_seen_on_retr,
            auth_failure_delay=server.auth_failure_delay,
            max_auth_failures=server.max_auth_failures,
        )


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
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


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
