"""Reading the maildrop label: message ids by page, one message's labels, its measured size.

This module owns the read calls behind a listing: users.messages.list with `labelIds`
(several ids AND together), `includeSpamTrash=false`, `maxResults` up to 500 and
`pageToken` until no `nextPageToken` is returned (its `resultSizeEstimate` is only an
estimate, so it is never used); users.messages.get with `format=minimal` for messages'
labels, `internalDate` and `sizeEstimate` (listed as not exact), 50 to a batch request; the
same with `format=raw` streamed through `backends.gmail.rawstream` to count the octets RETR
will send; and users.history.list from a
stored historyId, whose 404 ("too old", typically after about a week) is `HistoryExpired`.
The API's order is only roughly newest first; the mailbox sorts by (internalDate, id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from backends.gmail.batch import get_many
from backends.gmail.labels import USER_PATH
from backends.gmail.rawstream import RawScanner
from backends.gmail.transport import NotFound, Transport
from popbridge.errors import BackendFailure, MessageGone
from popbridge.upstream.lines import Normaliser

MAX_MESSAGES = 1_000_000  # a runaway server must not page forever
MAX_PAGES = 20_000
_ID = re.compile(r"[0-9a-f]{1,64}")  # Gmail message ids are lowercase hex
HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]


class HistoryExpired(Exception):
    """history.list refused the stored historyId (404): a full listing is needed."""


@dataclass(frozen=True, slots=True)
class Described:
    """One message's labels, arrival time (internalDate) and Gmail's estimate of its size."""

    id: str
    labels: frozenset[str]
    received: datetime | None
    estimate: int = 0


@dataclass(frozen=True, slots=True)
class Measured:
    id: str
    size: int
    labels: frozenset[str]
    received: datetime | None


def is_message_id(identity: str) -> bool:
    return _ID.fullmatch(identity) is not None


def message_path(identity: str) -> str:
    if not is_message_id(identity):
        raise MessageGone(f"{identity[:80]!r} is not a Gmail message id")
    return f"{USER_PATH}/messages/{identity}"


async def list_ids(transport: Transport, label_ids: list[str]) -> list[str]:
    """Every message id carrying all of `label_ids`, in the API's order, without repeats."""
    found: dict[str, None] = {}
    params: dict[str, str | int | list[str]] = {
        "labelIds": label_ids,
        "includeSpamTrash": "false",
        "maxResults": transport.settings.page_size,
        "fields": "messages/id,nextPageToken",
    }
    for _ in range(MAX_PAGES):
        reply = await transport.call("GET", f"{USER_PATH}/messages", "messages.list", params=params)
        if not isinstance(reply, dict):
            raise BackendFailure("messages.list: the reply is not an object")
        for entry in reply.get("messages") or []:
            message_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(message_id, str) or not is_message_id(message_id):
                raise BackendFailure("messages.list: a message without a usable id")
            found[message_id] = None
        token = reply.get("nextPageToken")
        if not token:
            return list(found)
        if not isinstance(token, str) or len(found) > MAX_MESSAGES:
            raise BackendFailure("messages.list: unusable paging")
        params["pageToken"] = token
    raise BackendFailure(f"messages.list: more than {MAX_PAGES} pages")


async def describe_many(transport: Transport, ids: Iterable[str]) -> dict[str, Described | None]:
    """`describe` for many messages, in batches of calls (one round trip per 50)."""
    query = urlencode({"format": "minimal", "fields": "id,labelIds,internalDate,sizeEstimate"})
    paths = {identity: f"{message_path(identity)}?{query}" for identity in ids}
    found = await get_many(transport, paths)
    described: dict[str, Described | None] = {}
    for identity, reply in found.items():
        if reply is not None and not isinstance(reply, dict):
            raise BackendFailure("messages.get: the reply is not an object")
        described[identity] = (
            None
            if reply is None
            else Described(identity, label_set(reply), received(reply), _estimate(reply))
        )
    return described


def _estimate(fields: dict[str, Any]) -> int:
    """sizeEstimate: only a hint (the listing says it is not exact), 0 when unusable."""
    value = fields.get("sizeEstimate")
    return value if isinstance(value, int) and 0 <= value < 1 << 40 else 0


async def measure(transport: Transport, identity: str) -> Measured | None:
    """Download the message once and count it as RETR will send it; None if it is gone."""
    params = {"format": "raw", "fields": "id,labelIds,internalDate,raw"}
    scanner, normaliser = RawScanner(), Normaliser()
    try:
        async with transport.stream(message_path(identity), "messages.get", params=params) as raw:
            async for piece in raw:
                normaliser.feed(scanner.feed(piece))
    except MessageGone:
        return None
    scanner.finish()
    normaliser.finish()
    fields = scanner.fields
    return Measured(identity, normaliser.octets, label_set(fields), received(fields))


async def history(transport: Transport, start: str) -> tuple[set[str], str]:
    """Ids of the messages changed since `start` (added, deleted, labelled, unlabelled)
    and the mailbox's historyId now; HistoryExpired on 404."""
    params: dict[str, str | int | list[str]] = {
        "startHistoryId": start,
        "historyTypes": HISTORY_TYPES,
        "maxResults": 500,
    }
    changed: set[str] = set()
    current = start
    for _ in range(MAX_PAGES):
        try:
            reply = await transport.call(
                "GET", f"{USER_PATH}/history", "history.list", params=params
            )
        except NotFound:
            raise HistoryExpired(start) from None
        if not isinstance(reply, dict):
            raise BackendFailure("history.list: the reply is not an object")
        for record in reply.get("history") or []:
            _collect(record, changed)
        current = str(reply.get("historyId") or current)
        token = reply.get("nextPageToken")
        if not token:
            return changed, current
        params["pageToken"] = str(token)
    raise BackendFailure(f"history.list: more than {MAX_PAGES} pages")


def _collect(record: Any, changed: set[str]) -> None:
    if not isinstance(record, dict):
        raise BackendFailure("history.list: a record is not an object")
    for key in ("messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"):
        for entry in record.get(key) or []:
            message = entry.get("message", entry) if isinstance(entry, dict) else None
            message_id = message.get("id") if isinstance(message, dict) else None
            if isinstance(message_id, str) and is_message_id(message_id):
                changed.add(message_id)


def label_set(fields: dict[str, Any]) -> frozenset[str]:
    labels = fields.get("labelIds")  # left out when a message has no label at all
    if labels is None:
        return frozenset()
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise BackendFailure("messages.get: unusable labelIds")
    return frozenset(labels)


def received(fields: dict[str, Any]) -> datetime | None:
    """internalDate: milliseconds since the epoch, as a string (int64 in JSON)."""
    value = fields.get("internalDate")
    try:
        millis = int(value) if isinstance(value, (str, int)) else None
    except ValueError:
        return None
    if millis is None or not 0 <= millis < 1 << 46:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
