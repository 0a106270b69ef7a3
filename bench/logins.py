"""``python -m bench.logins``: scenario (e)'s login storm, next to what the backend allows.

Scenario (e) starts all its sessions at once, so its slowest commands are the PASSes of that
storm. Every server here logs in against the same Dovecot backend: Dovecot POP3 (direct) forks
a mail process per login, imapc and popbridge each make the backend fork an IMAP process. This
command measures the storm alone, without retrieval, for direct, imapc and popbridge (connect
to the answer to PASS, through USER and PASS), and for a raw IMAP client (``imap``) that does
against the backend the least popbridge does at PASS and nothing else: connect, LOGIN and
EXAMINE (CONDSTORE), whose HIGHESTMODSEQ tells a bridge that remembers the listing that
nothing changed (every run after the warm-up round). ``imap`` is the floor of any bridge that
logs in upstream when its client does, as popbridge must: reusing another login's upstream
session would outlive a changed password. Runs alternate; it prints medians.
As deployed, POP3 clients speak POP3S and the IMAP side is verified IMAPS (the raw client's
too); ``--plain`` measures the plaintext variant.

``--retrieve`` runs scenario (e) itself: after logging in, every session retrieves all its
messages (POP3: STAT, UIDL, RETR each, QUIT; ``imap``: one ``FETCH n BODY.PEEK[]`` per
message, then LOGOUT), so logins compete with downloads as they do in (e). The table then
gives what (e)'s targets compare: PASS p99 next to imapc's (for ``imap``, connect to
EXAMINE's answer: what a bridge must have done upstream before it can answer PASS),
retrieval p99 next to direct's, and the CPU time the whole machine spent per run (clients,
server and backend: they share the CPUs). A bridge that logs in upstream at PASS and
downloads from the same backend can do no better than ``imap``, which spends no CPU on a POP3
side at all: where ``imap``'s PASS p99 is above a target's share of imapc's, no such bridge
meets that target on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.clients import AsyncClient, Tally
from bench.peers import (
    client_context,
    raise_fd_limit,
    start_backend,
    start_imapc,
    start_popbridge,
)
from bench.scenarios import PASSWORD, PROFILES, percentile, session_user, source_address
from bench.usage import machine_cpu_seconds
from devkit.dovecot import generate_message

Login = Callable[[int, int], Awaitable[float]]
# What popbridge's IMAP backend sends at PASS once it remembers the mailbox's listing (every
# run after the warm-up): authenticate, and EXAMINE, whose HIGHESTMODSEQ (RFC 7162 3.1.8)
# says nothing changed. A first login lists the mailbox too; this is the least any bridge
# that logs in upstream at PASS has to do.
IMAP_LOGIN = ("LOGIN {user} {password}", "EXAMINE INBOX (CONDSTORE)")
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
_RETRIEVAL = (b"STAT", b"UIDL", b"RETR", b"QUIT")


@dataclass
class Timed:
    """One session's figures: its login and, with ``--retrieve``, each later command."""

    login: float  # connect to the answer to PASS (imap: to EXAMINE's tagged OK)
    password: float  # PASS to its answer (imap: connect to EXAMINE's OK, a bridge's PASS)
    retrieval: list[float] = field(default_factory=list)


Session = Callable[[int, int, bool], Awaitable[Timed]]


async def _reply(reader: asyncio.StreamReader, tag: bytes) -> tuple[bytes, list[bytes]]:
    """The tagged line and the untagged lines before it; literals are read and skipped."""
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("backend closed the connection")
        if line.startswith(tag + b" "):
            return line, lines
        lines.append(line)
        while literal := _LITERAL.search(line):  # the literal, then the rest of the response
            await reader.readexactly(int(literal.group(1)))
            line = await reader.readline()


async def _imap_command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        tag: bytes, line: str) -> list[bytes]:  # fmt: skip
    writer.write(tag + b" " + line.encode() + b"\r\n")
    reply, lines = await _reply(reader, tag)
    if not reply.startswith(tag + b" OK"):
        raise RuntimeError(f"{line.split()[0]} refused: {reply!r}")
    return lines


async def imap_session(
    port: int, index: int, retrieve: bool, tls: ssl.SSLContext | None = None
) -> Timed:
    """What popbridge's PASS needs upstream, then (``retrieve``) each message's download."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source_address(index), 0), ssl=tls,
        server_hostname="127.0.0.1" if tls is not None else None, limit=1 << 20,
    )  # fmt: skip
    try:
        await reader.readline()  # greeting
        examined: list[bytes] = []
        for number, command in enumerate(IMAP_LOGIN):
            line = command.format(user=session_user(index), password=PASSWORD)
            examined = await _imap_command(reader, writer, b"t%d" % number, line)
        elapsed = time.perf_counter() - started
        timed = Timed(elapsed, elapsed)
        exists = [int(found.group(1)) for found in map(_EXISTS.match, examined) if found]
        for number in range(1, exists[-1] + 1 if retrieve else 1):
            fetched = time.perf_counter()
            await _imap_command(reader, writer, b"f", f"FETCH {number} BODY.PEEK[]")
            timed.retrieval.append(time.perf_counter() - fetched)
        writer.write(b"z LOGOUT\r\n")
        return timed
    finally:
        writer.close()


async def pop3_session(
    port: int, index: int, retrieve: bool, tls: ssl.SSLContext | None = None
) -> Timed:
    """Connect, USER, PASS, then (``retrieve``) scenario (e)'s downloads, QUIT."""
    started = time.perf_counter()
    client = await AsyncClient.connect(port, source_address(index), tls)
    try:
        await client.login(session_user(index), PASSWORD)
        elapsed = time.perf_counter() - started
        tally = Tally()
        if retrieve:
            await client.retrieve_all(tally)
            if not tally.ok:
                raise RuntimeError(f"retrieved {tally} instead of what STAT announced")
        await client.quit()
    finally:
        client.close()
    password = [seconds for verb, seconds in client.latencies if verb == b"PASS"]
    retrieval = [seconds for verb, seconds in client.latencies if verb in _RETRIEVAL]
    return Timed(elapsed, password[0], retrieval if retrieve else [])


