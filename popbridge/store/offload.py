"""Store work that grows with the mailbox, kept off the event loop when the mailbox is large.

A login on a 100,000-message mailbox makes a store encode or decode its listing, digest it
and, when it changed, plan the UID map: each is a tenth of a second or more of Python. On
the event loop that stalls every other session for as long. `off_loop` runs such work in a
thread once it concerns at least `LARGE` messages; the loop then gets the interpreter at
every switch interval (5 ms) and other sessions keep answering. Smaller work stays inline,
where a thread hop would cost more than the work (a login storm is many small mailboxes).
The SQLite store already runs its transactions in its own worker thread; PostgreSQL's
driver runs on the loop, so its Python work goes through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

LARGE: Final = 5_000  # messages; about 5 to 15 ms of work per pass over them

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(count: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(*args, **kwargs)`, in a thread when it concerns `count` >= `LARGE` messages."""
    if count < LARGE:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)
