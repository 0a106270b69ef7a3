"""The maildrop listing, full or brought up to date from a historyId, and measuring sizes.

This module owns `Lister`: a full listing is users.messages.list on the maildrop label,
minus the messages that also carry the hidden keyword's label (a second list with both
labels: `labelIds` AND together), with the historyId read (users.getProfile) before the
listing so nothing that changes during it is missed next time. With the store's listing
memory and a historyId Gmail still accepts, only the messages history.list names are looked
at again; on 404 the listing is full. A message not in the memory is described (`format=
minimal`, 50 to a batch request) for its arrival time and `sizeEstimate`, and listed with
`exact=False`. A message's content never changes in Gmail, so a size measured once
(`measure_sizes`: one `format=raw` download each, `max_in_flight` at a time, when the core
asks) is remembered in the listing memory and stays valid.
Cost for N new messages: a login 5 units each (N = 3,000 is the per-user minute) and no
download; telling their sizes 5 units and one download each, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from backends.gmail.labels import USER_PATH
from backends.gmail.listing import (
    Described,
    HistoryExpired,
    describe_many,
    history,
    list_ids,
    measure,
)
from backends.gmail.transport import Transport
from popbridge.contract import ListingState, RemoteMessage
from popbridge.errors import BackendFailure

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Token:
    """What the listing memory keeps besides the listing: the labels it was made for, the
    historyId it is current at, and the messages in the maildrop it hid."""

    label: str
    hidden: str | None  # the hidden keyword's label id, None if there was no such label
    history: str
    withheld: frozenset[str]
    keyword: str | None = None  # the hidden keyword, compared without case
    user: str = ""  # the Gmail address the listing is of, compared without case

    def serves(self, label: str, keyword: str | None, hidden: str | None) -> bool:
        """Whether this token describes the listing asked for now. A keyword label created
        since (by a disposition) carries only messages history.list reports; a token without
        a historyId (sizes kept from a listing that failed part way, as kept before sizes
        were measured on request) serves none, though its sizes are still used."""
        if (self.label, self.keyword) != (label, keyword) or not self.history:
            return False
        return self.hidden == hidden or (self.hidden is None and keyword is not None)

    def dump(self) -> str:
        data = {"label": self.label, "hidden": self.hidden, "history": self.history,
                "withheld": sorted(self.withheld), "keyword": self.keyword,
                "user": self.user}  # fmt: skip
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> Token | None:
        try:
            data = json.loads(text)
            return cls(str(data["label"]), data["hidden"], str(data["history"]),
                       frozenset(map(str, data["withheld"])), data["keyword"],
                       str(data["user"]))  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


async def bounded(
    items: Iterable[str], work: Callable[[str], Awaitable[T]], limit: int
) -> dict[str, T]:
    """`work` on every item, at most `limit` at a time; the first error leaves."""
    queue = list(items)[::-1]  # popped from the end: in the order given
    results: dict[str, T] = {}

    async def worker() -> None:
        while queue:
            item = queue.pop()
            results[item] = await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(len(queue), limit)):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None
    return results


class Lister:
    """Lists one maildrop label for one opened mailbox."""

    def __init__(self, transport: Transport, label: str, keyword: str | None, user: str) -> None:
        self._transport = transport
        self._label = label
        self._keyword = keyword.casefold() if keyword is not None else None
        self._user = user.casefold()

    async def listing(
        self, hidden: str | None, state: ListingState | None
    ) -> tuple[list[RemoteMessage], Token]:
        """The listing and its token; `hidden` is the keyword's label id if it exists."""
        token = Token.load(state.token) if state is not None else None
        if state is None or token is None or token.user != self._user:
            state, token = None, None  # ids are only unique within one Gmail account
        known = {m.identity: m for m in state.messages} if state is not None else {}
        if token is not None and token.serves(self._label, self._keyword, hidden):
            try:
                return await self._changed(token, known, hidden)
            except HistoryExpired as expired:
                logger.info("historyId %s no longer accepted: listing everything", expired)
        return await self._full(hidden, known)

    async def _full(
        self, hidden: str | None, known: dict[str, RemoteMessage]
    ) -> tuple[list[RemoteMessage], Token]:
        profile = await self._transport.call("GET", f"{USER_PATH}/profile", "getProfile")
        current = profile.get("historyId") if isinstance(profile, dict) else None
        if not isinstance(current, (str, int)):
            raise BackendFailure("getProfile: no historyId")
        ids = await list_ids(self._transport, [self._label])
        held = set(await list_ids(self._transport, [self._label, hidden])) if hidden else set()
        visible = [i for i in ids if i not in held]
        found = await describe_many(self._transport, (i for i in visible if i not in known))
        described = {i: d for i, d in found.items() if d is not None and self._label in d.labels}
        visible = [i for i in visible if i in known or i in described]  # gone since: left out
        return self._sized(visible, known, described), self._token(
            hidden, str(current), frozenset(held)
        )

    async def _changed(
        self, token: Token, known: dict[str, RemoteMessage], hidden: str | None
    ) -> tuple[list[RemoteMessage], Token]:
        changed, current = await history(self._transport, token.history)
        now = await describe_many(self._transport, changed)
        visible = [i for i in known if i not in changed]
        held = {i for i in token.withheld if i not in changed}
        described: dict[str, Described] = {}
        for identity, found in now.items():
            if found is None or self._label not in found.labels:
                continue
            if hidden is not None and hidden in found.labels:
                held.add(identity)
            else:
                visible.append(identity)
                described[identity] = found
        if changed:
            logger.info("history since %s: %d message(s) changed", token.history, len(changed))
        token = self._token(hidden, current, frozenset(held))
        return self._sized(visible, known, described), token

    def _token(self, hidden: str | None, history: str, held: frozenset[str]) -> Token:
        return Token(self._label, hidden, history, held, self._keyword, self._user)

    def _sized(
        self, ids: list[str], known: dict[str, RemoteMessage], described: dict[str, Described]
    ) -> list[RemoteMessage]:
        """The messages, sorted: remembered ones as remembered, new ones with Gmail's
        estimate, not exact (`measure_sizes` settles them)."""
        result = [known[i] if i in known else _estimated(described[i]) for i in ids]
        return sorted(result, key=lambda m: (m.received or _EPOCH, m.identity))


def _estimated(found: Described) -> RemoteMessage:
    return RemoteMessage(found.id, found.estimate, received=found.received, exact=False)


async def measure_sizes(
    transport: Transport, label: str, identities: Iterable[str], sizes: dict[str, int]
) -> None:
    """Download each message once and count it as RETR sends it, `max_in_flight` at a time,
    into `sizes`; one deleted or no longer in `label` is left out."""

    async def one(identity: str) -> None:
        found = await measure(transport, identity)
        if found is not None and label in found.labels:
            sizes[identity] = found.size

    todo = list(identities)
    if todo:
        logger.info("measuring %d message(s) not measured before", len(todo))
    await bounded(todo, one, transport.settings.max_in_flight)
