"""What the HTTP backends (JMAP, Graph, Gmail) share: our deadlines, bounded reads, Retry-After.

This module owns the pieces of an HTTP exchange that do not depend on the upstream's API:
`guarded`, our own deadline around every await on the network with connection-level
failures turned into the bridge's errors; `read_bounded`, a reply read whole only up to a
limit; `timed_pieces`, a streamed body in bounded pieces, each within the deadline;
`retry_after`, the Retry-After header (RFC 9110 section 10.2.3); `utc_datetime`, the
RFC 3339 timestamps the APIs use; and `bearer_token`, a device's or account's OAuth2 token
screened before it is sent to an API that takes nothing else. Like the backends, it imports
only `popbridge.contract` and `popbridge.errors` of the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp

from popbridge.contract import Credentials
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable
from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import is_loopback

MAX_TOKEN_OCTETS = 16384
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(credentials: Credentials, service: str) -> str:
    """The token to send to `service`, which takes OAuth2 bearer tokens only; AuthFailed for
    a password, or for anything that is not an RFC 6750 b64token (nothing is sent then)."""
    if credentials.mechanism != "oauth2":
        raise AuthFailed(f"{service} takes OAuth2 bearer tokens only, not passwords")
    token = credentials.secret
    if len(token) > MAX_TOKEN_OCTETS or not _B64TOKEN.fullmatch(token):
        raise AuthFailed("bearer token refused before sending: not an RFC 6750 b64token")
    return token


def checked_url(
    table: TableReader, key: str, value: str, *, cleartext_to_loopback_only: bool = True
) -> SplitResult:
    """The config's `key` as an http(s) URL with a host name and a valid port, without a
    user name or password, in printable ASCII; with `cleartext_to_loopback_only`, http://
    only to this machine, so credentials never cross a network in clear."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise table.error(key, "must be an http:// or https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise table.error(key, "must not contain a user name or password")
    if any(ord(char) <= 0x20 or ord(char) >= 0x7F for char in value):
        raise table.error(key, "must not contain spaces, control or non-ASCII characters")
    try:
        parts.port  # noqa: B018  (validates the port number)
    except ValueError:
        raise table.error(key, "has an invalid port") from None
    if cleartext_to_loopback_only and parts.scheme == "http" and not is_loopback(parts.hostname):
        raise table.error(key, "must be https:// (http:// only to this machine, loopback)")
    return parts


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_json(body: bytes, url: str) -> Any:
    """JSON from an upstream; BackendFailure if it is not JSON or nests too deeply for the
    parser (RecursionError: a few kilobytes of `[` suffice)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BackendFailure(f"{url}: reply is not usable JSON") from None


def utc_datetime(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (UTC when it names no offset), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def read_bounded(
    response: aiohttp.ClientResponse, url: str, limit: int, *, setting: str = "the limit"
) -> bytes:
    """The whole body, refused (BackendFailure) as soon as it is known to exceed `limit`,
    whether its length is declared or it is chunked; `setting` names the key that sets it."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BackendFailure(f"{url}: a reply of {declared} octets is too large ({setting})")
    data = bytearray()
    async for piece in response.content.iter_chunked(1 << 16):
        data += piece
        if len(data) > limit:
            raise BackendFailure(f"{url}: a reply is larger than {setting} ({limit} octets)")
    return bytes(data)


async def timed_pieces(
    response: aiohttp.ClientResponse, url: str, chunk: int, seconds: float
) -> AsyncIterator[bytes]:
    """The body in pieces of at most `chunk` octets, each within `seconds`."""
    pieces = response.content.iter_chunked(chunk)
    while True:
        async with guarded(url, seconds):
            piece = await anext(pieces, None)
        if piece is None:
            return
        yield piece


@contextlib.asynccontextmanager
async def guarded(url: str, seconds: float) -> AsyncIterator[None]:
    """Our own deadline, and connection-level failures as bridge errors.

    Past the deadline the await is cancelled and aiohttp drops the connection it was using,
    so a late reply can never be read as the answer to a later request. A certificate that
    does not verify needs an operator; a refused or lost connection is temporary.
    """
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BackendUnavailable(f"{url}: no answer within {seconds:g} s") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise BackendFailure(
            f"{url}: TLS certificate not trusted: {exc.certificate_error}"
        ) from None
    except aiohttp.ClientSSLError as exc:
        raise BackendFailure(f"{url}: TLS handshake failed: {exc}") from None
    except aiohttp.InvalidURL:
        raise BackendFailure(f"{url}: not a usable URL") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise BackendUnavailable(f"{url}: connection failed: {exc!r}") from None
    except aiohttp.ClientResponseError as exc:
        raise BackendFailure(f"{url}: unusable HTTP reply: {exc.message}") from None
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(f"{url}: HTTP client error: {exc!r}") from None
