"""The status page: one HTML document, rendered on the server, with no script at all.

Every value is escaped (`html.escape`) where it is put into the page: user names, client
addresses and certificate subjects come from outside and must not become markup. Sections:
sessions, upstream and store health, certificates, mapped accounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from popbridge import __version__
from popbridge.admin.health import ProbeResult
from popbridge.admin.status import AccountInfo, CertificateInfo
from popbridge.telemetry.board import SessionEntry

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
.bad { color: #a00; font-weight: bold; } .ok { color: #070; }
"""


@dataclass(frozen=True, slots=True)
class PageData:
    sessions: Sequence[SessionEntry]
    probes: dict[str, ProbeResult]
    not_ready: dict[str, str]
    certificates: Sequence[CertificateInfo]
    accounts: Sequence[AccountInfo]
    now: float


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sessions(data: PageData) -> str:
    rows = [
        (
            s.id,
            s.user or "-",
            s.client,
            s.listener,
            s.tls,
            s.state,
            s.sent,
            f"{s.age(data.now):.0f} s",
        )
        for s in data.sessions
    ]
    headers = ("id", "user", "client address", "listener", "TLS", "state", "bytes sent", "age")
    return f"<h2>Sessions ({len(rows)})</h2>" + _table(headers, rows, "sessions")


def _health(data: PageData) -> str:
    verdict = (
        '<p id="ready" class="ok">ready</p>'
        if not data.not_ready
        else '<p id="ready" class="bad">not ready: '
        + escape("; ".join(f"{k}: {v}" for k, v in data.not_ready.items()))
        + "</p>"
    )
    rows = [
        (name, "ok" if p.ok else "failing", _when(p.last_success), p.last_error or "-")
        for name, p in data.probes.items()
    ]
    headers = ("check", "status", "last success", "last error")
    return "<h2>Health</h2>" + verdict + _table(headers, rows, "health")


def _certificates(data: PageData) -> str:
    rows = []
    for cert in data.certificates:
        days = cert.days_left(data.now)
        left = cert.problem if days is None else f"{days:.1f} days"
        rows.append((cert.listener, cert.subject or "-", _when(cert.not_after), left))
    headers = ("listener", "subject", "expires", "left")
    return "<h2>Certificates</h2>" + _table(headers, rows, "certificates")


def _accounts(data: PageData) -> str:
    rows = [(a.name, a.upstream_user, a.mechanism, a.token_health) for a in data.accounts]
    headers = ("local user", "upstream user", "mechanism", "token health")
    return f"<h2>Mapped accounts ({len(rows)})</h2>" + _table(headers, rows, "accounts")


def render(data: PageData) -> str:
    """The whole page."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>popbridge status</title><style>{STYLE}</style></head><body>"
        f"<h1>popbridge {escape(__version__)}</h1>"
        f"<p>as of {_when(data.now)}</p>"
        + _sessions(data)
        + _health(data)
        + _certificates(data)
        + _accounts(data)
        + "</body></html>"
    )
