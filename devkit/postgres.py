"""A real, throw-away PostgreSQL server for the store tests: started and stopped here.

This module owns one PostgreSQL cluster per test session: `initdb` into a fresh temp
directory, then `postgres` in the foreground on a free 127.0.0.1 port with its Unix socket
in that directory, password authentication (SCRAM) for a `popbridge` role, and settings
that trade durability for speed. PostgreSQL refuses to run as root, so as root the cluster
belongs to the `postgres` user the Debian package creates (or `nobody`), and the directory
lives under the system temp dir where that user can reach it. The server dies with the
test process (PR_SET_PDEATHSIG) and `stop()` ends it by PID and removes the directory.
PostgreSQL itself is installed by `scripts/bootstrap`, never here.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from .dovecot import free_port
from .installed import NotInstalled

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
USER = "popbridge"


def find_bin() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def ensure_installed() -> Path:
    """The bin directory of the installed PostgreSQL; `NotInstalled` (naming
    `scripts/bootstrap`) when there is none. Nothing is installed here."""
    found = find_bin()
    if found is None:
        raise NotInstalled("PostgreSQL (postgresql): no initdb found; run scripts/bootstrap")
    return found


def _owner() -> tuple[int, int] | None:
    """The (uid, gid) to run as: None to stay ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, but there is no postgres or nobody user")


def _pdeathsig() -> None:
    # Runs in the child after it changed user, just before exec (a credential change would
    # clear it): the server gets SIGINT (fast shutdown) if the test process dies.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)


@dataclass
class Postgres:
    """A running cluster: connect with `dsn(database)`; `stop()` ends it."""

    directory: Path
    bin: Path
    port: int
    password: str = field(repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Fast shutdown (SIGINT disconnects clients), SIGQUIT if that hangs, then clean up."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGQUIT)
                process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)


def _initdb(bin_dir: Path, directory: Path, password: str, owner: tuple[int, int] | None) -> None:
    (directory / "pwfile").write_text(password + "\n")
    for path in (directory, directory / "pwfile"):
        if owner is not None:
            os.chown(path, *owner)
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(directory / "data"), "-U", USER,
         "--auth=scram-sha-256", f"--pwfile={directory / 'pwfile'}", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, cwd=directory, user=owner[0] if owner else None,
        group=owner[1] if owner else None, extra_groups=[] if owner else None,
    )  # fmt: skip
    (directory / "pwfile").unlink()


def _launch(postgres: Postgres, owner: tuple[int, int] | None) -> subprocess.Popen[bytes]:
    settings = {
        "listen_addresses": postgres.host, "port": str(postgres.port),
        "unix_socket_directories": str(postgres.directory), "fsync": "off",
        "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "100",
        "shared_buffers": "16MB", "dynamic_shared_memory_type": "mmap",
    }  # fmt: skip
    args = [str(postgres.bin / "postgres"), "-D", str(postgres.directory / "data")]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    log = (postgres.directory / "postgres.log").open("ab")
    with log:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=postgres.directory, preexec_fn=_pdeathsig, user=owner[0] if owner else None,
            group=owner[1] if owner else None, extra_groups=[] if owner else None,
        )  # fmt: skip


def _wait_ready(postgres: Postgres) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    process = postgres.process
    assert process is not None
    while True:
        if process.poll() is not None:
            log = (postgres.directory / "postgres.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"postgres exited with {process.returncode}:\n{log}")
        ready = subprocess.run(
            [str(postgres.bin / "pg_isready"), "-q", "-h", postgres.host, "-p", str(postgres.port)],
            check=False,
        )
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("postgres did not accept connections")
        time.sleep(0.05)


def start_postgres() -> Postgres:
    """initdb + start on a free port; returns once the server accepts connections."""
    bin_dir = ensure_installed()
    owner = _owner()
    directory = Path(tempfile.mkdtemp(prefix="popbridge-postgres-"))
    password = secrets.token_urlsafe(12)
    server: Postgres | None = None
    try:
        _initdb(bin_dir, directory, password, owner)
        for _attempt in range(3):  # a free port can be taken before the server binds it
            server = Postgres(directory, bin_dir, free_port(), password)
            server.process = _launch(server, owner)
            try:
                _wait_ready(server)
                return server
            except RuntimeError as error:
                if "could not bind" not in str(error) and "in use" not in str(error):
                    raise
    except BaseException:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if server is not None:
        server.stop()
    raise RuntimeError("postgres: the free port kept being taken, 3 attempts")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server per test module that imports this fixture, stopped at the end."""
    server = start_postgres()
    yield server
    server.stop()


async def create_database(server: Postgres) -> str:
    """A new, empty database on `server`; returns its name."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(server: Postgres, name: str) -> None:
    """Drop `name`, disconnecting whoever is still connected to it."""
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def terminate_backend(server: Postgres, pid: int) -> None:
    """End one server process, as a dead client's connection would end."""
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
