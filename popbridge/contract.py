"""The backend contract: what the core asks of a mail store, and what it gets back.

A backend (IMAP, JMAP, ...) turns a set of credentials into a `Mailbox`: a live view of one
upstream folder that can list its messages, stream one message's bytes, and apply a
`Disposition` to a set of messages. Backends speak only in opaque *identities*; they never
see POP3 message numbers or UIDLs, which belong to the core. Only the session's UPDATE step
calls `Mailbox.dispose` (RFC 1939 section 6). Backends are found by name through the
`popbridge.backends` entry-point group, so the core never imports a backend module.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, Protocol

from popbridge.errors import ConfigError

ENTRY_POINT_GROUP = "popbridge.backends"


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    """One message as the backend lists it.

    `size` is the number of octets RETR will send: CRLF line ends, before dot-stuffing
    (RFC 1939 section 11). A backend that cannot know it without reading the message says
    `exact=False` and gives its best estimate (the upstream's count, off by the CRLF POP3
    adds to an unterminated last line; 0 when it has none); the core asks
    `SizeMeasurer.measure` for the exact one before it tells a client a size. `message_id`
    and `received` are hints that let the core keep UIDLs stable when identities change.
    """

    identity: str
    size: int
    message_id: str | None = None
    received: datetime | None = None
    version: str | None = None  # a content version where content can change (Graph changeKey)
    exact: bool = True


@dataclass(frozen=True, slots=True)
class ListingState:
    """What a backend keeps between sessions for one upstream mailbox.

    `token` is the backend's own change token and whatever it needs to trust it (IMAP:
    folder, UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT; JMAP: the Email state; Graph: a deltaLink;
    Gmail: a historyId), opaque to the core. `messages` is the listing the token describes,
    exact sizes included, so a size measured once (a last line without CRLF, a Graph or
    Gmail message counted by downloading it) is never measured again.
    """

    token: str
    messages: tuple[RemoteMessage, ...]


class ListingMemory(Protocol):
    """The store's memory of one upstream mailbox's last listing, offered to `Mailbox.list`.

    A backend that can list incrementally loads the state, asks the upstream only for what
    changed since its token, and saves the new state; one that cannot still reuses the
    sizes it measured. A token the upstream no longer accepts means a full listing. The
    listing returned must always equal what a full listing would give.
    """

    async def load(self) -> ListingState | None: ...

    async def save(self, state: ListingState) -> None: ...


class DispositionKind(enum.Enum):
    """What happens upstream to a message the client deleted."""

    EXPUNGE = "expunge"
    TRASH = "trash"
    MOVE = "move"
    SEEN = "seen"
    KEYWORD = "keyword"


@dataclass(frozen=True, slots=True)
class Disposition:
    """A disposition with its argument: the folder for MOVE, the keyword for KEYWORD."""

    kind: DispositionKind
    folder: str | None = None
    keyword: str | None = None

    @property
    def hides_keyword(self) -> str | None:
        """The keyword whose messages a listing must hide, if this disposition sets one."""
        return self.keyword if self.kind is DispositionKind.KEYWORD else None


@dataclass(frozen=True, slots=True)
class DisposeResult:
    """The identities a dispose call could not handle; empty when all succeeded."""

    failed: frozenset[str] = field(default_factory=frozenset)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the POP3 client proved, passed to the backend to open the mailbox.

    `secret` is a password for `mechanism == "password"` or a bearer token for
    `mechanism == "oauth2"`. Never log it; `repr` hides it. `client_address` is the POP3
    client's IP address ("" when unknown), which a backend may pass on to its upstream.
    """

    user: str
    secret: str = field(repr=False)
    mechanism: str = "password"
    client_address: str = ""

    @property
    def lock_key(self) -> str:
        """The canonical account name the maildrop lock is keyed on (conformance P-7.3)."""
        return self.user.casefold()


class Mailbox(Protocol):
    """A live, opened upstream folder. All methods apply their own deadline."""

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> Sequence[RemoteMessage]:
        """Every visible message, oldest first; never those already flagged as deleted.

        With `memory`, the backend may start from the listing it saved last time and must
        save the new one (see `ListingMemory`).
        """
        ...

    def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        """Stream the message's raw bytes in bounded chunks.

        With `body_lines`, the backend may stop once the header and that many body lines
        were sent; the core trims any excess. Raises `MessageGone` if it vanished.
        """
        ...

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        """Apply `how` to exactly these identities and report the ones that failed."""
        ...

    async def close(self) -> None:
        """Log out; never removes anything (no CLOSE, no plain EXPUNGE).

        The session calls it exactly once per opened mailbox; a backend need not make a
        second call safe.
        """
        ...


