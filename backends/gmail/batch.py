"""Gmail's batch endpoint: many small GETs in one HTTP request, for looking messages up.

This module owns `get_many`: users.messages.get calls sent as one `multipart/mixed` POST to
`/batch/gmail/v1` (Gmail's "Batching requests" guide), each part an `application/http`
request with a Content-ID, answered by a `multipart/mixed` reply whose parts carry
`Content-ID: <response-ID>`, in any order. A batch holds at most 100 calls; Google advises
no more than 50, which is what is sent. It saves round trips, not quota: n calls in a batch
cost what n calls cost. Each inner reply is judged like a whole one: 404 means gone,
401 AuthFailed, 403 insufficientPermissions `ScopeMissing`; an inner rate limit (429, 403
userRateLimitExceeded/rateLimitExceeded), a 5xx or a missing answer is sent again in a
later batch after a jittered backoff, within `max_backoff`. Only for small JSON replies:
a message's raw form is never fetched this way (a batch reply is read whole).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import logging
import random
import re
import secrets
from collections.abc import Mapping
from typing import Any

from backends.gmail import transport as http
from backends.gmail.transport import RATE_REASONS, RETRY_STATUSES, Transport, error_reason
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

BATCH_PATH = "/batch/gmail/v1"
MAX_CALLS = 50  # Gmail: at most 100 calls per batch, more than 50 not recommended
_UNITS_PER_GET = 5
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_ANSWER_ID = re.compile(r"<response-(\d+)>")


async def get_many(transport: Transport, paths: Mapping[str, str]) -> dict[str, Any]:
    """GET each of `paths` (key -> path and query); key -> its JSON reply, or None if 404."""
    results: dict[str, Any] = {}
    todo, waited = list(paths), 0.0
    for attempt in range(8):
        again: list[str] = []
        for start in range(0, len(todo), MAX_CALLS):
            keys = todo[start : start + MAX_CALLS]
            answers = await _batch(transport, [paths[key] for key in keys])
            for index, key in enumerate(keys):
                status, body = answers.get(index, (0, b""))
                if _judge(status, body, f"batch {paths[key]}"):
                    again.append(key)
                else:
                    results[key] = json.loads(body) if status == 200 else None
        if not again:
            return results
        delay = random.uniform(0, http.BACKOFF_BASE * 2**attempt)  # noqa: S311
        if waited + delay > transport.settings.max_backoff:
            break
        logger.info("batch: %d call(s) throttled or unanswered, again in %.2f s",
                    len(again), delay)  # fmt: skip
        await asyncio.sleep(delay)
        todo, waited = again, waited + delay
    raise BackendUnavailable(f"batch: {len(todo)} call(s) kept being throttled")


def _judge(status: int, body: bytes, what: str) -> bool:
    """True if the call must be sent again; raises for a final error."""
    if status in (200, 404):
        if status == 200:
            try:
                json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise BackendFailure(f"{what}: reply is not usable JSON") from None
        return False
    reason = error_reason(body)
    if status in (0, 429) or status in RETRY_STATUSES or (status == 403 and reason in RATE_REASONS):
        return True
    raise http.status_error(status, reason, what)


async def _batch(transport: Transport, paths: list[str]) -> dict[int, tuple[int, bytes]]:
    """One batch request; the answers by the index of their call."""
    boundary = "batch_" + secrets.token_hex(12)
    lines: list[str] = []
    for index, path in enumerate(paths):
        lines += [f"--{boundary}", "Content-Type: application/http", f"Content-ID: <{index}>",
                  "", f"GET {path}", ""]  # fmt: skip
    lines += [f"--{boundary}--", ""]
    payload = ("\r\n".join(lines).encode(), f"multipart/mixed; boundary={boundary}")
    units = _UNITS_PER_GET * len(paths)
    content_type, body = await transport.post(BATCH_PATH, "batch", payload, units)
    return parse_reply(content_type, body)


def parse_reply(content_type: str, body: bytes) -> dict[int, tuple[int, bytes]]:
    """The inner (status, body) of each part of a multipart/mixed batch reply, by the index
    its Content-ID names; parts that name none, or no valid one, are left out."""
    if not content_type.lower().startswith("multipart/mixed"):
        raise BackendFailure("batch: the reply is not multipart/mixed")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    answers: dict[int, tuple[int, bytes]] = {}
    for part in message.iter_parts():
        found = _ANSWER_ID.fullmatch(str(part.get("Content-ID", "")).strip())
        inner = part.get_payload(decode=True)
        if found is None or not isinstance(inner, bytes):
            continue
        status = _STATUS.match(inner)
        split = re.search(rb"\r?\n\r?\n", inner)
        if status is not None:
            answers[int(found.group(1))] = (
                int(status.group(1)),
                inner[split.end() :] if split else b"",
            )
    return answers
