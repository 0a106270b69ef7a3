"""HTTP for the JMAP backend: one aiohttp connection pool, our deadlines, and error mapping.

This module owns every HTTP exchange with the upstream (the only user of aiohttp): the pool
of keep-alive connections built from `sockets.quickack_socket`, our own deadline on every
request and on every piece of a streamed body (aiohttp's timers are not relied on), the
reading of JSON replies up to `max_json_size`, `Retry-After` on 429 and 503 (RFC 6585
section 4, RFC 9110 section 10.2.3) honoured up to `max_retry_after` seconds in all, and
the mapping of HTTP statuses and connection failures to the bridge's errors (conformance
J-15). The Authorization header is added per request, and only to the origins `trust`
names (the Session's and its API URLs'; before discovery, the configured one), over https
or to this machine: a request anywhere else is refused before anything is sent. It never
logs a request or response body, nor the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from backends.http import guarded, parse_json, read_bounded, retry_after
from backends.jmap.config import JmapSettings
from backends.jmap.sockets import quickack_socket
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    BridgeError,
    MessageGone,
)
from popbridge.upstream.tls import is_loopback

logger = logging.getLogger(__name__)

Origin = tuple[str, str, int]  # scheme, host, port (RFC 6454 section 4), all normalised
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_ERROR_OCTETS = 4096  # of an error body, read for its problem type (RFC 7807)
_MAX_ATTEMPTS = 5  # per request, counting retries after 429/503
_USER_AGENT = "popbridge"
# aiohttp >= 3.12 takes a socket factory; older versions get a fresh connection per request,
# the other cure for the delayed-ACK stall `sockets` describes, at a price: per 20 KB download
# from Cyrus 3.6 on loopback, ~1.5 ms with QUICKACK, ~6 ms with fresh connections, ~45 ms
# with neither.
_HAS_SOCKET_FACTORY = "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP response whose body was read within our limits."""

    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (RFC 8259); BackendFailure if it is not."""
        return parse_json(self.body, self.url)


@dataclass(frozen=True, slots=True)
class Partial:
    """A response to a ranged GET: its status and headers, and its body still to be read."""

    status: int
    headers: Mapping[str, str]
    pieces: AsyncIterator[bytes]


def origin(url: str) -> Origin:
    """The origin of an http(s) URL (RFC 6454 section 4): case-folded, default port filled."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def may_carry_credentials(url: str, trusted: set[Origin]) -> bool:
    """Credentials go only to a trusted origin, and in clear only to this machine."""
    where = origin(url)
    return where in trusted and (where[0] == "https" or is_loopback(where[1]))


