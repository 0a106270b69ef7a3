"""Bridges run as separate processes, for the tests that kill them or measure their memory.

`BridgeProcess` starts a command, waits until its POP3 port greets, and always ends the
process it started (by its own PID, SIGKILL as a last resort), so a failing test leaves
nothing behind. `serve_config` writes the TOML for `popbridge serve` in front of an IMAP
upstream; `memory_usage` reads VmRSS and VmHWM from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from tests.hardening.pop3client import Pop3Client

ROOT = Path(__file__).resolve().parents[2]
POPBRIDGE = Path(sys.executable).with_name("popbridge")
START_DEADLINE = 30.0


def serve_config(path: Path, *, port: int, imap_port: int, timeout: float) -> Path:
    """A config for `popbridge serve`: plaintext POP3 on loopback, IMAP without TLS."""
    path.write_text(
        f"""\
[server]
auth_failure_delay = 0

[[listeners]]
host = "127.0.0.1"
port = {port}
plaintext_auth = true

[backend]
type = "imap"
host = "127.0.0.1"
port = {imap_port}
tls = "none"
timeout = {timeout}
connect_timeout = {timeout}
"""
    )
    return path


class BridgeProcess:
    """One bridge process listening on 127.0.0.1:`port`; its stderr goes to `log`."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> BridgeProcess:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, TimeoutError):
                client = await Pop3Client.connect(self.address, deadline=2.0)
                assert client.greeting.startswith(b"+OK")
                assert await client.command(b"QUIT") == b"+OK bye"
                await client.close()
                return self
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no greeting on port {self.port} within {START_DEADLINE} s")

    async def kill(self, signum: int = signal.SIGKILL) -> int:
        """Send `signum` to our process and wait for it to exit; its exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), START_DEADLINE)

    async def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go; only our own PID."""
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.kill(signal.SIGTERM)
        except TimeoutError:
            await self.kill(signal.SIGKILL)


def popbridge_serve(config: Path, port: int, log: Path) -> BridgeProcess:
    return BridgeProcess([str(POPBRIDGE), "serve", "--config", str(config)], port, log)


def memory_usage(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of `pid`, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found
