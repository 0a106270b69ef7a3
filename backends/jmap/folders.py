"""JMAP Mailboxes by role or by name: the maildrop, the trash and the `move` target.

This module owns finding Mailbox ids (RFC 8621 section 2): the inbox and the trash by their
`role` (unique per account, section 2), any other by its name path, `Parent/Child`, built
from each Mailbox's `name` and `parentId`. Names are compared exactly, except that `INBOX`
also names the Mailbox whose role is inbox, as it does in IMAP. Ambiguous names are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.jmap.api import Api
from popbridge.errors import BackendFailure

_PROPERTIES = ["id", "name", "parentId", "role"]
_MAX_DEPTH = 64  # parentId chains are acyclic (RFC 8621 2.5); this guards a broken server


@dataclass(frozen=True, slots=True)
class Folder:
    """One Mailbox: its id, its name path, and its role if it has one."""

    id: str
    path: str
    role: str | None


async def load(api: Api) -> list[Folder]:
    """Every Mailbox of the account (Mailbox/get with `ids: null`, RFC 8620 section 5.1)."""
    arguments = {"accountId": api.account_id, "ids": None, "properties": _PROPERTIES}
    (response,) = await api.call(("Mailbox/get", arguments))
    entries = response.get("list")
    if not isinstance(entries, list):
        raise BackendFailure("Mailbox/get: no list in the response")
    by_id = {e["id"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)}
    return [_folder(entry, by_id) for entry in by_id.values()]


def _folder(entry: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> Folder:
    names: list[str] = []
    current: dict[str, Any] | None = entry
    for _ in range(_MAX_DEPTH):
        if current is None:
            break
        name = current.get("name")
        names.append(name if isinstance(name, str) else "")
        parent = current.get("parentId")
        current = by_id.get(parent) if isinstance(parent, str) else None
    role = entry.get("role")
    return Folder(entry["id"], "/".join(reversed(names)), role if isinstance(role, str) else None)


def by_role(folders: list[Folder], role: str) -> Folder | None:
    """The Mailbox with `role` (RFC 8621 section 2: at most one per account)."""
    return next((f for f in folders if f.role == role), None)


def by_path(folders: list[Folder], path: str) -> Folder | None:
    """The Mailbox named `path`; `INBOX` (any case) is the inbox role, as in IMAP."""
    if path.upper() == "INBOX":
        inbox = by_role(folders, "inbox")
        if inbox is not None:
            return inbox
    found = [f for f in folders if f.path == path]
    if len(found) > 1:
        raise BackendFailure(f"more than one mailbox is named {path!r}")
    return found[0] if found else None
