"""HTTP for the Graph backend: one aiohttp pool per mailbox, our deadlines, throttling, errors.

This module owns every exchange with Microsoft Graph (the only user of aiohttp here): the
bearer token only in the Authorization header, `Prefer: IdType="ImmutableId"` on every
request (ids that survive moves), at most `max_in_flight` (<= 4) requests in flight per
mailbox (Outlook's MailboxConcurrency limit), our own deadline on every request and on every
piece of a streamed body, JSON replies read up to a bound, `Retry-After` on 429/503/504
(RFC 6585 section 4, RFC 9110 section 10.2.3) honoured up to `max_retry_after` seconds in
all, and the mapping of Graph's errors (`{"error": {"code", "message"}}`) to the bridge's.
It never logs a request or response body, nor the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from backends.graph.config import GraphSettings
from backends.http import guarded, parse_json, read_bounded, retry_after, timed_pieces
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable, BridgeError

logger = logging.getLogger(__name__)

PREFER_IMMUTABLE = 'IdType="ImmutableId"'
MAX_JSON_OCTETS = 16 << 20  # a reply larger than this is refused, never buffered whole
_MAX_ERROR_OCTETS = 4096
_MAX_ATTEMPTS = 6  # per request, counting retries after 429/503/504
RETRIED = frozenset({429, 503, 504})
# Graph error codes that say "this item is not there" (message-get, 404 and 400).
MISSING_CODES = frozenset({"ErrorItemNotFound", "ErrorInvalidIdMalformed", "itemNotFound"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP response whose body was read within our limits."""

    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON ({} when empty); BackendFailure if it is not usable JSON."""
        return parse_json(self.body, self.url) if self.body else {}

    @property
    def code(self) -> str:
        """Graph's error code, or "" (the body is never logged)."""
        return error_code(self.json()) if self.status >= 400 else ""


def error_code(data: Any) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:100] if isinstance(code, str) else ""


class Transport:
    """One connection pool to Graph, for one opened mailbox (or one check)."""

    def __init__(self, settings: GraphSettings, token: str | None) -> None:
        self.settings = settings
        headers = {"User-Agent": "popbridge", "Prefer": PREFER_IMMUTABLE}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.max_in_flight, ssl=settings.tls_context or True
            ),
            headers=headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout),
        )
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._origin = _origin(settings.url)
        self._closed = False

    def url(self, path: str) -> str:
        """An absolute URL: `path` under the service root, or a link Graph gave us, which
        must point at the same origin (a token is never sent anywhere else)."""
        if path.startswith("/"):
            return self.settings.url + path
        if _origin(path) != self._origin:
            raise BackendFailure(f"{self.settings.peer}: a link points elsewhere: {path[:80]!r}")
        return path

    async def call(
        self, method: str, path: str, body: Any = None, *, page_size: int | None = None
    ) -> Reply:
        """One request with a JSON body (or none) whose whole, bounded reply is read.
        429/503/504 are retried or become BackendUnavailable; other statuses are returned."""
        url = self.url(path)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if page_size is not None:  # server-side paging (delta): ask for pages this large
            headers["Prefer"] = f"{PREFER_IMMUTABLE}, odata.maxpagesize={page_size}"
        async with self._request(method, url, data, headers) as response:
            async with guarded(url, self.settings.timeout):
                payload = await read_bounded(response, url, MAX_JSON_OCTETS)
            return Reply(response.status, url, response.headers, payload)

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        """`call`, then the JSON of a 2xx reply; any other status raised as a bridge error."""
        reply = await self.call(method, path, body)
        if reply.status >= 300:
            raise status_error(reply.status, reply.url, reply.code)
        return reply.json()

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, *, chunk: int, missing: type[BridgeError]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET `path` and yield its body in pieces of at most `chunk` octets, each within
        the deadline. Leaving early drops the connection (an unread body cannot be reused)."""
        url = self.url(path)
        async with self._request("GET", url, None, {}) as response:
            if response.status != 200:
                code = await _error_code(response)
                raise status_error(response.status, url, code, missing=missing)
            yield timed_pieces(response, url, chunk, self.settings.timeout)

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send within a slot, retrying 429/503/504; the slot is held while the caller reads
        and given back while we wait out a Retry-After."""
        if self._closed:
            raise BackendUnavailable(f"{self.settings.peer}: connection pool closed")
        waited = 0.0
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            async with self._slots:
                response = await self._send(method, url, body, headers)
                try:
                    if response.status not in RETRIED:
                        yield response
                        return
                    delay = retry_after(response.headers.get("Retry-After"))
                finally:
                    response.close()  # unread bodies must not go back to the pool
            waited = self._wait_budget(url, response.status, delay, waited, attempt)
            await asyncio.sleep(delay or 0.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_budget(
        self, url: str, status: int, delay: float | None, waited: float, attempt: int
    ) -> float:
        """The seconds waited after this delay; BackendUnavailable past the bound."""
        budget = self.settings.max_retry_after - waited
        if delay is None:
            delay = min(2.0 ** (attempt - 1), 8.0)  # no Retry-After: back off ourselves
        if delay > budget or attempt == _MAX_ATTEMPTS:
            logger.warning("%s: HTTP %d, not retrying (Retry-After %s)", url, status, delay)
            raise BackendUnavailable(f"{url}: HTTP {status} (throttled or busy)")
        logger.info("%s: HTTP %d, retrying in %.1f s", url, status, delay)
        return waited + delay

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        async with guarded(url, self.settings.timeout):
            # encoded=True: sent as built (ids percent-encoded) or as Graph linked it
            return await self._session.request(
                method, URL(url, encoded=True), data=body, headers=headers, allow_redirects=False
            )

    async def close(self) -> None:
        """Close every pooled connection; idempotent, never raises."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._session.close()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def status_error(
    status: int, url: str, code: str, *, missing: type[BridgeError] = BackendFailure
) -> BridgeError:
    """The bridge error for a Graph error reply (status and error code)."""
    what = f"{url}: HTTP {status}{' ' + code if code else ''}"
    if status == 401:  # InvalidAuthenticationToken: expired, revoked or not for Graph
        return AuthFailed(what)
    if status == 403 and code in ("ErrorAccessDenied", "Authorization_RequestDenied", ""):
        return AuthFailed(what)  # the token lacks Mail.ReadWrite, or the mailbox refuses it
    if code in MISSING_CODES or (status == 404 and not code):
        return missing(what)
    if status in (408, 500, 502) or status in RETRIED:
        return BackendUnavailable(what)
    return BackendFailure(what)  # MailboxNotEnabledForRESTAPI, bad requests: an operator


async def _error_code(response: aiohttp.ClientResponse) -> str:
    if "json" not in response.headers.get("Content-Type", ""):
        return ""
    try:
        async with asyncio.timeout(1.0):
            data = await response.content.read(_MAX_ERROR_OCTETS)
        return error_code(parse_json(data, str(response.url)))
    except (TimeoutError, BackendFailure, aiohttp.ClientError):
        return ""
