"""What `devkit.fake_gmail` stores and how it writes it: messages, mailboxes, errors, page
tokens, and the wire format of Gmail's batch endpoint.

`FakeMessage.resource` writes a Message resource in Gmail's member order; `error` writes
Google's JSON error shape; page tokens are opaque to the client. For batches, this module
owns reading a batch request (a `multipart/mixed` body whose parts are
`application/http` requests, each with an optional Content-ID) and writing the reply (a
`multipart/mixed` body of `application/http` responses, each with `Content-ID:
<response-ID>`), as Gmail's "Batching requests" guide shows them. At most 100 calls are
allowed in one batch.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MAX_CALLS = 100


@dataclass(frozen=True)
class Call:
    content_id: str
    method: str
    target: str  # path and query


def parse_request(content_type: str, body: bytes) -> list[Call] | str:
    """The calls of a batch request, or why it is not one."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary=" not in content_type:
        return "multipart/mixed with a boundary required"
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    calls = []
    for number, part in enumerate(message.iter_parts()):
        inner = part.get_payload(decode=True)
        if not isinstance(inner, bytes):
            return "a part is not an application/http request"
        words = inner.split(b"\n", 1)[0].decode("latin-1").split()
        if len(words) < 2:
            return "a part has no request line"
        content_id = str(part.get("Content-ID", f"<{number}>")).strip().strip("<>")
        calls.append(Call(content_id, words[0], words[1]))
    if len(calls) > MAX_CALLS:
        return f"A batch may contain at most {MAX_CALLS} calls"
    return calls


def write_reply(answers: list[tuple[str, int, bytes]]) -> tuple[bytes, str]:
    """The reply body and its Content-Type for (content id, status, JSON body) answers."""
    boundary = "batch_" + secrets.token_hex(8)
    out = []
    for content_id, status, body in answers:
        out += [f"--{boundary}", "Content-Type: application/http",
                f"Content-ID: <response-{content_id}>", "",
                f"HTTP/1.1 {status} X", "Content-Type: application/json; charset=UTF-8",
                f"Content-Length: {len(body)}", "", body.decode()]  # fmt: skip
    out += [f"--{boundary}--", ""]
    return "\r\n".join(out).encode(), f"multipart/mixed; boundary={boundary}"


def error(code: int, reason: str, message: str) -> web.Response:
    """Google's JSON error shape."""
    status = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}.get(code, "UNKNOWN")  # fmt: skip
    body = {
        "error": {
            "code": code,
            "message": message,
            "status": status,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    }
    return web.json_response(body, status=code)


@dataclass
class FakeMessage:
    id: str
    raw: bytes  # as stored: CRLF line ends
    internal_date: int  # milliseconds since the epoch
    labels: set[str] = field(default_factory=lambda: {"INBOX", "UNREAD"})

    def resource(self, form: str) -> dict[str, Any]:
        """The Message resource in Gmail's member order; labelIds left out when empty."""
        data: dict[str, Any] = {"id": self.id, "threadId": self.id}
        if self.labels:
            data["labelIds"] = sorted(self.labels)
        data["snippet"] = ""
        data["sizeEstimate"] = len(self.raw) + 57 + len(self.raw) // 9  # only an estimate
        if form == "raw":
            data["raw"] = base64.urlsafe_b64encode(self.raw).decode()
        data["historyId"] = "1"
        data["internalDate"] = str(self.internal_date)
        return data


@dataclass
class Mailbox:
    address: str
    messages: dict[str, FakeMessage] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # user label id -> name
    history: list[dict[str, Any]] = field(default_factory=list)
    history_id: int = 1000
    oldest_history: int = 1000


def page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"page:{offset}:{random.random()}".encode()).decode()


def page_start(token: str | None) -> int | None:
    if token is None:
        return 0
    try:
        kind, offset, _ = base64.urlsafe_b64decode(token).decode().split(":")
        return int(offset) if kind == "page" else None
    except (ValueError, UnicodeDecodeError):
        return None
