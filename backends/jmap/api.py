"""JMAP API requests: method calls out, method responses (or errors) back.

This module owns the Request object (RFC 8620 section 3.3): it is always built as Python data
and serialised by `json.dumps`, so nothing a POP3 client or a config supplies can change its
structure; it declares the core and mail capabilities in `using` (RFC 8621 section 1.3.1),
stays within `maxCallsInRequest` and `maxSizeRequest`, and turns request-level problems
(section 3.6.1) and method-level errors (section 3.6.2) into the bridge's errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from backends.jmap.discovery import CORE, MAIL, Session
from backends.jmap.transport import Reply, Transport, status_error
from popbridge.errors import BackendFailure, BackendUnavailable, BridgeError

logger = logging.getLogger(__name__)

Call = tuple[str, dict[str, Any]]
USING = (CORE, MAIL)
_PROBLEM_PREFIX = "urn:ietf:params:jmap:error:"
# Method errors that say "try again later" (RFC 8620 section 3.6.2); all others need an operator.
_TEMPORARY = frozenset({"serverUnavailable", "serverFail", "serverPartialFail"})


class MethodError(BackendFailure):
    """A method-level error response (RFC 8620 section 3.6.2), with its `type`."""

    def __init__(self, method: str, kind: str, description: str = "") -> None:
        super().__init__(f"{method}: {kind}{': ' + description if description else ''}")
        self.kind = kind


def request_body(calls: Sequence[Call]) -> bytes:
    """The serialised Request object; call ids are the calls' positions."""
    method_calls = [[name, arguments, str(index)] for index, (name, arguments) in enumerate(calls)]
    request = {"using": list(USING), "methodCalls": method_calls}
    return json.dumps(request, separators=(",", ":")).encode("utf-8")


class Api:
    """Method calls against one account, over one `Transport`."""

    def __init__(self, transport: Transport, session: Session) -> None:
        self.transport = transport
        self.session = session
        self.account_id = session.account_id
        self._state_noted = False

    async def call(self, *calls: Call) -> list[dict[str, Any]]:
        """Send `calls` in one request; the arguments of each one's response, in order."""
        limits = self.session.limits
        if len(calls) > limits.max_calls_in_request:
            raise BackendFailure(f"{len(calls)} calls exceed maxCallsInRequest")
        body = request_body(calls)
        if len(body) > limits.max_size_request:
            raise BackendFailure(f"a {len(body)}-octet request exceeds maxSizeRequest")
        reply = await self.transport.fetch("POST", self.session.api_url, body=body)
        if reply.status != 200:
            raise _request_error(reply)
        return self._responses(reply, calls)

    def _responses(self, reply: Reply, calls: Sequence[Call]) -> list[dict[str, Any]]:
        data = reply.json()
        responses = data.get("methodResponses") if isinstance(data, dict) else None
        if not isinstance(responses, list):
            raise BackendFailure(f"{reply.url}: reply has no methodResponses")
        self._note_state(data.get("sessionState"))
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for entry in responses:
            if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], dict):
                name, arguments, call_id = entry
                found.setdefault(str(call_id), (str(name), arguments))
        results = []
        for index, (method, _) in enumerate(calls):
            name, arguments = found.get(str(index), ("", {}))
            if name == "error":
                raise _method_error(method, arguments)
            if name != method:
                raise BackendFailure(f"{reply.url}: no {method} response (got {name!r})")
            results.append(arguments)
        return results

    def _note_state(self, state: Any) -> None:
        # RFC 8620 section 3.4: a changed sessionState means the Session object changed. A
        # POP3 session is short and keeps what it looked up at login, so this is only noted.
        if isinstance(state, str) and state != self.session.state and not self._state_noted:
            self._state_noted = True
            logger.info("%s: the JMAP Session changed since login", self.session.url)


def _method_error(method: str, arguments: dict[str, Any]) -> BridgeError:
    kind = arguments.get("type")
    kind = kind if isinstance(kind, str) else "unknown"
    description = arguments.get("description")
    detail = description[:200] if isinstance(description, str) else ""
    if kind in _TEMPORARY:
        return BackendUnavailable(f"{method}: {kind}")
    return MethodError(method, kind, detail)


def _request_error(reply: Reply) -> BridgeError:
    """A refused request: an RFC 7807 problem (RFC 8620 section 3.6.1) or a plain status."""
    kind = ""
    if "json" in reply.headers.get("Content-Type", ""):
        try:
            problem = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            problem = None
        if isinstance(problem, dict) and isinstance(problem.get("type"), str):
            kind = problem["type"]
    if kind.startswith(_PROBLEM_PREFIX):
        # unknownCapability, notJSON, notRequest, limit: our request or the server's
        # configuration is wrong, which retrying will not fix (conformance J-2, J-3).
        name = kind.removeprefix(_PROBLEM_PREFIX)
        logger.warning("%s: request refused: %s", reply.url, name)
        if reply.status not in (401, 429, 503):
            return BackendFailure(f"{reply.url}: request refused: {name}")
    return status_error(reply.status, reply.url, kind)
