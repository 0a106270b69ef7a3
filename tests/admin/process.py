"""`popbridge serve` as a real process in front of the real Dovecot, with its admin listener."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devkit.dovecot import Dovecot, free_port
from tests.test_cli import write_config


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    pop_port: int
    admin_port: int
    token: str

    def http(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}")
        request.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def terminate(self) -> None:
        os.kill(self.process.pid, signal.SIGTERM)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the exit; its status and everything it logged."""
        try:
            status = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        assert self.process.stderr is not None
        return status, self.process.stderr.read().decode()


def start_daemon(
    dovecot: Dovecot, directory: Path, *, log_format: str = "text", grace: float = 30,
    token: str = "adm1n-T0ken-never-shown-4f9c2e",
) -> Daemon:  # fmt: skip
    pop_port, admin_port = free_port(), free_port()
    token_file = directory / "admin-token"
    token_file.write_text(token + "\n")
    server = f'log_level = "DEBUG"\nlog_format = "{log_format}"\nshutdown_grace = {grace}'
    admin = f'[store]\ntype = "memory"\n[admin]\nenabled = true\nport = {admin_port}\n'
    admin += f'token_file = "{token_file}"\nprobe_interval = 1'
    config = write_config(directory / "popbridge.toml", dovecot, pop_port=pop_port,
                          server=server, extra=admin)  # fmt: skip
    script = Path(sys.executable).with_name("popbridge")
    process = subprocess.Popen(
        [str(script), "serve", "--config", str(config)], stderr=subprocess.PIPE
    )
    daemon = Daemon(process, pop_port, admin_port, token)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, daemon.finish()[1]
        try:
            socket.create_connection(("127.0.0.1", admin_port), timeout=1).close()
            if daemon.http("/readyz")[0] == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("popbridge did not become ready")


class Client:
    """A line-at-a-time POP3 client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.stream = self.sock.makefile("rwb")
        self.greeting = self.stream.readline()

    def send(self, line: bytes) -> bytes:
        self.stream.write(line + b"\r\n")
        self.stream.flush()
        return self.stream.readline()

    def multiline(self, line: bytes) -> list[bytes]:
        lines = [self.send(line)]
        while lines[0].startswith(b"+OK") and lines[-1] != b".\r\n":
            lines.append(self.stream.readline())
        return lines

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
