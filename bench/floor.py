"""``python -m bench.floor``: how fast any Python asyncio POP3 server can answer scenario (a).

Scenario (a) is a lock-step download: the client sends ``RETR n`` only after the whole answer
to ``RETR n-1`` arrived, so each message costs one loopback round trip plus whatever the
server does in it. This command measures that floor: a stub server on the same asyncio event
loop popbridge uses, which answers every command of session (a) with bytes prepared in
advance (captured from Dovecot's own replies, so the client receives exactly the same octets)
and does no work at all per command beyond one ``transport.write``. It runs the lean client's
session against Dovecot POP3 (direct), the stub and popbridge, alternating, and prints the
medians and the ratios. popbridge/direct can be no better than stub/direct; what popbridge
adds on top of the stub is its own work (upstream reads, encoding, the POP3 engine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.clients import LeanClient, Tally
from bench.peers import (
    Instance,
    launch,
    raise_fd_limit,
    start_backend,
    start_popbridge,
)
from bench.scenarios import PASSWORD, PROFILES
from devkit.dovecot import free_port

USER = "bulk"


def capture(port: int) -> dict[bytes, bytes]:
    """Every reply of session (a) from the server on ``port``, keyed by command line."""
    client = LeanClient(port)
    replies = {b"USER " + USER.encode(): client.command(b"USER " + USER.encode())}
    replies[b"PASS " + PASSWORD.encode()] = client.command(b"PASS " + PASSWORD.encode())
    replies[b"STAT"] = stat = client.command(b"STAT")
    replies[b"UIDL"] = client.command(b"UIDL", multi=True)
    for number in range(1, int(stat.split()[1]) + 1):
        line = b"RETR %d" % number
        replies[line] = client.command(line, multi=True)
    client.quit()
    replies[b"QUIT"] = b"+OK bye\r\n"
    return replies


class _Stub(asyncio.Protocol):
    """Answers each complete command line with its prepared reply; nothing else."""

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self._replies = replies
        self._pending = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(b"+OK stub ready\r\n")

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        *lines, self._pending = (self._pending + data).split(b"\r\n")
        for line in lines:
            self._transport.write(self._replies.get(line, b"-ERR unknown\r\n"))


def serve(port: int, replies_file: Path) -> None:
    """The stub server process: loads the prepared replies, serves until killed."""
    replies = pickle.loads(replies_file.read_bytes())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _Stub(replies), "127.0.0.1", port, backlog=1024)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_stub(directory: Path, replies: dict[bytes, bytes]) -> Instance:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "replies.pickle").write_bytes(pickle.dumps(replies))
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--serve", str(port), str(directory)]
    return launch(Instance, "stub", directory, port, command, directory / "stub.log")


def session(port: int) -> float:
    """Scenario (a) with the lean client: seconds from connect to the answer to QUIT."""
    started = time.perf_counter()
    client = LeanClient(port)
    client.login(USER, PASSWORD)
    tally = Tally()
    client.retrieve_all(tally)
    client.quit()
    elapsed = time.perf_counter() - started
    if not tally.ok:
        raise RuntimeError(f"incomplete retrieval on port {port}: {tally}")
    return elapsed


def measure(ports: dict[str, int], runs: int) -> dict[str, list[float]]:
    """A warm-up, then ``runs`` rounds; each round runs every server once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in ports}
    for number in range(-1, runs):
        for name, port in ports.items():
            elapsed = session(port)
            if number >= 0:
                times[name].append(elapsed)
    return times


def report(times: dict[str, list[float]]) -> str:
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    lines = ["| server | median [s] | / direct | / stub |", "|---|---|---|---|"]
    for name, values in times.items():
        lines.append(
            f"| {name} | {statistics.median(values):.3f} | {ratio(name, 'direct'):.2f} "
            f"| {ratio(name, 'stub'):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]) / "replies.pickle")
        return 0
    raise_fd_limit()
    messages, octets = PROFILES[args.profile].bulk
    with (
        tempfile.TemporaryDirectory(prefix="popbridge-floor-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        backend = start_backend(work / "backend", {USER: PASSWORD})
        stack.callback(backend.stop)
        backend.seed_generated(USER, messages, octets)
        stub = start_stub(work / "stub", capture(backend.pop3_port))
        stack.callback(stub.stop)
        bridge = start_popbridge(work / "popbridge", backend)
        stack.callback(bridge.stop)
        ports = {"direct": backend.pop3_port, "stub": stub.port, "popbridge": bridge.port}
        print(f"(a) {messages} x {octets} octets, lean client, {args.runs} runs, medians:")
        print(report(measure(ports, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
