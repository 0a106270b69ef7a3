"""The maildrop listing: every message in the folder, one consistent snapshot, in one order.

This module owns paging through `GET /me/mailFolders/{id}/messages` (Graph user-list-messages)
with `$select`, `$top` and `$orderby=receivedDateTime`, following `@odata.nextLink` (same
origin only). Graph pages by offset (`$skip`), so a message removed while the pages are read
shifts the rest and one is skipped; one that arrives can appear twice. A pass is therefore
confirmed by a second, cheap pass (ids only, the largest page Graph allows); the listing is
accepted when both saw the same messages once each, and repeated otherwise. The bridge
sorts by (receivedDateTime, id) itself, since Graph's order for equal times is unspecified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from backends.graph.transport import Transport
from backends.http import utc_datetime
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

SELECT = "id,changeKey,receivedDateTime,internetMessageId,categories"
MAX_PASSES = 4
MAX_MESSAGES = 1_000_000  # a runaway server must not page forever
CONFIRM_PAGE = 1000  # Graph's largest $top
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Listed:
    """One message as listed; `change_key` versions its content and properties."""

    id: str
    change_key: str | None
    received: datetime | None
    message_id: str | None
    categories: tuple[str, ...]


def folder_path(folder_id: str) -> str:
    return f"/me/mailFolders/{quote(folder_id, safe='')}"


def messages_path(folder_id: str, select: str, top: int) -> str:
    query = {"$select": select, "$top": str(top), "$orderby": "receivedDateTime"}
    return f"{folder_path(folder_id)}/messages?" + urlencode(query, safe="$,", quote_via=quote)


async def list_messages(transport: Transport, folder_id: str, page_size: int) -> list[Listed]:
    """Every message in the folder, sorted by (receivedDateTime, id), from a confirmed pass."""
    for attempt in range(1, MAX_PASSES + 1):
        found = await _pass(transport, messages_path(folder_id, SELECT, page_size))
        confirm = await _pass(transport, messages_path(folder_id, "id", CONFIRM_PAGE))
        ids = [entry.id for entry in found]
        again = [entry.id for entry in confirm]
        if len(set(ids)) == len(ids) == len(again) and set(ids) == set(again):
            return sorted(found, key=lambda m: (m.received or _EPOCH, m.id))
        logger.info("the folder changed while it was listed, listing again (pass %d)", attempt)
    raise BackendUnavailable("the folder kept changing while it was being listed")


async def _pass(transport: Transport, path: str) -> list[Listed]:
    found: list[Listed] = []
    link: str | None = path
    while link is not None:
        page = await transport.json("GET", link)
        values = page.get("value") if isinstance(page, dict) else None
        if not isinstance(values, list):
            raise BackendFailure(f"{transport.settings.peer}: a message page has no value")
        found += (listed_entry(entry) for entry in values)
        if len(found) > MAX_MESSAGES:
            raise BackendFailure(f"more than {MAX_MESSAGES} messages in the folder")
        following = page.get("@odata.nextLink")
        link = following if isinstance(following, str) and values else None
    return found


def listed_entry(entry: Any) -> Listed:
    if not isinstance(entry, dict):
        raise BackendFailure("a listed message is not an object")
    message_id = entry.get("id")
    if not isinstance(message_id, str) or not message_id:
        raise BackendFailure("a listed message has no id")
    key = entry.get("changeKey")
    header = entry.get("internetMessageId")
    categories = entry.get("categories")
    return Listed(
        id=message_id,
        change_key=key if isinstance(key, str) else None,
        received=utc_datetime(entry.get("receivedDateTime")),
        message_id=header if isinstance(header, str) and header else None,
        categories=tuple(c for c in categories if isinstance(c, str))
        if isinstance(categories, list)
        else (),
    )
