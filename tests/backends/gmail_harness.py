"""The Gmail test harness: the fake Gmail API with two users, and the contract `Harness`.

This module owns what the Gmail test modules share: `GmailHarness` (seeds the fake's state
directly and reads it back in backend-neutral terms) and the `fake` and `harness` fixtures,
which the test modules import by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from backends.gmail import create
from devkit.dovecot import free_port, generate_message, wire_form
from devkit.fake_gmail import FULL, MODIFY, FakeGmail
from popbridge.contract import Backend, Credentials
from tests.backends.contract import Stored, Where, subject_of

USER, TOKEN = "alice@example.com", "ya29.alice-token_1"
MODIFY_TOKEN = "ya29.alice-modify-only"
OTHER, OTHER_TOKEN = "bob@example.com", "ya29.bob-token_2"
CHUNK = 256 * 1024
LABELS: dict[Where, str] = {"maildrop": "INBOX", "trash": "TRASH", "move": "Done"}


class GmailHarness:
    """The contract harness: seeds and reads the fake's state directly."""

    fetch_chunk = CHUNK
    move_folder = "Done"

    def __init__(self, fake: FakeGmail) -> None:
        self.fake = fake
        self.credentials = Credentials(USER, TOKEN, "oauth2")

    def settings(self, **overrides: Any) -> dict[str, Any]:
        table = {"type": "gmail", "url": self.fake.url, "timeout": 10, "fetch_chunk": CHUNK,
                 "units_per_minute": 1_000_000, "max_backoff": 1.0} | overrides  # fmt: skip
        return {key: value for key, value in table.items() if value is not None}

    def backend(self, **overrides: Any) -> Backend:
        return create(self.settings(**overrides), source="test.toml")

    def unreachable(self) -> Backend:
        return self.backend(url=f"http://127.0.0.1:{free_port()}", connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> list[str]:
        return self.fake.seed(USER, list(messages))

    def downloads(self) -> int:
        return self.fake.downloads

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        messages = [wire_form(generate_message(n + 1, size)) for n in range(count)]
        self.fake.seed(USER, messages)
        return messages

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        box = self.fake.box(USER)
        label = self.fake.label_id(USER, LABELS[where])
        found = sorted(box.messages.values(), key=lambda m: m.internal_date)
        if where == "maildrop":
            found = [m for m in found if "TRASH" not in m.labels]
        return [
            Stored(
                subject=subject_of(m.raw),
                seen="UNREAD" not in m.labels,
                deleted=False,
                keywords=frozenset(box.labels.get(label, label) for label in m.labels),
            )
            for m in found
            if label in m.labels
        ]


@pytest.fixture(name="fake")
async def fake_fixture() -> AsyncIterator[FakeGmail]:
    tokens = {TOKEN: (USER, FULL), MODIFY_TOKEN: (USER, MODIFY), OTHER_TOKEN: (OTHER, FULL)}
    async with FakeGmail(tokens) as gmail:
        gmail.add_label(USER, "Done")
        yield gmail


@pytest.fixture(name="harness")
def harness_fixture(fake: FakeGmail) -> GmailHarness:
    return GmailHarness(fake)
