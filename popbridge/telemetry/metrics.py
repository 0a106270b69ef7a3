"""The Prometheus metrics of one bridge process, and the helpers that count into them.

Every metric lives in `REGISTRY`, which `/metrics` renders. Label values come from small,
fixed sets (listener names from the config, command and error class names, mechanism names,
outcomes): never a user name or a client address, so a scrape stays bounded however many
devices connect and shows nobody's identity.
"""

from __future__ import annotations

import platform
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from popbridge import __version__
from popbridge.errors import Code, LoginTooSoon, MailboxInUse

REGISTRY: Final = CollectorRegistry()
_P: Final = "popbridge"

SESSIONS_ACTIVE: Final = Gauge(
    f"{_P}_sessions_active", "Connections open now", ["listener"], registry=REGISTRY
)
SESSIONS: Final = Counter(
    f"{_P}_sessions", "Connections ended, by listener and the TLS version they ended with",
    ["listener", "tls"], registry=REGISTRY,
)  # fmt: skip
COMMANDS: Final = Counter(
    f"{_P}_commands", "POP3 commands answered, by verb and reply", ["command", "result"],
    registry=REGISTRY,
)  # fmt: skip
SENT_BYTES: Final = Counter(f"{_P}_sent_bytes", "Octets written to POP3 clients", registry=REGISTRY)
LOGINS: Final = Counter(
    f"{_P}_logins", "Login attempts, by result and mechanism", ["result", "mechanism"],
    registry=REGISTRY,
)  # fmt: skip
LOGINS_REFUSED: Final = Counter(
    f"{_P}_logins_refused", "Logins refused before trying them: throttled (per address) "
    "or locked out (per user)", ["reason"], registry=REGISTRY,
)  # fmt: skip
IN_USE: Final = Counter(
    f"{_P}_in_use_refusals", "Logins refused with [IN-USE]: the maildrop was locked",
    registry=REGISTRY,
)  # fmt: skip
UPSTREAM_SECONDS: Final = Histogram(
    f"{_P}_upstream_seconds", "Duration of calls to the upstream mailbox",
    ["backend", "operation"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
UPSTREAM_ERRORS: Final = Counter(
    f"{_P}_upstream_errors", "Failed calls to the upstream, by kind of error",
    ["backend", "operation", "kind"], registry=REGISTRY,
)  # fmt: skip
UPDATES: Final = Counter(
    f"{_P}_updates", "UPDATE states with deletions: applied, partial or failed", ["outcome"],
    registry=REGISTRY,
)  # fmt: skip
LOOKAHEAD: Final = Counter(
    f"{_P}_lookahead", "RETRs answered from a message prepared ahead (hit) or not (miss)",
    ["result"], registry=REGISTRY,
)  # fmt: skip
CERTIFICATE_EXPIRY: Final = Gauge(
    f"{_P}_certificate_expiry_timestamp_seconds", "When each listener's certificate expires",
    ["listener"], registry=REGISTRY,
)  # fmt: skip
UPSTREAM_UP: Final = Gauge(
    f"{_P}_upstream_up", "1 when the last upstream probe succeeded", registry=REGISTRY
)
UPSTREAM_PROBE: Final = Gauge(
    f"{_P}_upstream_last_success_timestamp_seconds", "When the upstream last answered a probe",
    registry=REGISTRY,
)  # fmt: skip
LOGINS_ALLOWED: Final = Gauge(
    f"{_P}_logins_allowed", "Logins allowed to open upstream mailboxes at once (loop-paced)",
    registry=REGISTRY,
)  # fmt: skip
READY: Final = Gauge(f"{_P}_ready", "1 when /readyz answers 200", registry=REGISTRY)
BUILD: Final = Info(f"{_P}_build", "The running version", registry=REGISTRY)
BUILD.info({"version": __version__, "python": platform.python_version()})

_T = TypeVar("_T")


def command(verb: str, result: str) -> None:
    COMMANDS.labels(verb, result).inc()


def sent(octets: int) -> None:
    SENT_BYTES.inc(octets)


def login(mechanism: str, result: str) -> None:
    LOGINS.labels(result, mechanism.lower()).inc()


def login_refused(mechanism: str, code: Code) -> None:
    """Throttling refused a login: per address it is throttled, per user locked out."""
    reason = "locked_out" if code is Code.AUTH else "throttled"
    LOGINS_REFUSED.labels(reason).inc()
    login(mechanism, reason)


def login_error(mechanism: str, error: Exception) -> None:
    """A login that did not complete for a reason other than bad credentials."""
    if isinstance(error, MailboxInUse):
        IN_USE.inc()
        login(mechanism, "in_use")
    else:
        login(mechanism, "too_soon" if isinstance(error, LoginTooSoon) else "error")


def update_done(deleted: int, failed: int) -> None:
    """RFC 1939 section 6: how the UPDATE state went, when there was something to delete."""
    if deleted:
        UPDATES.labels(
            "applied" if not failed else "failed" if failed >= deleted else "partial"
        ).inc()


def lookahead(prepared: _T) -> _T:
    """Count a RETR's look-up of a prepared answer; returns it unchanged."""
    LOOKAHEAD.labels("miss" if prepared is None else "hit").inc()
    return prepared
