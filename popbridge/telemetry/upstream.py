"""Times every call a session makes upstream: one histogram sample per call, errors by kind.

A session's mailbox is wrapped once, when it is opened, so no backend needs to know about
metrics: `open`, `list`, `fetch` (until the stream is read to its end or closed), `dispose`
and `close` each record their duration under the backend's name, and an exception under its
class name. The wrapper changes nothing else: what the backend returns or raises is what the
session gets.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import TypeVar

from popbridge.contract import (
    Backend,
    Credentials,
    DisposeResult,
    Disposition,
    ListingMemory,
    Mailbox,
    RemoteMessage,
    close_chunks,
    measurer_of,
    withheld_by,
)
from popbridge.telemetry.metrics import UPSTREAM_ERRORS, UPSTREAM_SECONDS

_T = TypeVar("_T")


def backend_name(implementation: object) -> str:
    """A label for the backend an object belongs to: `backends.imap.x` is "imap"."""
    inner = getattr(implementation, "_inner", None)  # an authenticator's renewing wrapper
    if inner is not None:
        return backend_name(inner)
    parts = type(implementation).__module__.split(".")
    return parts[1] if parts[0] == "backends" and len(parts) > 1 else parts[-1]


async def _timed(backend: str, operation: str, call: Awaitable[_T]) -> _T:
    started = time.monotonic()
    try:
        return await call
    except Exception as error:
        UPSTREAM_ERRORS.labels(backend, operation, type(error).__name__).inc()
        raise
    finally:
        UPSTREAM_SECONDS.labels(backend, operation).observe(time.monotonic() - started)


async def timed_open(backend: Backend, credentials: Credentials) -> Mailbox:
    """`backend.open(credentials)`, timed; the mailbox it returns times its own calls."""
    name = backend_name(backend)
    return TimedMailbox(await _timed(name, "open", backend.open(credentials)), name)


class TimedMailbox:
    """A `Mailbox` that records the duration and failures of every call to `inner`."""

    def __init__(self, inner: Mailbox, backend: str) -> None:
        self.inner = inner
        self.backend = backend

    async def list(
        self, *, hidden_keyword: str | None = None, memory: ListingMemory | None = None
    ) -> Sequence[RemoteMessage]:
        listing = self.inner.list(hidden_keyword=hidden_keyword, memory=memory)
        return await _timed(self.backend, "list", listing)

    async def fetch(self, identity: str, *, body_lines: int | None = None) -> AsyncIterator[bytes]:
        started = time.monotonic()
        chunks = self.inner.fetch(identity, body_lines=body_lines)
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as error:
            UPSTREAM_ERRORS.labels(self.backend, "fetch", type(error).__name__).inc()
            raise
        finally:
            await close_chunks(chunks)
            UPSTREAM_SECONDS.labels(self.backend, "fetch").observe(time.monotonic() - started)

    async def measure(self, identities: Collection[str]) -> dict[str, int]:
        """The inner mailbox's exact sizes; none from one that lists only exact sizes."""
        measurer = measurer_of(self.inner)
        if measurer is None:
            return {}
        return await _timed(self.backend, "measure", measurer.measure(identities))

    @property
    def withheld(self) -> frozenset[str]:
        """What the inner mailbox's last listing left out on purpose (`withheld_by`)."""
        return withheld_by(self.inner)

    async def dispose(self, identities: Collection[str], how: Disposition) -> DisposeResult:
        return await _timed(self.backend, "dispose", self.inner.dispose(identities, how))

    async def close(self) -> None:
        await _timed(self.backend, "close", self.inner.close())
