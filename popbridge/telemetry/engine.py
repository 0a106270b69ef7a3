"""A POP3 engine that counts every reply it encodes, by command verb and result.

The engine is the one place a command and its reply meet (RFC 1939 section 3: one reply per
command), so counting there catches RETR and TOP, refused lines and SASL steps alike without
the session doing anything. Verbs are command class names: a fixed set.
"""

from __future__ import annotations

from popbridge.pop3.engine import Pop3Engine
from popbridge.pop3.replies import Continue, Ok, Reply
from popbridge.telemetry import metrics


class CountedEngine(Pop3Engine):
    """`Pop3Engine` plus `popbridge_commands_total`."""

    def send(self, reply: Reply) -> bytes:
        pending = self._pending
        verb = "INVALID" if pending is None else type(pending).__name__.upper()
        result = (
            "ok" if isinstance(reply, Ok) else "continue" if isinstance(reply, Continue) else "err"
        )
        metrics.command(verb, result)
        return super().send(reply)