class Transport:
    """One pool of connections to one upstream, for one opened mailbox (or one check)."""

    def __init__(self, settings: JmapSettings, authorization: str | None) -> None:
        self.settings = settings
        options: dict[str, Any] = {"limit": 4, "ssl": settings.tls_context}
        if _HAS_SOCKET_FACTORY:
            options["socket_factory"] = quickack_socket
        else:
            options["force_close"] = True
        self._authorization = authorization
        self._trusted = {origin(settings.session_url)}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**options),
            headers={"User-Agent": _USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout),
        )
        self._closed = False

    def trust(self, *urls: str) -> None:
        """From now on, send credentials only to these URLs' origins (the Session's, its
        apiUrl's and its downloadUrl's, RFC 8620 section 2)."""
        self._trusted = {origin(url) for url in urls}

    async def fetch(self, method: str, url: str, *, body: bytes | None = None) -> Reply:
        """One request whose whole (bounded) reply is read; statuses are the caller's to map,
        except 429/503, which are retried or become BackendUnavailable."""
        async with self._request(method, url, body) as response:
            async with guarded(url, self.settings.timeout):
                data = await read_bounded(
                    response, url, self.settings.max_json_size, setting="max_json_size"
                )
            return Reply(response.status, str(response.url), response.headers, data)

    @contextlib.asynccontextmanager
    async def stream(self, url: str, *, chunk: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET `url` and yield its body in pieces of at most `chunk` octets, each within the
        deadline; 404 is MessageGone. Leaving early drops the connection (it cannot be reused
        with an unread body)."""
        async with self._request("GET", url, None) as response:
            if response.status != 200:
                detail = await _error_detail(response)
                raise status_error(response.status, url, detail, missing=MessageGone)
            yield self._pieces(response, url, chunk)

    @contextlib.asynccontextmanager
    async def ranged(self, url: str, ranges: str, *, chunk: int) -> AsyncIterator[Partial]:
        """GET `url` asking for `ranges` (RFC 9110 section 14.2, a `Range` header) and yield
        the response whatever its status, its body in timed pieces of at most `chunk`
        octets; the caller decides what a 200, 206 or 416 means. Leaving before the body
        ended drops the connection, so no half-read reply goes back to the pool."""
        async with self._request("GET", url, None, {"Range": ranges}) as response:
            yield Partial(response.status, response.headers, self._pieces(response, url, chunk))

    async def _pieces(
        self, response: aiohttp.ClientResponse, url: str, chunk: int
    ) -> AsyncIterator[bytes]:
        pieces = response.content.iter_chunked(chunk)
        while True:
            async with guarded(url, self.settings.timeout):
                piece = await anext(pieces, None)
            if piece is None:
                return
            yield piece

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, url: str, body: bytes | None, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send with retries on 429/503; yields the response with its headers read.
        Redirects are not followed here: `discovery` decides which ones to follow."""
        if self._closed:
            raise BackendUnavailable(f"{self.settings.peer}: connection pool closed")
        waited = 0.0
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            response = await self._send(method, url, body, extra)
            try:
                if response.status not in (429, 503):
                    yield response
                    return
                delay = retry_after(response.headers.get("Retry-After"))
            finally:
                response.close()  # unread bodies must not go back to the pool
            budget = self.settings.max_retry_after - waited
            if delay is None or delay > budget or attempt == _MAX_ATTEMPTS:
                logger.warning(
                    "%s: HTTP %d, not retrying (Retry-After %s)", url, response.status, delay
                )
                raise BackendUnavailable(f"{url}: HTTP {response.status} (server busy)")
            logger.info("%s: HTTP %d, retrying in %.1f s", url, response.status, delay)
            await asyncio.sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, method: str, url: str, body: bytes | None, extra: Mapping[str, str] | None
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        headers |= extra or {}
        if self._authorization is not None:
            if not may_carry_credentials(url, self._trusted):
                raise BackendFailure(
                    f"{url}: not sending credentials there (only to the Session's origin and"
                    " its API URLs, over https or to this machine)"
                )
            headers["Authorization"] = self._authorization
        async with guarded(url, self.settings.timeout):
            return await self._session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            )

    async def close(self) -> None:
        """Close every pooled connection; idempotent, never raises."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._session.close()


def status_error(
    status: int, url: str, detail: str, *, missing: type[BridgeError] = BackendFailure
) -> BridgeError:
    """The error for a non-success status (conformance J-15)."""
    what = f"{url}: HTTP {status}{': ' + detail if detail else ''}"
    if status == 401:  # RFC 9110 15.5.2: the credentials were missing or refused
        return AuthFailed(what)
    if status == 404:
        return missing(what)
    if status in (408, 429) or status in (500, 502, 503, 504):
        return BackendUnavailable(what)
    return BackendFailure(what)


async def _error_detail(response: aiohttp.ClientResponse) -> str:
    """The `type` of an RFC 7807 problem body, for the log; never the body itself."""
    if "json" not in response.headers.get("Content-Type", ""):
        return ""
    try:
        async with asyncio.timeout(1.0):
            data = await response.content.read(_MAX_ERROR_OCTETS)
        problem = json.loads(data)
    except (TimeoutError, ValueError, UnicodeDecodeError, RecursionError, aiohttp.ClientError):
        return ""
    kind = problem.get("type") if isinstance(problem, dict) else None
    return kind if isinstance(kind, str) else ""


async def tls_version(settings: JmapSettings, url: str) -> str:
    """The TLS version a verified handshake with `url`'s host negotiates (for `check`; the
    pool does not expose its connections' TLS state once a reply has been read)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    async with guarded(url, settings.connect_timeout):
        try:
            _, writer = await asyncio.open_connection(
                host, port, ssl=settings.tls_context, server_hostname=host
            )
        except ssl.SSLCertVerificationError as exc:
            raise BackendFailure(
                f"{url}: TLS certificate not trusted: {exc.verify_message}"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise BackendUnavailable(f"{url}: TLS handshake failed: {exc}") from None
    ssl_object = writer.get_extra_info("ssl_object")
    writer.close()
    version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None
    return version or "unknown"
