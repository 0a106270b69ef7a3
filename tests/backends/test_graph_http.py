"""The HTTP helpers the Graph and JMAP backends share (`backends.http`).

This module owns the unit tests of Retry-After parsing, RFC 3339 timestamps, bounded reads
and our deadline around network awaits, against a small aiohttp server on loopback.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from backends.http import guarded, read_bounded, retry_after, timed_pieces, utc_datetime
from devkit.dovecot import free_port
from popbridge.errors import BackendFailure, BackendUnavailable


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("1", 1.0), (" 120 ", 120.0), ("soon", None), ("-3", None), ("", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after(value) == expected


def test_retry_after_http_date() -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = retry_after(later)
    assert delay is not None and 25 <= delay <= 31
    assert retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T00:00:05Z", datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC)),
        ("2024-01-01T00:00:05z", datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC)),
        ("2024-01-01T00:00:05", datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC)),
        ("yesterday", None),
        (17, None),
    ],
)
def test_utc_datetime(value: object, expected: datetime | None) -> None:
    assert utc_datetime(value) == expected


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"x" * 1000)
        await response.write_eof()
        return response

    async def declared(_: web.Request) -> web.Response:
        return web.Response(body=b"y" * 5000)

    release = asyncio.Event()

    async def stall(_: web.Request) -> web.Response:
        await release.wait()  # never answers while the test runs
        return web.Response()

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/declared", declared)
    app.router.add_get("/stall", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    release.set()
    await runner.cleanup()


async def test_bodies_over_the_limit_are_refused(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/big", "/declared"):
            async with session.get(server + path) as response:
                with pytest.raises(BackendFailure, match="large"):
                    await read_bounded(response, path, 2500)
        async with session.get(server + "/big") as response:
            assert len(await read_bounded(response, "/big", 4000)) == 4000


async def test_pieces_are_bounded(server: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(server + "/big") as response:
        pieces = [piece async for piece in timed_pieces(response, "/big", 700, 5)]
    assert b"".join(pieces) == b"x" * 4000 and max(map(len, pieces)) <= 700


async def test_our_deadline_and_lost_connections_are_temporary(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(BackendUnavailable, match="no answer within"):
            async with guarded("/stall", 0.2):
                await session.get(server + "/stall")
        with pytest.raises(BackendUnavailable, match="connection failed"):
            async with guarded("/closed", 5):
                await session.get(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(BackendFailure, match="not a usable URL"):
            async with guarded("bad", 5):
                await session.get("http://[::1")
