"""The readiness verdict from probe results: each reason on its own, and probes that stall."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from popbridge.admin.health import Health
from popbridge.config import AdminConfig


async def answer() -> None:
    return None


async def refuse() -> None:
    raise ConnectionRefusedError


async def stall() -> None:
    await asyncio.Event().wait()


Probe = Callable[[], Awaitable[None]]


def health(upstream: Probe = answer, store: Probe = answer, *, listening: bool = True) -> Health:
    settings = AdminConfig(probe_timeout=1.0)
    return Health(settings, upstream=upstream, store=store, listening=lambda: listening,
                  draining=lambda: False)  # fmt: skip


async def test_never_probed_is_not_ready() -> None:
    reasons = health().readiness()
    assert set(reasons) == {"store", "upstream"}
    assert "not probed yet" in reasons["store"]


async def test_each_failure_is_its_own_reason() -> None:
    checked = health(store=refuse, listening=False)
    await checked.probe_once()
    reasons = checked.readiness()
    assert reasons == {
        "listeners": "not listening",
        "store": "store did not answer its last probe (ConnectionRefusedError)",
    }
    assert checked.results["store"].probes == 1 and checked.results["upstream"].ok


async def test_a_stalled_upstream_probe_ends_at_its_deadline() -> None:
    checked = health(upstream=stall)
    await checked.probe_once()
    assert checked.results["upstream"].last_error == "TimeoutError"
    assert "upstream" in checked.readiness()
    await checked.stop()  # never started: nothing to stop
