"""The maildrop listing from the last one: `Email/changes` instead of paging it all.

This module owns the JMAP side of the store's listing memory. The token keeps the Mailbox,
the hidden keyword and the Email `state` of the listing it describes; the next login asks
`Email/changes` (RFC 8620 section 5.2) for the Emails created, updated and destroyed since,
with an `Email/get` of the created and of the updated ones in the same request (result
references, RFC 8620 section 3.7; `maxChanges` keeps each within `maxObjectsInGet`). An
Email belongs to the listing when it is in the Mailbox and lacks the hidden keyword, as the
full listing's `inMailbox`/`notKeyword` filter says (RFC 8621 section 4.4.1); its content
never changes (RFC 8621 section 4.1), so a remembered entry stays right. `Email/changes`
rather than `Email/queryChanges`: servers may refuse the latter for a filtered query (Cyrus
answers `cannotCalculateChanges`), while every server must track Email state. A refused
state (`cannotCalculateChanges`) means a full listing (`backends.jmap.listing`). The
bridge orders the listing itself, by (receivedAt, id), as the full listing does. An Email
first seen is listed with `exact=False` (its `size` leaves out the CRLF POP3 adds to an
unterminated last line) until `JmapMailbox.measure` saves its exact size here; a full
listing keeps the exact sizes the memory held.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backends.jmap.api import Api, MethodError
from backends.jmap.listing import PROPERTIES, Listed, list_emails, listed_entry
from popbridge.contract import ListingMemory, ListingState, RemoteMessage, with_exact_sizes
from popbridge.errors import BackendFailure

logger = logging.getLogger(__name__)

TOKEN_VERSION = 2  # 1: sizes were the server's, yet stored as exact
MAX_ROUNDS = 1000  # Email/changes requests per login before a full listing is cheaper
_MEMBERSHIP = [*PROPERTIES, "mailboxIds", "keywords"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Token:
    """What a stored listing describes."""

    mailbox: str
    keyword: str | None
    state: str

    def dumps(self) -> str:
        data = {"v": TOKEN_VERSION, "mailbox": self.mailbox, "keyword": self.keyword,
                "state": self.state}  # fmt: skip
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Token | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION:
                return None
            token = cls(data["mailbox"], data["keyword"], data["state"])
        except (ValueError, KeyError, TypeError):
            return None
        return token if isinstance(token.mailbox, str) and isinstance(token.state, str) else None


@dataclass(frozen=True, slots=True)
class Query:
    """The listing a login asks for: this Mailbox, without this keyword."""

    mailbox: str
    keyword: str | None
    condition: dict[str, Any]
    page_size: int
    by_id: bool

    def follows(self, token: Token) -> bool:
        """Whether `token` describes this query's listing."""
        return (token.mailbox, token.keyword) == (self.mailbox, self.keyword)

    def keeps(self, entry: dict[str, Any]) -> bool:
        """Whether an Email/get entry passes the full listing's filter (RFC 8621 4.4.1)."""
        mailboxes, keywords = entry.get("mailboxIds"), entry.get("keywords")
        if not isinstance(mailboxes, dict) or not isinstance(keywords, dict):
            raise BackendFailure("Email/get: an Email without mailboxIds or keywords")
        hidden = self.keyword is not None and keywords.get(self.keyword) is True
        return mailboxes.get(self.mailbox) is True and not hidden


async def listing(api: Api, query: Query, memory: ListingMemory | None) -> list[RemoteMessage]:
    """The Mailbox's listing, oldest first: brought up to date from `memory` where the
    server can say what changed, else in full; the result is saved to `memory`."""
    previous = await memory.load() if memory is not None else None
    token = Token.loads(previous.token) if previous is not None else None
    found = None
    state: str | None
    if previous is not None and token is not None and query.follows(token):
        found = await _since(api, query, token.state, previous.messages)
    if found is not None:
        messages, state = found
    else:
        full = await list_emails(api, query.condition, query.page_size, by_id=query.by_id)
        messages, state = [remote(entry) for entry in full.listed], full.state
        if previous is not None and token is not None:  # Email content never changes
            exact = {m.identity: m.size for m in previous.messages if m.exact}
            messages = with_exact_sizes(messages, exact)
    if memory is not None and state is not None:
        kept = ListingState(Token(query.mailbox, query.keyword, state).dumps(), tuple(messages))
        if kept != previous:
            await memory.save(kept)
    return messages


async def _since(
    api: Api, query: Query, since: str, known: tuple[RemoteMessage, ...]
) -> tuple[list[RemoteMessage], str] | None:
    """The listing from `known` and the Emails changed since `since`; None: list in full."""
    kept = {m.identity: m for m in known}
    state = since
    for _ in range(MAX_ROUNDS):
        try:
            changes, *got = await api.call(*_calls(api, state))
        except MethodError as error:
            if error.kind != "cannotCalculateChanges":
                raise
            logger.info("Email/changes: %s; listing in full", error.kind)
            return None
        destroyed, state, more = _parse(changes)
        for email_id in destroyed:
            kept.pop(email_id, None)
        for response in got:
            for gone in response.get("notFound") or []:
                kept.pop(str(gone), None)
            for entry in response.get("list") or []:
                _apply(query, kept, entry)
        if not more:
            return sorted(kept.values(), key=lambda m: (m.received or _EPOCH, m.identity)), state
    return None


def _calls(api: Api, state: str) -> list[tuple[str, dict[str, Any]]]:
    """Email/changes, and Email/get of what it created and updated (RFC 8620 3.7)."""
    limit = max(1, api.session.limits.max_objects_in_get)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("Email/changes", {"accountId": api.account_id, "sinceState": state, "maxChanges": limit})
    ]
    for path in ("/created", "/updated"):
        reference = {"resultOf": "0", "name": "Email/changes", "path": path}
        calls.append(("Email/get", {"accountId": api.account_id, "#ids": reference,
                                    "properties": _MEMBERSHIP}))  # fmt: skip
    return calls


def _parse(changes: dict[str, Any]) -> tuple[list[str], str, bool]:
    destroyed, state = changes.get("destroyed"), changes.get("newState")
    more = changes.get("hasMoreChanges")
    if not isinstance(destroyed, list) or not isinstance(state, str) or not isinstance(more, bool):
        raise BackendFailure("Email/changes: malformed response")
    return [str(email_id) for email_id in destroyed], state, more


def _apply(query: Query, kept: dict[str, RemoteMessage], entry: Any) -> None:
    listed = listed_entry(entry)  # checks that it is an object with an id and a size
    if query.keeps(entry):
        kept.setdefault(listed.id, remote(listed))
    else:
        kept.pop(listed.id, None)


def remote(entry: Listed) -> RemoteMessage:
    """An Email as first seen: its size is exact only when empty (nothing to end)."""
    return RemoteMessage(
        identity=entry.id, size=entry.size, message_id=entry.message_id, received=entry.received,
        exact=entry.size == 0,
    )  # fmt: skip
