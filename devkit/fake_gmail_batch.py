"""The wire format of Gmail's batch endpoint, for `devkit.fake_gmail`.

This module owns reading a batch request (a `multipart/mixed` body whose parts are
`application/http` requests, each with an optional Content-ID) and writing the reply (a
`multipart/mixed` body of `application/http` responses, each with `Content-ID:
<response-ID>`), as Gmail's "Batching requests" guide shows them. At most 100 calls are
allowed in one batch.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
from dataclasses import dataclass

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
