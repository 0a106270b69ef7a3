"""Incremental listing: the folder as it was last time, brought up to date with a delta query.

This module owns `messages/delta` (Graph delta-query-messages): a round asks for pages of
`page_size` (`Prefer: odata.maxpagesize`) and follows `@odata.nextLink` until an
`@odata.deltaLink`, which the listing memory keeps for the next
login. Entries with `@removed` left the folder (deleted or moved away); any other entry was
created or changed and carries the selected properties. A delta round may repeat an entry,
so changes are applied by id. A token Graph no longer accepts (410 Gone, SyncStateNotFound)
means a full round. Without a remembered token, the first round returns every message in the
folder, and one more round at once picks up what changed while it was paged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from backends.graph.listing import SELECT, Listed, folder_path, listed_entry
from backends.graph.transport import Transport, status_error
from popbridge.contract import ListingState, RemoteMessage
from popbridge.errors import BackendFailure

logger = logging.getLogger(__name__)

EXPIRED_CODES = frozenset({"SyncStateNotFound", "syncStateNotFound", "SyncStateInvalid"})
MAX_PAGES = 10_000
MAX_WITHHELD = 10_000  # hidden ids kept in the token; past it the token keeps none


class DeltaExpired(Exception):
    """Graph no longer accepts the delta token: list everything again."""


@dataclass(slots=True)
class Round:
    """What one delta round reported."""

    changed: dict[str, Listed] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    link: str = ""


@dataclass(frozen=True, slots=True)
class Token:
    """What the listing memory keeps besides the messages: the folder, the hidden category,
    the delta link, and the ids hidden by that category (up to MAX_WITHHELD of them)."""

    folder: str
    hidden: str | None
    link: str
    withheld: frozenset[str] = frozenset()

    def dump(self) -> str:
        withheld = sorted(self.withheld) if len(self.withheld) <= MAX_WITHHELD else []
        data = {"graph": 2, "folder": self.folder, "hidden": self.hidden, "delta": self.link,
                "withheld": withheld}  # fmt: skip
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> Token | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("graph") != 2:
            return None
        folder, hidden, link = data.get("folder"), data.get("hidden"), data.get("delta")
        if not isinstance(folder, str) or not isinstance(link, str):
            return None
        ids = data.get("withheld")
        withheld = frozenset(i for i in ids if isinstance(i, str)) if isinstance(ids, list) else ()
        return cls(folder, hidden if isinstance(hidden, str) else None, link, frozenset(withheld))


def first_link(folder_id: str) -> str:
    query = urlencode({"$select": SELECT}, safe="$,", quote_via=quote)
    return f"{folder_path(folder_id)}/messages/delta?{query}"


async def run(transport: Transport, link: str) -> Round:
    """One delta round from `link`; DeltaExpired if Graph refuses the token."""
    found = Round()
    current: str | None = link
    page_size = transport.settings.page_size
    for _ in range(MAX_PAGES):
        if current is None:
            return found
        reply = await transport.call("GET", current, page_size=page_size)
        if reply.status == 410 or (reply.status >= 400 and reply.code in EXPIRED_CODES):
            raise DeltaExpired(reply.code or str(reply.status))
        if reply.status >= 300:
            raise status_error(reply.status, reply.url, reply.code)
        current = _apply_page(found, reply.json())
    raise BackendFailure("a delta round did not end")


def _apply_page(found: Round, page: Any) -> str | None:
    """Record one page; the next link, or None once the deltaLink arrived."""
    values = page.get("value") if isinstance(page, dict) else None
    if not isinstance(values, list):
        raise BackendFailure("a delta page has no value")
    for entry in values:
        if isinstance(entry, dict) and "@removed" in entry:
            removed = entry.get("id")
            if isinstance(removed, str):
                found.removed.add(removed)
                found.changed.pop(removed, None)
            continue
        listed = listed_entry(entry)
        found.changed[listed.id] = listed
        found.removed.discard(listed.id)
    following, final = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
    if isinstance(final, str):
        found.link = final
        return None
    if not isinstance(following, str):
        raise BackendFailure("a delta page has neither a nextLink nor a deltaLink")
    return following


def remembered(state: ListingState) -> dict[str, Listed]:
    """The remembered listing by id (its hidden messages were left out when it was saved)."""
    return {m.identity: _as_listed(m) for m in state.messages}


def _as_listed(message: RemoteMessage) -> Listed:
    return Listed(message.identity, message.version, message.received, message.message_id, ())


def merge(
    known: dict[str, Listed], withheld: frozenset[str], rounds: list[Round], hidden: str | None
) -> tuple[list[Listed], frozenset[str]]:
    """What was known with `rounds` applied: the folder now without `hidden` messages, and
    the ids of those hidden ones."""
    current = dict(known)
    held = set(withheld)
    for found in rounds:
        for gone in found.removed:
            current.pop(gone, None)
            held.discard(gone)
        for message_id, listed in found.changed.items():
            if hidden is None or hidden not in {c.casefold() for c in listed.categories}:
                current[message_id] = listed
                held.discard(message_id)
            else:
                current.pop(message_id, None)
                held.add(message_id)
    return list(current.values()), frozenset(held)
