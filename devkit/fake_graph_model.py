"""The fake Graph's data: mail folders, messages with both id formats, and Graph's JSON shapes.

This module owns what `devkit.fake_graph` serves: `FakeFolder` and `FakeMessage` (an
immutable id of 68 characters and a classic one of 152 ending in "=", a changeKey that moves
with every change, a MAPI size that is not the MIME size), Graph's error body, and the
`$select` and link helpers of its replies.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web


def _b64(size: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(size)).decode()


def immutable_id() -> str:
    """68 characters of URL-safe base64, as observed for immutable ids."""
    return "AAkALg" + _b64(46)[:62]


def classic_id() -> str:
    """152 characters ending in "=", as observed for classic REST ids."""
    return "AAMkAG" + _b64(108)[:142] + "AAA="


@dataclass
class FakeFolder:
    id: str
    name: str
    well_known: str | None = None
    parent: str | None = None


@dataclass
class FakeMessage:
    mime: bytes
    folder: str
    received: str
    id: str = field(default_factory=immutable_id)
    classic: str = field(default_factory=classic_id)
    change: int = 1
    is_read: bool = False
    categories: list[str] = field(default_factory=list)

    @property
    def change_key(self) -> str:
        return f"CQAAABYAAAB{self.change:08d}"


def error(status: int, code: str, message: str = "", **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message or code, "innerError": {}}}
    return web.json_response(body, status=status, headers=headers)


def select_of(value: str | None) -> set[str] | None:
    return None if not value else {part.strip() for part in value.split(",")}


def pick(resource: dict[str, Any], selected: set[str] | None) -> dict[str, Any]:
    if selected is None:
        return resource
    return {k: v for k, v in resource.items() if k in selected or k == "id"}


def mapi_size(resource: dict[str, Any]) -> int:
    """The message size property of a resource as the fake serves it."""
    return int(resource["singleValueExtendedProperties"][0]["value"])


def link(request: web.Request, query: dict[str, str]) -> str:
    base = f"{request.scheme}://{request.host}{request.path}"
    return base + "?" + urlencode(query, safe="$,", quote_via=quote)
