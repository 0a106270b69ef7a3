"""Test doubles for the IMAP backend: a scripted IMAP server and a recording TCP proxy.

The scripted server (`FakeImap`) produces what a real Dovecot will not on demand: silence,
odd greetings, refusals with specific response codes, FETCH items in unusual order, bursts of
unsolicited data, servers without UIDPLUS or a trash folder. The proxy (`RecordingProxy`)
sits in front of the real Dovecot and keeps every byte the backend sent, so tests can assert
what went on the wire. Both bind to port 0 on 127.0.0.1 and record what they received.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

Handler = Callable[["FakeImap", str, str], bytes | None]
CAPABILITIES = "IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS MOVE SPECIAL-USE"


def reply(*lines: str) -> Handler:
    """A handler answering with `lines` (each gets CRLF); `{tag}` is the command's tag."""
    text = "".join(f"{line}\r\n" for line in lines)
    return lambda _server, tag, _args: text.replace("{tag}", tag).encode()


def never(_server: FakeImap, _tag: str, _args: str) -> None:
    """A handler that never answers."""
    return None


def _capability(server: FakeImap, tag: str, _args: str) -> bytes:
    return f"* CAPABILITY {server.capabilities}\r\n{tag} OK done\r\n".encode()


def _logged_in(server: FakeImap, tag: str, _args: str) -> bytes:
    return f"{tag} OK [CAPABILITY {server.capabilities}] Logged in\r\n".encode()


def _selected(mode: str) -> Handler:
    def handler(server: FakeImap, tag: str, _args: str) -> bytes:
        lines = f"* 3 EXISTS\r\n* OK [UIDVALIDITY {server.uidvalidity}] UIDs valid\r\n"
        return f"{lines}{tag} OK [{mode}] done\r\n".encode()

    return handler


DEFAULTS: dict[str, Handler] = {
    "CAPABILITY": _capability,
    "LOGIN": _logged_in,
    "AUTHENTICATE": _logged_in,
    "EXAMINE": _selected("READ-ONLY"),
    "SELECT": _selected("READ-WRITE"),
    "LOGOUT": reply("* BYE bye", "{tag} OK done"),
}


class FakeImap:
    """A scripted IMAP server: one handler per command verb (`UID FETCH` for UID commands)."""

    def __init__(
        self,
        *,
        capabilities: str = CAPABILITIES,
        greeting: str | None = None,
        replies: dict[str, Handler] | None = None,
        uidvalidity: int = 42,
    ) -> None:
        self.capabilities = capabilities
        self.uidvalidity = uidvalidity
        default = f"* OK [CAPABILITY {capabilities}] fake ready"
        self.greeting = (default if greeting is None else greeting).encode()
        self.replies = {**DEFAULTS, **(replies or {})}
        self.received: list[bytes] = []
        self.continuation: Callable[[bytes], bytes | None] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def verbs(self) -> list[str]:
        """The command verbs received, in order (`UID FETCH` for UID commands)."""
        return [self._verb(line)[1] for line in self.received if b" " in line]

    def drop_clients(self) -> None:
        """Close every client connection, as a server's autologout or restart would."""
        for writer in self._writers:
            writer.close()

    async def __aenter__(self) -> FakeImap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_clients()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            if self.greeting:  # an empty greeting: accept and stay silent
                writer.write(self.greeting + b"\r\n")
            while line := await reader.readline():
                self.received.append(line)
                answer = self._answer(line)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes) -> bytes | None:
        if self.continuation is not None:
            resume, self.continuation = self.continuation, None
            return resume(line)
        tag, verb, args = self._verb(line)
        handler = self.replies.get(verb)
        if handler is None:
            return f"{tag} BAD unknown command\r\n".encode()
        return handler(self, tag, args)

    @staticmethod
    def _verb(line: bytes) -> tuple[str, str, str]:
        tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
        verb, _, args = rest.partition(" ")
        if verb.upper() == "UID":
            sub, _, args = args.partition(" ")
            verb = f"UID {sub}"
        return tag, verb.upper(), args


_sources = itertools.count(1)


def loopback_source() -> str:
    """A loopback address (127.77.x.y) no other connection in this process uses."""
    n = next(_sources)
    return f"127.77.{n // 250}.{n % 250 + 1}"


class RecordingProxy:
    """A TCP proxy to `127.0.0.1:port` that keeps every byte the client sent.

    Its upstream connections come from their own loopback address: Dovecot delays logins
    from an address after a failed one (anvil's auth penalty, up to 15 s), and the test
    Dovecot is shared by the whole session.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.source = loopback_source()
        self.sent = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def lines(self) -> list[bytes]:
        return [line for line in bytes(self.sent).split(b"\r\n") if line]

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream, local_addr=(self.source, 0)
        )
        await asyncio.gather(
            self._pump(reader, up_writer, record=True),
            self._pump(up_reader, writer, record=False),
            return_exceptions=True,
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, record: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if record:
                    self.sent += data
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()
