"""The Graph test harness: the fake Graph with two users, and the contract suite's `Harness`.

This module owns what the Graph test modules share: `GraphHarness` (seeds the fake's state
directly and reads it back in backend-neutral terms) and the `fake`, `harness` (both id
formats) and `plain` fixtures, which the test modules import by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.graph import create
from devkit.dovecot import free_port, generate_message, wire_form
from devkit.fake_graph import FakeGraph
from popbridge.contract import (
    Backend,
    Credentials,
    Mailbox,
)
from tests.backends.contract import (
    Stored,
    Where,
    subject_of,
)

USER, TOKEN = "alice@contoso.example", "eyJ0eXAi.alice-token_1"
OTHER, OTHER_TOKEN = "bob@contoso.example", "eyJ0eXAi.bob-token_2"
CHUNK = 256 * 1024
FOLDERS: dict[Where, str] = {"maildrop": "inbox", "trash": "deleteditems", "move": "Done"}


class GraphHarness:
    """The contract harness: seeds and reads the fake's state directly."""

    fetch_chunk = CHUNK
    move_folder = "Done"

    def __init__(self, fake: FakeGraph, spool: Path) -> None:
        self.fake = fake
        self.spool = spool
        self.credentials = Credentials(USER, TOKEN, "oauth2")

    def settings(self, **overrides: Any) -> dict[str, Any]:
        table = {"type": "graph", "url": self.fake.url, "timeout": 10, "fetch_chunk": CHUNK,
                 "spool_dir": str(self.spool)} | overrides  # fmt: skip
        return {key: value for key, value in table.items() if value is not None}

    def backend(self, **overrides: Any) -> Backend:
        return create(self.settings(**overrides), source="test.toml")

    @contextlib.asynccontextmanager
    async def opened(self, **overrides: Any) -> AsyncIterator[Mailbox]:
        """A mailbox of a new backend (settings `overrides`), closed when the block ends."""
        mailbox = await self.backend(**overrides).open(self.credentials)
        try:
            yield mailbox
        finally:
            await mailbox.close()

    def unreachable(self) -> Backend:
        return self.backend(url=f"http://127.0.0.1:{free_port()}/v1.0", connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> None:
        self.fake.seed(list(messages))

    def downloads(self) -> int:
        return self.fake.downloads

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        messages = [wire_form(generate_message(n + 1, size)) for n in range(count)]
        self.fake.seed(messages)
        return messages

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        return [
            Stored(
                subject=subject_of(m.mime),
                seen=m.is_read,
                deleted=False,
                keywords=frozenset(m.categories),
            )
            for m in self.fake.in_folder(FOLDERS[where])
        ]


@pytest.fixture(name="fake")
async def fake_fixture() -> AsyncIterator[FakeGraph]:
    async with FakeGraph({TOKEN: USER, OTHER_TOKEN: OTHER}) as graph:
        graph.add_folder("Done")
        yield graph


@pytest.fixture(name="harness", params=["immutable", "classic"])
def harness_fixture(
    fake: FakeGraph, tmp_path: Path, request: pytest.FixtureRequest
) -> GraphHarness:
    fake.honour_prefer = request.param == "immutable"
    return GraphHarness(fake, tmp_path)


@pytest.fixture(name="plain")
def plain_fixture(fake: FakeGraph, tmp_path: Path) -> GraphHarness:
    return GraphHarness(fake, tmp_path)
