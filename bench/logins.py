"""``python -m bench.logins``: scenario (e)'s login storm alone, next to what the backend allows.

Scenario (e) starts all its sessions at once, so its slowest commands are the PASSes of that
storm. Every server here logs in against the same Dovecot backend: Dovecot POP3 (direct) forks
a mail process per login, imapc and popbridge each make the backend fork an IMAP process. This
command measures the storm alone, without retrieval, for direct, imapc and popbridge (connect
to the answer to PASS, through USER and PASS), and for a raw IMAP client (``imap``) that does
against the backend exactly what popbridge does at PASS and nothing else: connect, LOGIN,
EXAMINE, UID SEARCH and the listing's UID FETCH. ``imap`` is the floor of any bridge that logs
in upstream when its client does. Runs alternate; it prints the medians of p50, p90 and p99.
As deployed, POP3 clients speak POP3S and the IMAP side is verified IMAPS (the raw client's
too); ``--plain`` measures the plaintext variant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.clients import AsyncClient
from bench.peers import (
    client_context,
    raise_fd_limit,
    start_backend,
    start_imapc,
    start_popbridge,
)
from bench.scenarios import PASSWORD, PROFILES, session_user, source_address
from devkit.dovecot import generate_message

Login = Callable[[int, int], Awaitable[float]]
# What popbridge's IMAP backend sends at PASS (backends/imap: login, EXAMINE, listing).
IMAP_LOGIN = (
    "LOGIN {user} {password}",
    "EXAMINE INBOX",
    "UID SEARCH NOT DELETED",
    "UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
)


async def imap_login(port: int, index: int, tls: ssl.SSLContext | None = None) -> float:
    """Seconds from connect to the listing's tagged OK, as popbridge's PASS needs upstream."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source_address(index), 0), ssl=tls,
        server_hostname="127.0.0.1" if tls is not None else None,
    )  # fmt: skip
    try:
        await reader.readline()  # greeting
        for number, command in enumerate(IMAP_LOGIN):
            line = command.format(user=session_user(index), password=PASSWORD)
            tag = b"t%d" % number
            writer.write(tag + b" " + line.encode() + b"\r\n")
            while not (reply := await reader.readline()).startswith(tag + b" "):
                if not reply:
                    raise ConnectionError("backend closed the connection")
            if not reply.startswith(tag + b" OK"):
                raise RuntimeError(f"{line.split()[0]} refused: {reply!r}")
        elapsed = time.perf_counter() - started
        writer.write(b"z LOGOUT\r\n")
        return elapsed
    finally:
        writer.close()


async def pop3_login(port: int, index: int, tls: ssl.SSLContext | None = None) -> float:
    """Seconds from connect to the answer to PASS."""
    started = time.perf_counter()
    client = await AsyncClient.connect(port, source_address(index), tls)
    try:
        await client.login(session_user(index), PASSWORD)
        elapsed = time.perf_counter() - started
        await client.quit()
    finally:
        client.close()
    return elapsed


async def storm(login: Login, port: int, sessions: int) -> list[float]:
    """All `sessions` logins started at once; their times, sorted."""
    return sorted(await asyncio.gather(*(login(port, index) for index in range(sessions))))


def percentiles(times: list[float]) -> tuple[float, float, float]:
    def at(share: float) -> float:
        return times[min(int(share * len(times)), len(times) - 1)]

    return at(0.5), at(0.9), at(0.99)


def report(figures: dict[str, list[tuple[float, float, float]]]) -> str:
    lines = ["| server | p50 [ms] | p90 [ms] | p99 [ms] | p99 / imap |", "|---|---|---|---|---|"]
    floor = statistics.median(run[2] for run in figures["imap"])
    for name, runs in figures.items():
        p50, p90, p99 = (statistics.median(run[i] for run in runs) * 1000 for i in range(3))
        lines.append(f"| {name} | {p50:.0f} | {p90:.0f} | {p99:.0f} | {p99 / 1000 / floor:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logins", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--plain", action="store_true", help="plaintext POP3 and IMAP")
    args = parser.parse_args(argv)
    tls = not args.plain
    raise_fd_limit()
    sessions, messages, octets = PROFILES[args.profile].busy
    with (
        tempfile.TemporaryDirectory(prefix="popbridge-logins-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
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
        imap = functools.partial(imap_login, tls=context)
        pop3 = functools.partial(pop3_login, tls=context)
        servers: dict[str, tuple[Login, int]] = {
            "imap": (imap, backend.imaps_port if tls else backend.imap_port),
            "direct": (pop3, backend.pop3s_port if tls else backend.pop3_port),
            "imapc": (pop3, imapc.port),
            "popbridge": (pop3, bridge.port),
        }
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in servers}
        for number in range(-1, args.runs):  # a warm-up round first: indexes, caches
            for name, (login, port) in servers.items():
                times = asyncio.run(storm(login, port, sessions))
                if number >= 0:
                    figures[name].append(percentiles(times))
        mode = "POP3S and IMAPS" if tls else "plaintext"
        print(f"{sessions} logins at once ({mode}), {messages} messages each, {args.runs} runs:")
        print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
