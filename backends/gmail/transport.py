"""HTTP for the Gmail backend: one aiohttp pool, our deadlines, quota, retries and errors.

This module owns every HTTP exchange with the Gmail API (the only user of aiohttp here): the
bearer token in the Authorization header of requests to the configured origin only, our own
deadline on every request and every piece of a streamed body, JSON replies read up to
`max_json_size`, the user's quota (units spent before each request, requests in flight
bounded) and the mapping of Gmail's errors (`{"error": {"code", "message", "errors":
[{"reason"}], "status"}}`) to the bridge's. Rate limits (429, and 403 with reason
`userRateLimitExceeded` or `rateLimitExceeded`) and 500/502/503/504 are retried with
exponential backoff and full jitter, honouring Retry-After (RFC 9110 section 10.2.3), until
`max_backoff` seconds were spent; then the call is `BackendUnavailable` (POP3 [SYS/TEMP]).
403 `insufficientPermissions` is `ScopeMissing` and never retried. Only the error's reason
is logged, never a body, a token or the error's message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from backends.gmail.config import GmailSettings
from backends.gmail.quota import UNITS, UserQuota
from backends.http import guarded, read_bounded, retry_after, timed_pieces
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    BridgeError,
    MessageGone,
)

logger = logging.getLogger(__name__)

_MAX_ERROR_OCTETS = 8192
_MAX_ATTEMPTS = 6
BACKOFF_BASE = 0.5  # seconds; attempt n waits up to BACKOFF_BASE * 2**n
RATE_REASONS = {"userRateLimitExceeded", "rateLimitExceeded"}
_SCOPE_REASONS = {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
_REASON = re.compile(r"[A-Za-z_]{1,64}")
RETRY_STATUSES = {429, 500, 502, 503, 504}
Params = Mapping[str, str | int | list[str]]
Payload = tuple[bytes, str]  # a request body and its Content-Type


class ScopeMissing(BackendFailure):
    """403 insufficientPermissions: the token lacks the scope this call needs."""


class NotFound(BackendFailure):
    """404 from a call whose caller decides what a missing resource means."""


def _query(params: Params | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        values = value if isinstance(value, list) else [value]
        pairs += [(key, str(item)) for item in values]
    return pairs


class Transport:
    """One pool of connections to the Gmail API for one opened mailbox (or one check)."""

    def __init__(
        self, settings: GmailSettings, token: str | None, quota: UserQuota | None = None
    ) -> None:
        self.settings = settings
        self.quota = quota
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        tls: ssl.SSLContext | bool = settings.tls_context or True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_in_flight, ssl=tls),
            headers={"User-Agent": "popbridge"},
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout),
        )
        self._closed = False

    async def call(
        self, method: str, path: str, what: str, *, params: Params | None = None,
        body: Any = None,
    ) -> Any:  # fmt: skip
        """One API call `what` (a method name from the quota table); its JSON reply (None
        for an empty one). 404 is `NotFound`; other errors as the module says."""
        payload = (json.dumps(body).encode(), "application/json") if body is not None else None
        async with (
            self._request(method, path, what, params, payload) as response,
            guarded(path, self.settings.timeout),
        ):
            data = await read_bounded(
                response, path, self.settings.max_json_size, setting="max_json_size"
            )
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BackendFailure(f"{path}: reply is not usable JSON") from None

    async def post(self, path: str, what: str, payload: Payload, units: int) -> tuple[str, bytes]:
        """POST `payload` (octets, Content-Type) costing `units`; the reply's Content-Type
        and its body, read up to `max_json_size`."""
        async with (
            self._request("POST", path, what, None, payload, units) as response,
            guarded(path, self.settings.timeout),
        ):
            data = await read_bounded(
                response, path, self.settings.max_json_size, setting="max_json_size"
            )
            return response.headers.get("Content-Type", ""), data

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, what: str, *, params: Params | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET and yield the body in pieces of at most `fetch_chunk` octets, each within the
        deadline; 404 is MessageGone. Leaving early drops the connection."""
        try:
            async with self._request("GET", path, what, params, None) as response:
                settings = self.settings
                yield timed_pieces(response, path, settings.fetch_chunk, settings.timeout)
        except NotFound as exc:
            raise MessageGone(str(exc)) from None

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, path: str, what: str, params: Params | None,
        payload: Payload | None, units: int | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:  # fmt: skip
        """Send within the quota, retrying rate limits and server errors; yields a 2xx
        response with its headers read, the user's in-flight slot held meanwhile."""
        if self._closed:
            raise BackendUnavailable(f"{path}: connection pool closed")
        waited = 0.0
        for attempt in range(_MAX_ATTEMPTS):
            await self._spend(UNITS.get(what, 5) if units is None else units)
            async with self._slot():
                response = await self._send(method, path, params, payload)
                try:
                    if response.status < 300:
                        yield response
                        return
                    reason = await _reason(response)
                    delay = self._retry_delay(response, reason, attempt)
                finally:
                    response.close()
            if delay is None:
                raise status_error(response.status, reason, f"{what} {path}")
            if waited + delay > self.settings.max_backoff or attempt == _MAX_ATTEMPTS - 1:
                logger.warning("%s: HTTP %d %s: giving up after %.1f s of backoff",
                               what, response.status, reason or "-", waited)  # fmt: skip
                raise BackendUnavailable(f"{what}: HTTP {response.status} {reason} (throttled)")
            logger.info("%s: HTTP %d %s, retrying in %.2f s",
                        what, response.status, reason or "-", delay)  # fmt: skip
            await asyncio.sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_delay(
        self, response: aiohttp.ClientResponse, reason: str, attempt: int
    ) -> float | None:
        """Seconds to wait before trying again, or None if this error is final."""
        limited = response.status == 429 or (response.status == 403 and reason in RATE_REASONS)
        if not limited and response.status not in RETRY_STATUSES:
            return None
        if limited and self.quota is not None:
            self.quota.throttled += 1
        told = retry_after(response.headers.get("Retry-After"))
        jitter = random.uniform(0, BACKOFF_BASE * 2**attempt)  # noqa: S311 (not a secret)
        return max(told or 0.0, jitter)

    async def _spend(self, units: int) -> None:
        if self.quota is not None:
            await self.quota.budget.spend(units, wait_at_most=self.settings.timeout)
            self.quota.spent += units

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of the user's in-flight slots, waited for no longer than `timeout` (a slot
        may be held by a download a slow POP3 client reads)."""
        if self.quota is None:
            yield
            return
        slots = self.quota.in_flight
        try:
            async with asyncio.timeout(self.settings.timeout):
                await slots.acquire()
        except TimeoutError:
            raise BackendUnavailable(
                f"no request slot free within {self.settings.timeout:g} s"
            ) from None
        try:
            yield
        finally:
            slots.release()

    async def _send(
        self, method: str, path: str, params: Params | None, payload: Payload | None
    ) -> aiohttp.ClientResponse:
        url = f"{self.settings.url}{path}"
        headers = dict(self._headers)
        data = None
        if payload is not None:
            data, headers["Content-Type"] = payload
        async with guarded(path, self.settings.timeout):
            return await self._session.request(
                method, url, params=_query(params), data=data, headers=headers,
                allow_redirects=False,
            )  # fmt: skip

    async def close(self) -> None:
        """Close every pooled connection; idempotent, never raises."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._session.close()


