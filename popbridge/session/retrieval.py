"""RETR and TOP: one message streamed from the backend to the client.

The status line is held back until the backend produced the first chunk, so a message
that vanished upstream, or an upstream that failed, still gets a clean `-ERR` (conformance
P-3.10, I-9). After `+OK` the body goes out chunk by chunk through the stateful encoder,
with a drain after each chunk so a slow client slows the fetch instead of filling memory.
A failure in mid-body cannot be reported in POP3; the only honest answer is to close the
connection, which the client sees as an incomplete response and which applies nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from popbridge.contract import Mailbox, close_chunks
from popbridge.errors import BridgeError, MessageGone
from popbridge.pop3.engine import Pop3Engine
from popbridge.pop3.replies import Err, Ok
from popbridge.pop3.wire import BodyEncoder
from popbridge.session.lookahead import Lookahead
from popbridge.session.snapshot import Entry


class Output(Protocol):
    """Where replies go: `write` buffers, `drain` waits for the client to keep up."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class SessionClosing(Exception):
    """The last reply was written; the connection must now close."""


async def send_message(
    engine: Pop3Engine,
    out: Output,
    lookahead: Lookahead,
    entry: Entry,
    body_lines: int | None,
    log: logging.LoggerAdapter[logging.Logger],
) -> int | None:
    """Answer RETR (`body_lines` None) or TOP; the octets sent, or None after `-ERR`.

    A RETR whose answer `lookahead` prepared is written at once; anything else waits for
    the preparation to end (the mailbox serves one call at a time) and streams.
    """
    prepared = await lookahead.take(entry.message.identity)
    if prepared is not None and body_lines is None:
        out.write(engine.send(Ok(f"{prepared.octets} octets")))
        out.write(prepared.wire)
        return prepared.octets
    return await _stream_message(engine, out, lookahead.mailbox, entry, body_lines, log)


async def _stream_message(
    engine: Pop3Engine,
    out: Output,
    mailbox: Mailbox,
    entry: Entry,
    body_lines: int | None,
    log: logging.LoggerAdapter[logging.Logger],
) -> int | None:
    chunks = mailbox.fetch(entry.message.identity, body_lines=body_lines)
    try:
        first = await _first_chunk(engine, out, chunks, log)
        if first is None:
            return None
        out.write(engine.send(Ok(f"{entry.size} octets")))
        encoder = BodyEncoder(body_lines=body_lines)
        await _stream(out, first, chunks, encoder, log)
    finally:
        await close_chunks(chunks)  # a plain try/finally: this runs for every RETR
    return encoder.octets


async def _first_chunk(
    engine: Pop3Engine,
    out: Output,
    chunks: AsyncIterator[bytes],
    log: logging.LoggerAdapter[logging.Logger],
) -> bytes | None:
    try:
        return await anext(chunks, b"")
    except MessageGone:
        out.write(engine.send(Err(MessageGone.wire_text)))
    except BridgeError as error:
        log.warning("fetch failed: %r", error)
        out.write(engine.send(Err(error.wire_text, error.code)))
    return None


async def _stream(
    out: Output,
    first: bytes,
    chunks: AsyncIterator[bytes],
    encoder: BodyEncoder,
    log: logging.LoggerAdapter[logging.Logger],
) -> None:
    chunk = first
    try:
        while True:
            out.write(encoder.feed(chunk))
            await out.drain()
            if encoder.done:
                break
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
    except BridgeError as error:
        log.warning("fetch failed after the status line, closing: %r", error)
        raise SessionClosing from error
    out.write(encoder.finish())