@dataclass
class Run:
    """One storm of one server: every session's figures and the machine's CPU time."""

    sessions: list[Timed]
    cpu: float

    def p99(self, figure: str) -> float:
        values: list[float] = []
        for timed in self.sessions:
            value = getattr(timed, figure)
            values += value if isinstance(value, list) else [value]
        return percentile(values, 99)


async def storm(session: Session, port: int, sessions: int, retrieve: bool) -> list[Timed]:
    """All `sessions` started at once; their figures."""
    return await asyncio.gather(*(session(port, index, retrieve) for index in range(sessions)))


def timed_storm(session: Session, port: int, sessions: int, retrieve: bool) -> Run:
    cpu = machine_cpu_seconds()
    timed = asyncio.run(storm(session, port, sessions, retrieve))
    return Run(timed, machine_cpu_seconds() - cpu)


def report(figures: dict[str, list[Run]]) -> str:
    """The login storm alone: p50/p90/p99 of connect to PASS's answer, against ``imap``."""
    lines = ["| server | p50 [ms] | p90 [ms] | p99 [ms] | p99 / imap |", "|---|---|---|---|---|"]
    floor = statistics.median(run.p99("login") for run in figures["imap"])
    for name, runs in figures.items():
        p50, p90, p99 = (
            statistics.median(percentile([t.login for t in run.sessions], share) for run in runs)
            for share in (50, 90, 99)
        )
        lines.append(
            f"| {name} | {p50 * 1000:.0f} | {p90 * 1000:.0f} | {p99 * 1000:.0f} "
            f"| {p99 / floor:.2f} |"
        )
    return "\n".join(lines)


def report_retrieving(figures: dict[str, list[Run]]) -> str:
    """Scenario (e): PASS p99 against imapc's, retrieval p99 against direct's, machine CPU."""
    lines = [
        "| server | PASS p99 [ms] | PASS p99 / imapc | retrieval p99 [ms] "
        "| retrieval p99 / direct | machine CPU per run [s] |",
        "|---|---|---|---|---|---|",
    ]
    imapc = [run.p99("password") for run in figures["imapc"]]
    direct = [run.p99("retrieval") for run in figures["direct"]]
    for name, runs in figures.items():
        password = [run.p99("password") for run in runs]
        retrieval = [run.p99("retrieval") for run in runs]
        lines.append(
            f"| {name} | {statistics.median(password) * 1000:.0f} "
            f"| {statistics.median(p / i for p, i in zip(password, imapc, strict=True)):.2f} "
            f"| {statistics.median(retrieval) * 1000:.1f} "
            f"| {statistics.median(r / d for r, d in zip(retrieval, direct, strict=True)):.2f} "
            f"| {statistics.median(run.cpu for run in runs):.2f} |"
        )
    return "\n".join(lines)


def start_servers(
    stack: contextlib.ExitStack, work: Path, busy: tuple[int, int, int], tls: bool
) -> dict[str, tuple[Session, int]]:
    """The backend seeded with (e)'s mailboxes, imapc and popbridge on it, stopped by `stack`;
    each server's session kind and port, the raw IMAP client first."""
    sessions, messages, octets = busy
    names = [session_user(index) for index in range(sessions)]
    backend = start_backend(work / "backend", dict.fromkeys(names, PASSWORD))
    stack.callback(backend.stop)
    mail = [generate_message(number, octets) for number in range(1, messages + 1)]
    for name in names:
        backend.seed(name, mail)
    imapc = start_imapc(work / "imapc", backend, tls=tls)
    stack.callback(imapc.stop)
    bridge = start_popbridge(work / "popbridge", backend, tls=tls)
    stack.callback(bridge.stop)
    context = client_context(backend.pki.ca_file) if tls else None
    imap = functools.partial(imap_session, tls=context)
    pop3 = functools.partial(pop3_session, tls=context)
    return {
        "imap": (imap, backend.imaps_port if tls else backend.imap_port),
        "direct": (pop3, backend.pop3s_port if tls else backend.pop3_port),
        "imapc": (pop3, imapc.port),
        "popbridge": (pop3, bridge.port),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logins", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--plain", action="store_true", help="plaintext POP3 and IMAP")
    parser.add_argument("--retrieve", action="store_true", help="scenario (e): download too")
    args = parser.parse_args(argv)
    tls = not args.plain
    raise_fd_limit()
    busy = PROFILES[args.profile].busy
    with (
        tempfile.TemporaryDirectory(prefix="popbridge-logins-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        servers = start_servers(stack, Path(tmp), busy, tls)
        figures: dict[str, list[Run]] = {name: [] for name in servers}
        for number in range(-1, args.runs):  # a warm-up round first: indexes, caches
            for name, (session, port) in servers.items():
                run = timed_storm(session, port, busy[0], args.retrieve)
                if number >= 0:
                    figures[name].append(run)
    mode = "POP3S and IMAPS" if tls else "plaintext"
    what = "sessions retrieving" if args.retrieve else "logins"
    print(f"{busy[0]} {what} at once ({mode}), {busy[1]} messages each, {args.runs} runs:")
    print(report_retrieving(figures) if args.retrieve else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
