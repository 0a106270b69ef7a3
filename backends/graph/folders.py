"""Graph mail folders by well-known name or by display-name path: the maildrop and targets.

This module owns finding a folder's id: a well-known name (Graph mailFolder resource:
`inbox`, `deleteditems`, `archive`, `junkemail`, `sentitems`, ...) is asked for directly, any
other path `Parent/Child` is walked from the top-level folders through `childFolders`,
comparing display names exactly (a path may start with a well-known name, as `inbox/Scans`).
Folder ids are not immutable (only message ids are), so they are looked up at every login.
Names are never put into an OData `$filter`: the lists are read and compared here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from backends.graph.transport import Transport, status_error
from popbridge.errors import BackendFailure

WELL_KNOWN = frozenset({
    "inbox", "deleteditems", "archive", "junkemail", "sentitems", "drafts", "outbox",
    "clutter", "conversationhistory", "scheduled", "msgfolderroot",
})  # fmt: skip
_SELECT = "$select=id,displayName&$top=250"
_MAX_PAGES = 40  # 10,000 folders on one level is already absurd


@dataclass(frozen=True, slots=True)
class Folder:
    id: str
    name: str


async def resolve(transport: Transport, path: str) -> Folder | None:
    """The folder `path` names, or None if there is none."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return None
    first = parts[0]
    current: Folder | None
    if first.lower() in WELL_KNOWN:
        current = await _well_known(transport, first.lower())
    else:
        current = _pick(await _children(transport, "/me/mailFolders?" + _SELECT), first)
    for name in parts[1:]:
        if current is None:
            return None
        listing = f"/me/mailFolders/{quote(current.id, safe='')}/childFolders?{_SELECT}"
        current = _pick(await _children(transport, listing), name)
    return current


async def _well_known(transport: Transport, name: str) -> Folder | None:
    reply = await transport.call("GET", f"/me/mailFolders/{name}?$select=id,displayName")
    if reply.status == 404:
        return None  # e.g. no archive folder: One-Click Archive never set up
    if reply.status >= 300:
        raise status_error(reply.status, reply.url, reply.code)
    return _folder(reply.json())


async def _children(transport: Transport, path: str) -> list[Folder]:
    found: list[Folder] = []
    link: str | None = path
    for _ in range(_MAX_PAGES):
        if link is None:
            return found
        page = await transport.json("GET", link)
        values = page.get("value") if isinstance(page, dict) else None
        found += (_folder(entry) for entry in values or ())
        following = page.get("@odata.nextLink") if isinstance(page, dict) else None
        link = following if isinstance(following, str) else None
    raise BackendFailure("too many folders on one level")


def _folder(entry: Any) -> Folder:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise BackendFailure("a mail folder without an id")
    name = entry.get("displayName")
    return Folder(entry["id"], name if isinstance(name, str) else "")


def _pick(folders: list[Folder], name: str) -> Folder | None:
    found = [f for f in folders if f.name == name]
    if len(found) > 1:
        raise BackendFailure(f"more than one folder is named {name!r}")
    return found[0] if found else None