def status_error(status: int, reason: str, what: str) -> BridgeError:
    detail = f"{what}: HTTP {status}{' ' + reason if reason else ''}"
    if status == 401:
        return AuthFailed(f"{detail}: the access token was refused")
    if status == 403 and reason in _SCOPE_REASONS:
        return ScopeMissing(f"{detail}: the token lacks the OAuth scope this needs")
    if status == 404:
        return NotFound(detail)
    if status in RETRY_STATUSES or status == 408:
        return BackendUnavailable(detail)
    return BackendFailure(detail)


async def _reason(response: aiohttp.ClientResponse) -> str:
    """The reason code of an error reply; never the body."""
    try:
        async with asyncio.timeout(2.0):
            data = await response.content.read(_MAX_ERROR_OCTETS)
    except (TimeoutError, aiohttp.ClientError):
        return ""
    return error_reason(data)


def error_reason(data: bytes) -> str:
    """`error.errors[0].reason` (or `error.status`) of a Google error body, if it is a
    plain code; never any of the message text."""
    try:
        error = json.loads(data[:_MAX_ERROR_OCTETS]).get("error")
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    reason = first.get("reason") if isinstance(first, dict) else error.get("status")
    return reason if isinstance(reason, str) and _REASON.fullmatch(reason) else ""
