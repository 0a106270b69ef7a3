"""Requests to an OAuth2 token endpoint, with our deadline and the bridge's error classes.

This module is the only place that speaks HTTP to an authorization server. Each request is a
form POST (RFC 6749 section 4.1.3, 6; RFC 8628 section 3.4) inside an `asyncio.timeout` we own,
with a bounded response body. It sorts outcomes the way a POP3 client must hear them: an
unreachable, slow or failing (5xx, 429) provider is `BackendUnavailable` ([SYS/TEMP]); an
error response (section 5.2) is an `OAuthError` the caller interprets; a response that is not
an OAuth2 answer at all is `BackendFailure`, a configuration problem for the operator. No
token, code or secret ever appears in an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from popbridge import __version__
from popbridge.errors import BackendFailure, BackendUnavailable
from popbridge.oauth2.providers import Provider

logger = logging.getLogger(__name__)

MAX_RESPONSE_OCTETS = 64 * 1024
_HEADERS = {"Accept": "application/json", "User-Agent": f"popbridge/{__version__}"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 section 3.4


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error response: `error` is the code, e.g. invalid_grant."""

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class Grant:
    """A successful token response (RFC 6749 section 5.1); `repr` hides the tokens."""

    access_token: str = field(repr=False)
    expires_in: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}{parts.path}"


async def post_form(url: str, form: Mapping[str, str], *, deadline: float) -> tuple[int, Any]:
    """POST `form`; the status and parsed JSON. Unreachable, slow or 5xx: BackendUnavailable."""
    where = _where(url)
    try:
        async with asyncio.timeout(deadline):
            session_timeout = aiohttp.ClientTimeout(total=deadline)
            async with (
                aiohttp.ClientSession(timeout=session_timeout) as http,
                http.post(
                    url,
                    data=dict(form),
                    headers=_HEADERS,
                    allow_redirects=False,  # RFC 6749 3.2: the token endpoint answers directly
                ) as response,
            ):
                status = response.status
                body = await response.content.read(MAX_RESPONSE_OCTETS)
    except TimeoutError:
        raise BackendUnavailable(f"{where}: no answer within {deadline:g} s") from None
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(f"{where}: {exc.__class__.__name__}: {exc}") from None
    if status >= 500 or status == 429:
        raise BackendUnavailable(f"{where}: HTTP {status}")
    try:
        return status, json.loads(body)
    except ValueError:
        raise BackendFailure(f"{where}: HTTP {status} with a body that is not JSON") from None


def _client_form(provider: Provider, form: Mapping[str, str]) -> dict[str, str]:
    """The request with our client identification. RFC 6749 2.3.1 allows the secret in the
    body; Google and Microsoft document it there, and public clients send none."""
    full = {**form, "client_id": provider.client_id}
    if provider.client_secret:
        full["client_secret"] = provider.client_secret
    return full


def _expires_in(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


async def token_request(provider: Provider, form: Mapping[str, str], *, deadline: float) -> Grant:
    """One token endpoint request; raises `OAuthError` for an error response."""
    full = _client_form(provider, form)
    status, data = await post_form(provider.token_url, full, deadline=deadline)
    where = _where(provider.token_url)
    if not isinstance(data, dict):
        raise BackendFailure(f"{where}: HTTP {status}, the answer is not a JSON object")
    if status != 200 or "error" in data:
        error = data.get("error")
        if not isinstance(error, str):
            raise BackendFailure(f"{where}: HTTP {status} without an OAuth2 error code")
        raise OAuthError(error, str(data.get("error_description", ""))[:300], status)
    token, kind = data.get("access_token"), str(data.get("token_type", "")).lower()
    if not isinstance(token, str) or not token:
        raise BackendFailure(f"{where}: token response without an access_token")
    if kind != "bearer":  # RFC 6749 7.1: XOAUTH2 and OAUTHBEARER carry bearer tokens only
        raise BackendFailure(f"{where}: token_type {kind!r}, expected Bearer")
    refresh = data.get("refresh_token")
    return Grant(
        access_token=token,
        expires_in=_expires_in(data.get("expires_in")),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        scope=data.get("scope") if isinstance(data.get("scope"), str) else None,
    )


async def device_authorization(provider: Provider, *, deadline: float) -> dict[str, Any]:
    """RFC 8628 section 3.1-3.2: ask for a device code and a user code."""
    if provider.device_url is None:
        raise BackendFailure(f"provider {provider.name!r} has no device_url")
    form = _client_form(provider, {"scope": provider.scope})
    status, data = await post_form(provider.device_url, form, deadline=deadline)
    if not isinstance(data, dict):
        raise BackendFailure(f"{_where(provider.device_url)}: the answer is not a JSON object")
    if status != 200 or "error" in data:
        error = str(data.get("error", f"HTTP {status}"))
        raise OAuthError(error, str(data.get("error_description", ""))[:300], status)
    return data
