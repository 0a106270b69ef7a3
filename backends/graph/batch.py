"""JSON batching: up to 20 Graph requests in one `POST /$batch`, inner throttling retried.

This module owns the `$batch` envelope (Graph json-batching): requests go in chunks of at most
20, each with its own `Prefer: IdType="ImmutableId"` (headers of the outer request do not
reach the inner ones), and come back as one response each, by id. Outlook runs at most four
of a batch's requests at once and may answer the others 429 with a Retry-After; those, and
inner 503/504, are sent again after the longest Retry-After asked for, within the same
`max_retry_after` bound as single requests. What is still throttled after that is reported
with its status, for the caller to count as not done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from backends.graph.transport import PREFER_IMMUTABLE, RETRIED, Transport
from backends.http import retry_after
from popbridge.errors import BackendFailure

logger = logging.getLogger(__name__)

MAX_BATCH = 20  # Graph json-batching: at most 20 requests per batch


@dataclass(frozen=True, slots=True)
class Inner:
    """One request of a batch; `url` is relative to the service root ("/me/...")."""

    method: str
    url: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: Any

    @property
    def code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) else ""


async def run(transport: Transport, requests: dict[str, Inner]) -> dict[str, Outcome]:
    """Send every request (keyed by the caller's key); the outcome of each."""
    outcomes: dict[str, Outcome] = {}
    pending = dict(requests)
    waited = 0.0
    while pending:
        delays: list[float] = []
        keys = list(pending)
        for start in range(0, len(keys), MAX_BATCH):
            chunk = {key: pending[key] for key in keys[start : start + MAX_BATCH]}
            for key, (outcome, delay) in (await _one(transport, chunk)).items():
                outcomes[key] = outcome
                if outcome.status in RETRIED:
                    delays.append(delay)
                else:
                    pending.pop(key)
        if not delays:
            break
        delay = max(delays)
        if waited + delay > transport.settings.max_retry_after:
            logger.warning("$batch: %d request(s) still throttled, giving up", len(pending))
            break
        logger.info("$batch: %d request(s) throttled, retrying in %.1f s", len(pending), delay)
        await asyncio.sleep(delay)
        waited += delay
    return outcomes


async def _one(transport: Transport, chunk: dict[str, Inner]) -> dict[str, tuple[Outcome, float]]:
    numbered = {str(number): key for number, key in enumerate(chunk, 1)}
    entries = []
    for number, key in numbered.items():
        inner = chunk[key]
        entry: dict[str, Any] = {"id": number, "method": inner.method, "url": inner.url}
        entry["headers"] = {"Prefer": PREFER_IMMUTABLE}
        if inner.body is not None:
            entry["body"] = inner.body
            entry["headers"]["Content-Type"] = "application/json"
        entries.append(entry)
    data = await transport.json("POST", "/$batch", {"requests": entries})
    responses = data.get("responses") if isinstance(data, dict) else None
    if not isinstance(responses, list):
        raise BackendFailure(f"{transport.settings.peer}: $batch reply has no responses")
    found: dict[str, tuple[Outcome, float]] = {}
    for response in responses:
        if not isinstance(response, dict) or str(response.get("id")) not in numbered:
            continue
        status = response.get("status")
        headers = response.get("headers")
        value = headers.get("Retry-After") if isinstance(headers, dict) else None
        delay = retry_after(str(value)) if value is not None else None
        outcome = Outcome(status if isinstance(status, int) else 0, response.get("body"))
        found[numbered[str(response["id"])]] = (outcome, 1.0 if delay is None else delay)
    for key in chunk:  # a request the reply left out is unknown: not done
        found.setdefault(key, (Outcome(0, None), 0.0))
    return found
