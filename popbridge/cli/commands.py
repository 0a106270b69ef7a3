"""The `popbridge` command: `serve` runs the bridge, `check` validates a deployment.

`serve` loads the config, builds the backend through the registry, listens (and serves
the admin listener when `[admin]` enables it), and runs until SIGTERM or SIGINT. Then it
drains: it stops accepting, gives open sessions `shutdown_grace` seconds to QUIT (a second
signal ends the wait), and closes the rest without applying their pending deletions.
`check` validates the config and probes the upstream without credentials, printing one
line per finding, so an operator can test a config before starting the daemon. Exit
status: 0 when all is well, 1 when the upstream check failed, 2 for a config error, 3 when
`serve` had to cut sessions (the last log line says how many were drained and how many cut).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import logging.handlers
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from popbridge import __version__
from popbridge.admin import AdminContext, AdminServer
from popbridge.app import build_services
from popbridge.cli import accounts as cli_accounts
from popbridge.config import Config, load_config
from popbridge.errors import BridgeError, ConfigError
from popbridge.frontend.server import Pop3Server
from popbridge.frontend.tls import build_context, make_self_signed
from popbridge.telemetry.logs import TEXT_FORMAT, formatter

log = logging.getLogger("popbridge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popbridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"popbridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the POP3 bridge"),
        ("check", "validate config, probe upstream"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    cli_accounts.add_parser(commands)
    cert = commands.add_parser("cert", help="write a self-signed certificate and key")
    cert.add_argument("--cert", type=Path, required=True, help="certificate file to write (PEM)")
    cert.add_argument("--key", type=Path, required=True, help="private key file to write (PEM)")
    cert.add_argument("--host", action="append", required=True, help="DNS name or IP (repeat)")
    cert.add_argument("--days", type=int, default=825, help="validity in days")
    return parser


LOG_FORMAT = TEXT_FORMAT
EXIT_CUT = 3  # serve ended with sessions cut at the end of the grace period
# How long the writer lets a burst of records gather after the first one wakes it.
LOG_BATCH_PAUSE = 0.05


class _LogWriter(threading.Thread):
    """Writes queued records to a stream in batches: one wake-up and one write per batch.

    Waking a thread for every record made each log line cost the event loop two hand-overs
    of the interpreter lock (about 0.15 ms a line, 0.6 ms a session at INFO); a batch costs
    them once. Idle, it sleeps on the queue.
    """

    _STOP = object()

    def __init__(
        self, records: queue.SimpleQueue[Any], stream: TextIO, log_format: str = "text"
    ) -> None:
        super().__init__(name="popbridge-log", daemon=True)
        self._records = records
        self._stream = stream
        self._formatter = formatter(log_format)

    def run(self) -> None:
        while (first := self._records.get()) is not self._STOP:
            time.sleep(LOG_BATCH_PAUSE)  # the rest of the burst `first` belongs to
            batch, stop = [first], False
            with contextlib.suppress(queue.Empty):
                while not stop:
                    record = self._records.get_nowait()
                    stop = record is self._STOP
                    if not stop:
                        batch.append(record)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[logging.LogRecord]) -> None:
        text = "".join(self._formatter.format(record) + "\n" for record in batch)
        with contextlib.suppress(OSError, ValueError):  # a closed stderr loses lines, not sessions
            self._stream.write(text)
            self._stream.flush()

    def stop(self) -> None:
        """Write out everything queued, then end."""
        self._records.put(self._STOP)
        self.join()


@contextlib.contextmanager
def logging_to_stderr(level: str, log_format: str = "text") -> Iterator[None]:
    """Log to stderr from a thread of its own, for as long as the `with` lasts.

    Records get their message on the event loop and are queued; a thread of their own
    formats and writes them in batches (`_LogWriter`). A slow or blocked stderr (a pipe to
    journald or a container runtime under backpressure) then delays log lines, never every
    session's replies. Leaving the block writes out everything queued. Like
    `logging.basicConfig`, it leaves a root logger that already has handlers (an embedding
    application's, a test runner's) as it is.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    root.setLevel(level)
    root.addHandler(handler)
    writer = _LogWriter(records, sys.stderr, log_format)
    writer.start()
    try:
        yield
    finally:
        root.removeHandler(handler)
        writer.stop()


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit status (`EXIT_CUT` if any was cut)."""
    services, store = await build_services(config)
    admin: AdminServer | None = None
    try:
        server = Pop3Server(config, services)
        await server.start()
        if config.admin.enabled:
            context = AdminContext(config, server, services.backend, store, services.authenticator)
            admin = AdminServer(context)
            await admin.start()
            log.info("admin listener on %s:%d", *admin.addresses[0])
        # What exists now (modules, config, TLS contexts) lives as long as the process: the
        # cyclic collector need not walk it again in every full collection during sessions.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
        await stop.wait()
        log.info("draining: %d sessions open, %.0f s to QUIT (signal again to close them now)",
                 len(server.board), config.server.shutdown_grace)  # fmt: skip
        hurry = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, hurry.set)
        drained, cut = await server.drain(hurry)
    finally:
        if admin is not None:
            await admin.stop()
        await store.close()
    log.info("stopped: %d sessions drained, %d cut without UPDATE", drained, cut)
    return EXIT_CUT if cut else 0


async def check(config: Config) -> int:
    """Print what works; 0 if the upstream answered, 1 if not."""
    print(f"config {config.source}: ok")
    for listener in config.listeners:
        print(f"listener {listener.describe()}")
        if listener.tls is not None:
            build_context(listener.tls)  # raises ConfigError when the files do not load
            print(f"listener {listener.host}:{listener.port}: {listener.tls.cert_file} loads")
    print(f"maildrop: disposition {config.maildrop.disposition.kind.value}")
    if (admin := config.admin).enabled:
        guard = "bearer token required" if admin.token else "no token"
        print(f"admin http://{admin.host}:{admin.port}/ ({guard} but for /healthz)")
    services, store = await build_services(config)
    await store.close()
    print("store: ok")
    try:
        findings = await services.backend.check()
    except BridgeError as error:
        print(f"backend {config.backend_type}: FAILED: {error}")
        return 1
    for finding in findings:
        print(f"backend {config.backend_type}: {finding}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cert":
        make_self_signed(args.cert, args.key, args.host, days=args.days)
        print(f"wrote {args.cert} and {args.key} (self-signed for {', '.join(args.host)})")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"popbridge: {error}", file=sys.stderr)
        return 2
    try:
        with logging_to_stderr(config.server.log_level, config.server.log_format):
            if args.command == "accounts":
                return asyncio.run(cli_accounts.run(args, config))
            if args.command == "check":
                return asyncio.run(check(config))
            return asyncio.run(serve(config))
    except ConfigError as error:
        print(f"popbridge: {error}", file=sys.stderr)
        return 2
