"""Measured messages: CRLF normalisation, exact counts, and the on-disk spool of what was counted.

Graph has no exact MIME size (a message's size property counts MAPI properties) and writes
the MIME anew for every `$value` download, so the only size LIST may announce is the count of
bytes actually downloaded, in the form POP3 sends them: every line end CRLF and a CRLF added
to an unterminated last line (RFC 1939 sections 3 and 11), as `popbridge.upstream.lines`'
`Normaliser` counts them. This module keeps what it counted: a `Spool` is one backend's
directory of measured messages (mode 0700, files 0600, removed at a normal exit), bounded
by `limit` octets in all, least recently used first out, so RETR and TOP in this and later
sessions send exactly the bytes LIST announced even if a later download would differ. A
message that does not fit is only counted; RETR then downloads it again and sends it only
if the count still matches (see `backends.graph.mailbox`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from popbridge.upstream.lines import Normaliser

__all__ = ["Normaliser", "Spool", "Spooled", "file_pieces", "read_pieces"]

_SERIAL = itertools.count()


@dataclass(frozen=True, slots=True)
class Spooled:
    """One measured message on disk: its identity's version and its exact size."""

    path: Path
    version: str | None
    size: int


class Spool:
    """Measured messages on disk for one backend, at most `limit` octets in all; the least
    recently used go first. Keys name the user too: ids are unique only within a mailbox."""

    def __init__(self, parent: Path, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._dir: Path | None = None
        self._parent = parent
        self._entries: OrderedDict[str, Spooled] = OrderedDict()

    def get(self, key: str) -> Spooled | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="popbridge-graph-", dir=self._parent))
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    @contextlib.contextmanager
    def _file(self, key: str) -> Iterator[tuple[Path, BinaryIO]]:
        # a fresh name per download: a reader of the previous file keeps its open handle
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        path = self._directory() / f"{digest}-{next(_SERIAL)}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            yield path, handle

    async def measure(self, key: str, version: str | None, pieces: AsyncIterator[bytes]) -> int:
        """Count (and keep, if it fits within the limit) one download; its exact size."""
        self.discard(key)
        normaliser = Normaliser()
        keep = self._limit > 0
        with self._file(key) as (path, handle):
            try:
                async for piece in pieces:
                    data = normaliser.feed(piece)
                    keep = keep and normaliser.octets <= self._limit
                    if keep:
                        handle.write(data)
            except BaseException:
                path.unlink(missing_ok=True)  # a download cut short is never kept
                raise
            data = normaliser.finish()
            keep = keep and normaliser.octets <= self._limit
            if keep:
                handle.write(data)
        if not keep:
            path.unlink(missing_ok=True)
            return normaliser.octets
        self.discard(key)  # another session of the same mailbox may have measured it too
        self._make_room(normaliser.octets)
        self._used += normaliser.octets
        self._entries[key] = Spooled(path, version, normaliser.octets)
        return normaliser.octets

    def _make_room(self, octets: int) -> None:
        while self._entries and self._used + octets > self._limit:
            self.discard(next(iter(self._entries)))

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._used -= entry.size
            entry.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove every spooled message; never raises."""
        self._entries.clear()
        self._used = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def read_pieces(path: Path, chunk: int) -> Iterator[bytes] | None:
    """A spooled file in pieces of at most `chunk` octets, opened now; None if it is gone."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    return file_pieces(handle, chunk)


def file_pieces(handle: IO[bytes], chunk: int) -> Iterator[bytes]:
    """An open file in pieces of at most `chunk` octets; closes it when done."""
    with handle:
        while piece := handle.read(chunk):
            yield piece
