"""A minimal raw POP3 client for the hardening tests: exact bytes, and a deadline on every read.

Real clients hide what the server sent when it misbehaves; these tests need the status lines
byte for byte, need to tell a clean close mid-body from a hang, and must never wait forever.
Every read is bounded by `deadline` seconds: a server that hangs fails the test with a
`TimeoutError` instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

DEADLINE = 15.0  # seconds any single read may take before the test calls it a hang
IN_USE = b"-ERR [IN-USE] maildrop already locked by another session"


@dataclass
class Pop3Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: bytes = b""
    deadline: float = DEADLINE
    log: list[bytes] = field(default_factory=list)

    @classmethod
    async def connect(
        cls, address: tuple[str, int], *, deadline: float = DEADLINE, source: str | None = None
    ) -> Pop3Client:
        local = (source, 0) if source else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address, local_addr=local), deadline
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(reader, writer, deadline=deadline)
        client.greeting = await client.line()
        return client

    async def line(self) -> bytes:
        """One line without its CRLF; b"" at EOF."""
        data = await asyncio.wait_for(self.reader.readline(), self.deadline)
        self.log.append(data)
        return data.removesuffix(b"\r\n")

    async def command(self, text: bytes) -> bytes:
        self.writer.write(text + b"\r\n")
        return await self.line()

    async def lines(self) -> list[bytes]:
        """The data lines of a multi-line reply, un-stuffed, without the "." line."""
        found: list[bytes] = []
        while (line := await self.line()) != b".":
            if not self.log[-1].endswith(b"\r\n"):
                raise EOFError(f"connection closed inside a multi-line reply: {found[-3:]!r}")
            found.append(line[1:] if line.startswith(b".") else line)
        return found

    async def login(self, user: bytes = b"alice", password: bytes = b"secret") -> bytes:
        """USER/PASS; the PASS reply."""
        assert await self.command(b"USER " + user) == b"+OK send PASS"
        return await self.command(b"PASS " + password)

    async def uidls(self) -> dict[int, bytes]:
        assert (await self.command(b"UIDL")).startswith(b"+OK")
        return {int(n): uidl for n, uidl in (line.split(b" ") for line in await self.lines())}

    async def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data = await asyncio.wait_for(self.reader.read(), self.deadline)
        self.log.append(data)
        return data

    def abort(self) -> None:
        """Drop the connection at once, unread replies and all (a client that vanishes)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), self.deadline)


async def logged_in(
    address: tuple[str, int], user: bytes = b"alice", password: bytes = b"secret"
) -> Pop3Client:
    """A session in TRANSACTION; waits out `[IN-USE]` while a dropped session is cleaned up."""
    for _ in range(100):
        client = await Pop3Client.connect(address)
        reply = await client.login(user, password)
        if reply.startswith(b"+OK maildrop has "):
            return client
        await client.close()
        assert reply == IN_USE, reply
        await asyncio.sleep(0.1)
    raise AssertionError("the maildrop lock was never released")
