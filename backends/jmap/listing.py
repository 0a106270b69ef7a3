"""The maildrop listing: every Email in the Mailbox, in one stable order, with exact sizes.

This module owns Email/query paging (RFC 8621 section 4.4; RFC 8620 section 5.5): each page
is one request, an Email/query at `position` chained by a result reference (RFC 8620 section
3.7) to an Email/get of its ids, so a page never exceeds `maxObjectsInGet`; a server may
clamp `limit`, so paging goes on until `total` ids (or a short page) arrived. If `queryState`
changes between pages, or the ids do not add up to `total`, the listing starts again, so the
snapshot is consistent. The server sorts by `receivedAt`, but for equal values the order "is
server dependent" (RFC 8621 section 4.4.2) and Cyrus' is not stable, so the query also sorts
by id where the server offers that, and the bridge sorts by (receivedAt, id) itself.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backends.http import utc_datetime
from backends.jmap.api import Api
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

PROPERTIES = ["id", "size", "receivedAt", "messageId"]
MAX_RESTARTS = 3
MAX_MESSAGES = 1_000_000  # a runaway server must not page forever
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# RFC 8621 section 4.1.1: a keyword is 1-255 of %x21-%x7e except ( ) { ] % * " \
_KEYWORD_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){]%*"\\')
_KEYWORD = re.compile(f"[{re.escape(_KEYWORD_CHARS)}]{{1,255}}")


@dataclass(frozen=True, slots=True)
class Listed:
    """One Email as listed: the identity is its id (immutable, RFC 8620 section 1.2)."""

    id: str
    size: int
    received: datetime | None
    message_id: str | None


def is_keyword(keyword: str) -> bool:
    return _KEYWORD.fullmatch(keyword) is not None


def query_filter(mailbox_id: str, hidden_keyword: str | None) -> dict[str, Any]:
    """In the Mailbox, without `hidden_keyword` (RFC 8621 4.4.1; one condition ANDs both)."""
    condition: dict[str, Any] = {"inMailbox": mailbox_id}
    if hidden_keyword is not None:
        if not is_keyword(hidden_keyword):
            raise BackendFailure(f"hidden keyword {hidden_keyword!r} is not a JMAP keyword")
        condition["notKeyword"] = hidden_keyword
    return condition


@dataclass(slots=True)
class _Pass:
    """What one pass over the pages found; `found` is None if it must be repeated."""

    found: list[Listed] | None
    total: int | None = None
    state: str | None = None  # the Email state of the first page


@dataclass(frozen=True, slots=True)
class Found:
    """A full listing, sorted by (receivedAt, id), and the Email state (RFC 8620 5.1) of
    its first page: `Email/changes` from there names every Email that changed since."""

    listed: list[Listed]
    state: str | None


async def list_emails(
    api: Api, condition: dict[str, Any], page_size: int, *, by_id: bool = False
) -> Found:
    """All matching Emails, sorted by (receivedAt, id).

    `by_id`: the server can sort by id too (then ties keep one order from page to page). A
    pass is repeated if `queryState` moved or the ids did not add up to `total` (a server
    whose order for ties changes between pages, against RFC 8621 4.4.2); the repeat asks
    for everything in one page if `maxObjectsInGet` allows.
    """
    largest = api.session.limits.max_objects_in_get
    page = max(1, min(page_size, largest))
    for attempt in range(1, MAX_RESTARTS + 1):
        result = await _collect(api, condition, page, by_id)
        if result.found is not None:
            listed = sorted(result.found, key=lambda m: (m.received or _EPOCH, m.id))
            return Found(listed, result.state)
        logger.info("Email/query: inconsistent pages, listing again (attempt %d)", attempt)
        if result.total is not None:
            page = max(page, min(result.total, largest))
    raise BackendUnavailable("the mailbox kept changing while it was being listed")


async def _collect(api: Api, condition: dict[str, Any], page: int, by_id: bool) -> _Pass:
    """One pass over the pages (RFC 8620 section 5.5: `position` and `limit`)."""
    found: dict[str, Listed] = {}
    position, state, total, emails = 0, None, None, None
    while position < MAX_MESSAGES:
        calls = _page_calls(api.account_id, condition, position, page, by_id)
        query, got = await api.call(*calls)
        state = query.get("queryState") if state is None else state
        emails = got.get("state") if emails is None else emails
        total = _integer(query.get("total"))
        if query.get("queryState") != state:
            return _Pass(None, total)
        ids = query.get("ids")
        if not isinstance(ids, list):
            raise BackendFailure("Email/query: no ids in the response")
        for entry in got.get("list") or []:
            listed = listed_entry(entry)
            found[listed.id] = listed
        position += len(ids)
        if _last_page(query, ids, page, position):
            complete = total is None or len(found) == total
            kept = emails if isinstance(emails, str) else None
            return _Pass(list(found.values()) if complete else None, total, kept)
    raise BackendFailure(f"Email/query: more than {MAX_MESSAGES} messages")


def sort_order(by_id: bool) -> list[dict[str, Any]]:
    """The Email/query sort (RFC 8621 4.4.2): receivedAt, then id where the server can."""
    sort: list[dict[str, Any]] = [{"property": "receivedAt", "isAscending": True}]
    if by_id:
        sort.append({"property": "id", "isAscending": True})
    return sort


def _page_calls(
    account: str, condition: dict[str, Any], position: int, page: int, by_id: bool
) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    query = {
        "accountId": account,
        "filter": condition,
        "sort": sort_order(by_id),
        "collapseThreads": False,
        "position": position,
        "limit": page,
        "calculateTotal": True,
    }
    # RFC 8620 3.7: "#ids" takes the ids from call "0" of this same request.
    reference = {"resultOf": "0", "name": "Email/query", "path": "/ids"}
    get = {"accountId": account, "#ids": reference, "properties": PROPERTIES}
    return ("Email/query", query), ("Email/get", get)


async def hidden_ids(api: Api, mailbox_id: str, keyword: str) -> set[str]:
    """The ids of the Mailbox's Emails that carry `keyword`, by Email/query pages."""
    page = max(1, api.session.limits.max_objects_in_get)
    condition = {"inMailbox": mailbox_id, "hasKeyword": keyword}
    found: set[str] = set()
    while len(found) < MAX_MESSAGES:
        query = {"accountId": api.account_id, "filter": condition, "position": len(found),
                 "limit": page, "collapseThreads": False}  # fmt: skip
        (reply,) = await api.call(("Email/query", query))
        ids = reply.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BackendFailure("Email/query: no ids in the response")
        found.update(ids)
        if len(ids) < page:
            return found
    raise BackendFailure(f"Email/query: more than {MAX_MESSAGES} messages")


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _last_page(query: dict[str, Any], ids: list[Any], asked: int, position: int) -> bool:
    total = _integer(query.get("total"))
    if total is not None:
        return position >= total or not ids
    limit = query.get("limit")  # RFC 8620 5.5: present when the server clamped ours
    effective = limit if isinstance(limit, int) and 0 < limit < asked else asked
    return len(ids) < effective


def listed_entry(entry: Any) -> Listed:
    if not isinstance(entry, dict):
        raise BackendFailure("Email/get: an entry is not an object")
    email_id, size = entry.get("id"), entry.get("size")
    if not isinstance(email_id, str) or not email_id:
        raise BackendFailure("Email/get: an Email without an id")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BackendFailure(f"Email/get: Email {email_id!r} has no valid size")
    ids = entry.get("messageId")
    first = ids[0] if isinstance(ids, list) and ids and isinstance(ids[0], str) else None
    return Listed(
        id=email_id,
        size=size,
        received=utc_datetime(entry.get("receivedAt")),  # RFC 8620 1.4 UTCDate
        # RFC 8621 4.1.2.3: messageId holds the ids without angle brackets; the core's hint
        # is the header field's value, as IMAP gives it.
        message_id=f"<{first}>" if first else None,
    )
