"""POP3 clients for the benchmark: a lean blocking one, a lean asyncio one, and poplib.

The lean clients send each command in one write and read with large ``recv`` calls until the
reply is complete, which they decide by looking only at the end of what arrived (a one-line
reply ends in CRLF, a multi-line one in CRLF.CRLF: without pipelining nothing follows it).
There is no per-line Python loop, so their own cost stays small next to the server's; poplib
(one ``readline`` per line) is kept for comparison with the usual Python client. Every
retrieval is checked: the unstuffed sizes of all messages must add up to what STAT announced.
Given a client TLS context, every client speaks POP3S (TLS from the first byte, RFC 8314),
verifying the server's certificate for the host name 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import poplib
import socket
import ssl
from dataclasses import dataclass

HOST = "127.0.0.1"
RECV_SIZE = 1 << 20
TIMEOUT = 120.0
CONNECT = b"(connect)"  # the pseudo-verb under which AsyncClient records connect-to-greeting


class Pop3Error(Exception):
    """A ``-ERR`` reply or a malformed one where ``+OK`` was needed."""


def complete(buffer: bytes | bytearray, multi: bool) -> bool:
    """True once ``buffer`` holds a whole reply (only its last bytes are looked at)."""
    if multi and not buffer.startswith(b"-"):
        return buffer.endswith(b"\r\n.\r\n")
    return buffer.endswith(b"\r\n")


def checked(reply: bytes | bytearray, what: bytes) -> bytes:
    if not reply.startswith(b"+OK"):
        raise Pop3Error(f"{what.decode(errors='replace')}: {bytes(reply[:200])!r}")
    return bytes(reply)


def message_octets(reply: bytes) -> int:
    """Octets of the message in a RETR reply: after the status line, unstuffed, no terminator."""
    body = len(reply) - (reply.index(b"\r\n") + 2) - len(b".\r\n")
    # Every stuffed line follows a CRLF, the first one the status line's: one count finds all.
    return body - reply.count(b"\r\n..")


def stat_numbers(reply: bytes) -> tuple[int, int]:
    parts = reply.split()
    return int(parts[1]), int(parts[2])


def listing_count(reply: bytes) -> int:
    """Lines in a UIDL/LIST listing (status line and terminator excluded)."""
    return reply.count(b"\r\n") - 2


@dataclass
class Tally:
    """What one session retrieved, for the correctness checks."""

    messages: int = 0
    octets: int = 0
    expected_octets: int = 0
    expected_messages: int = 0

    @property
    def ok(self) -> bool:
        return (self.messages, self.octets) == (self.expected_messages, self.expected_octets)


class LeanClient:
    """Blocking POP3 client: one ``sendall`` per command, ``recv(1 MiB)`` until done."""

    def __init__(self, port: int, host: str = HOST, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        checked(self._read(False), b"greeting")

    def _read(self, multi: bool) -> bytes:
        buffer = bytearray()
        recv = self.sock.recv
        while not complete(buffer, multi):
            chunk = recv(RECV_SIZE)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        return bytes(buffer)

    def command(self, line: bytes, multi: bool = False) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return checked(self._read(multi), line.split()[0])

    def login(self, user: str, password: str) -> None:
        self.command(b"USER " + user.encode())
        self.command(b"PASS " + password.encode())

    def retrieve_all(self, tally: Tally) -> None:
        """STAT, UIDL, then RETR every message, counting what arrived."""
        count, octets = stat_numbers(self.command(b"STAT"))
        tally.expected_messages, tally.expected_octets = count, octets
        if listing_count(self.command(b"UIDL", multi=True)) != count:
            raise Pop3Error("UIDL listed a different number of messages than STAT")
        for number in range(1, count + 1):
            reply = self.command(b"RETR %d" % number, multi=True)
            tally.messages += 1
            tally.octets += message_octets(reply)

    def quit(self) -> None:
        try:
            self.command(b"QUIT")
        finally:
            self.sock.close()


def poplib_session(
    port: int, user: str, password: str, tally: Tally, tls: ssl.SSLContext | None = None
) -> None:
    """The same session as ``LeanClient.retrieve_all`` through the standard library's poplib."""
    client = (
        poplib.POP3(HOST, port, timeout=TIMEOUT)
        if tls is None
        else poplib.POP3_SSL(HOST, port, timeout=TIMEOUT, context=tls)
    )
    try:
        client.user(user)
        client.pass_(password)
        count, octets = client.stat()
        tally.expected_messages, tally.expected_octets = count, octets
        if len(client.uidl()[1]) != count:
            raise Pop3Error("UIDL listed a different number of messages than STAT")
        for number in range(1, count + 1):
            _, _, size = client.retr(number)
            tally.messages += 1
            tally.octets += size
        client.quit()
    finally:
        client.close()


class AsyncClient:
    """The lean client on asyncio streams, recording each command's latency in seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.latencies: list[tuple[bytes, float]] = []

    @classmethod
    async def connect(
        cls, port: int, source: str | None = None, tls: ssl.SSLContext | None = None
    ) -> AsyncClient:
        """Connect to ``port`` on loopback, from the local address ``source`` if given; the
        TLS handshake, when ``tls`` is given, counts as part of connecting."""
        local = (source, 0) if source else None
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection(
            HOST, port, limit=RECV_SIZE, local_addr=local, ssl=tls,
            server_hostname=HOST if tls is not None else None,
        )  # fmt: skip
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(reader, writer)
        checked(await client._read(False), b"greeting")
        # Not a command, but part of logging in: Dovecot forks its login process before the
        # greeting, popbridge only at PASS, so a fair login time includes it.
        client.latencies.append((CONNECT, asyncio.get_running_loop().time() - started))
        return client

    async def _read(self, multi: bool) -> bytes:
        buffer = bytearray()
        while not complete(buffer, multi):
            chunk = await self._reader.read(RECV_SIZE)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        return bytes(buffer)

    async def command(self, line: bytes, multi: bool = False) -> bytes:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._writer.write(line + b"\r\n")
        reply = await self._read(multi)
        verb = line.split()[0]
        self.latencies.append((verb, loop.time() - started))
        return checked(reply, verb)

    async def login(self, user: str, password: str) -> None:
        await self.command(b"USER " + user.encode())
        await self.command(b"PASS " + password.encode())

    async def retrieve_all(self, tally: Tally) -> None:
        count, octets = stat_numbers(await self.command(b"STAT"))
        tally.expected_messages, tally.expected_octets = count, octets
        if listing_count(await self.command(b"UIDL", multi=True)) != count:
            raise Pop3Error("UIDL listed a different number of messages than STAT")
        for number in range(1, count + 1):
            reply = await self.command(b"RETR %d" % number, multi=True)
            tally.messages += 1
            tally.octets += message_octets(reply)

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()
