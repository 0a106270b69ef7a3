"""How a log record becomes a line: the classic text line, or one JSON object per line.

`log_format = "json"` gives each record as an object with `time` (RFC 3339, UTC), `level`,
`logger`, `event` (the message), `session` and `client` when the record comes from a
session's log, any other fields passed with `extra=`, and `exception` for a traceback. The
session's "[id address]" prefix of the text format is dropped from `event`: it is in its own
fields. What a line may contain is decided where it is logged (never a password, a token or
a message body); this module only shapes it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS: Final = ("text", "json")
# What every LogRecord has; anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "peer"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        event = record.getMessage()
        session, client = getattr(record, "session", None), getattr(record, "peer", None)
        prefix = f"[{session} {client}] "
        if session is not None and event.startswith(prefix):
            event = event[len(prefix) :]
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": event,
        }
        if session is not None:
            line["session"], line["client"] = str(session), str(client)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `[server] log_format`."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
