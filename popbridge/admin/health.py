"""Readiness, probed in the background: `/readyz` answers from the last results, never by
probing (a scrape storm or a tight probe period must not become an upstream login storm).

Every `probe_interval` seconds one task asks the upstream to answer without credentials
(`Backend.check`) and the store to answer a query, each within `probe_timeout`. The bridge
is ready while its listeners are bound and not draining, the store answered its last probe,
and the upstream answered one within `ready_max_age` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from popbridge.config import AdminConfig
from popbridge.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ProbeResult:
    ok: bool = False
    last_success: float | None = None  # wall-clock time of the last success
    last_error: str = "not probed yet"  # an error class name: never upstream text
    probes: int = 0


class Health:
    """The background probes and the readiness verdict built from their results."""

    def __init__(
        self, settings: AdminConfig, *, upstream: Callable[[], Awaitable[object]],
        store: Callable[[], Awaitable[object]], listening: Callable[[], bool],
        draining: Callable[[], bool],
    ) -> None:  # fmt: skip
        self._settings = settings
        self._probes = {"upstream": upstream, "store": store}
        self._listening = listening
        self._draining = draining
        self.results = {name: ProbeResult() for name in self._probes}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self._settings.probe_interval)

    async def probe_once(self) -> None:
        """Probe the upstream and the store, at the same time, each within its deadline."""
        await asyncio.gather(*(self._probe(name) for name in self._probes))
        upstream = self.results["upstream"]
        metrics.UPSTREAM_UP.set(1 if upstream.ok else 0)
        if upstream.last_success is not None:
            metrics.UPSTREAM_PROBE.set(upstream.last_success)

    async def _probe(self, name: str) -> None:
        result = self.results[name]
        result.probes += 1
        try:
            async with asyncio.timeout(self._settings.probe_timeout):
                await self._probes[name]()
        except Exception as error:  # any failure is "not ready"; the class name says which
            result.ok, result.last_error = False, type(error).__name__
            log.warning("%s probe failed: %s", name, result.last_error)
            return
        result.ok, result.last_success, result.last_error = True, time.time(), ""

    def readiness(self) -> dict[str, str]:
        """Why the bridge is not ready, by check; empty when it is."""
        reasons: dict[str, str] = {}
        if self._draining():
            reasons["listeners"] = "draining: shutting down"
        elif not self._listening():
            reasons["listeners"] = "not listening"
        store = self.results["store"]
        if not store.ok:
            reasons["store"] = f"store did not answer its last probe ({store.last_error})"
        upstream = self.results["upstream"]
        age = None if upstream.last_success is None else time.time() - upstream.last_success
        if age is None or age > self._settings.ready_max_age:
            reasons["upstream"] = (
                f"upstream has not answered a probe for {self._settings.ready_max_age:.0f} s"
                f" ({upstream.last_error or 'no recent success'})"
            )
        metrics.READY.set(0 if reasons else 1)
        return reasons