def withheld_by(mailbox: Mailbox) -> frozenset[str]:
    """Identities the mailbox's last `list` left out on purpose though they are still in the
    folder (a hidden keyword, a window), if the backend says so with a `withheld`
    attribute. The UID map keeps their UIDLs from passing to a content-identical copy."""
    found = getattr(mailbox, "withheld", None)
    return frozenset(found) if found else frozenset()


class SizeMeasurer(Protocol):
    """What a mailbox that lists sizes with `exact=False` also offers (found by `measurer_of`)."""

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The exact sizes of these listed messages, and remembers them in the listing memory
        `list` was given, so no later session measures them again. A message it cannot
        measure (gone, refused) is left out: its listed size stands, and RETR measures it."""
        ...


def with_exact_sizes(
    messages: Sequence[RemoteMessage], sizes: Mapping[str, int]
) -> list[RemoteMessage]:
    """`messages` with the exact sizes measured since (identity -> octets) put in place."""
    if not sizes:
        return list(messages)
    return [_with_size(message, sizes.get(message.identity)) for message in messages]


def _with_size(message: RemoteMessage, size: int | None) -> RemoteMessage:
    if size is None or (size == message.size and message.exact):
        return message
    return dataclasses.replace(message, size=size, exact=True)


async def remember_exact_sizes(memory: ListingMemory | None, sizes: Mapping[str, int]) -> None:
    """Put sizes `SizeMeasurer.measure` found into the listing `memory` holds, so no later
    session measures them again."""
    state = await memory.load() if memory is not None and sizes else None
    if memory is not None and state is not None:
        await memory.save(ListingState(state.token, tuple(with_exact_sizes(state.messages, sizes))))


def measurer_of(mailbox: Mailbox) -> SizeMeasurer | None:
    """The mailbox as a `SizeMeasurer`, when it has a `measure` method."""
    return mailbox if callable(getattr(mailbox, "measure", None)) else None  # type: ignore[return-value]


async def close_chunks(chunks: AsyncIterator[bytes]) -> None:
    """Close what `Mailbox.fetch` returned, also when it was not read to the end (TOP, a
    client gone): an async generator's cleanup (a partial fetch in flight, an HTTP
    connection) runs now, not whenever it is collected."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


class Backend(Protocol):
    """A configured upstream that opens mailboxes."""

    async def open(self, credentials: Credentials) -> Mailbox:
        """Authenticate and select the folder; raises `AuthFailed` or `Backend*` errors."""
        ...

    async def check(self) -> list[str]:
        """Probe connectivity without credentials; returns human-readable findings."""
        ...


def expire_policy(backend: Backend) -> str | None:
    """The RFC 2449 §6.7 EXPIRE value that tells clients the truth about this backend.

    A backend may say it with an `expire` attribute: "NEVER" when nothing leaves the
    maildrop without a DELE, a number of days when messages leave it on their own after
    that long (a date window), or None when they can leave in a way no day count
    describes (a window of the newest N), in which case EXPIRE is not announced. A backend
    without the attribute keeps every message until DELE: "NEVER".
    """
    value = getattr(backend, "expire", "NEVER")
    return value if value is None or isinstance(value, str) else None


def check_disposition(backend: Backend, how: Disposition) -> None:
    """Let the backend refuse, at startup and in `check`, a disposition it cannot carry out
    as configured (a Gmail permanent delete without the scope for it), with an
    `accept_disposition` method that raises ConfigError. Without one, every one is fine."""
    accept = getattr(backend, "accept_disposition", None)
    if accept is not None:
        accept(how)


def window_expiry(newest: int | None, days: int | None) -> str | None:
    """The `expire` of a backend with a listing window (see `expire_policy`): a date window
    lets messages go after its days; a window of the newest N moves with every arrival,
    which no day count describes; no window keeps every message until DELE."""
    if newest is not None:
        return None
    return str(days) if days is not None else "NEVER"


class BackendFactory(Protocol):
    """The object an entry point names: builds a backend from its config table."""

    def __call__(self, settings: Mapping[str, Any], *, source: str) -> Backend: ...


def load_backend(name: str, settings: Mapping[str, Any], *, source: str) -> Backend:
    """Find the backend registered as `name` and build it from `settings`."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise ConfigError(f"{source}: backend.type: unknown backend {name!r} (known: {known})")
    factory: BackendFactory = next(iter(found)).load()
    return factory(settings, source=source)
