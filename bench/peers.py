"""The three POP3 servers under test, started on loopback and stopped by PID.

This module owns the benchmark's processes: the Dovecot backend (IMAP + POP3 on one Maildir
tree; its POP3 is the "direct" reference), a second Dovecot that serves POP3 from that
backend over IMAP (imapc storage, rendered from ``bench/dovecot-imapc.conf``), and popbridge
run as ``popbridge serve --config FILE`` in its own process with the backend's plain IMAP port
as its upstream. It also reads what the memory figures need: a process's ``VmRSS``/``VmHWM``
(with the peak reset through ``clear_refs``) and the summed PSS of a Dovecot process tree.
The backend comes from ``devkit.dovecot``, with settings for 1,000 concurrent sessions
appended to its config.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import resource
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from devkit.dovecot import DOVECOT_BIN, Dovecot, free_port, start_dovecot

HERE = Path(__file__).resolve().parent
IMAPC_TEMPLATE = HERE / "dovecot-imapc.conf"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
PROCESS_LIMIT = 1500
CLIENT_LIMIT = 8000

# Appended to the harness's backend config. One imap process per upstream session (popbridge
# or imapc: 1,000 each, never at the same time), one pop3 process per direct session.
# Distinct users per concurrent session keep every user under mail_max_userip_connections
# (10 per user and IP), so that limit stays at its default. The login services run in
# Dovecot's documented high-performance mode (long-lived login processes, one per core,
# each serving many connections), as a busy server would: in the default mode every
# connection forks a login process, and a burst of 200 waits up to 2 s for its greeting.
# `per_connection` keeps that default mode instead (the `--login-processes` variant).
LOGIN_HIGH_PERFORMANCE = """
  service_count = 0
  process_min_avail = 2
"""


def login_services(per_connection: bool) -> str:
    """The body of a Dovecot login service block: high-performance mode, or the default."""
    return "\n" if per_connection else LOGIN_HIGH_PERFORMANCE


def backend_limits(per_connection: bool = False) -> str:
    login = login_services(per_connection)
    return f"""
# --- added by bench/peers.py: room for 1,000 sessions held at once
default_process_limit = {PROCESS_LIMIT}
default_client_limit = {CLIENT_LIMIT}
service imap {{
  process_limit = {PROCESS_LIMIT + 500}
}}
service imap-login {{{login}}}
service pop3-login {{{login}}}
"""


def raise_fd_limit() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def die_with_parent() -> None:
    # In the child before exec: SIGTERM it if the benchmark dies (Linux PR_SET_PDEATHSIG).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def client_context(ca_file: Path) -> ssl.SSLContext:
    """What the benchmark's clients verify servers with: the backend's test CA, host names on."""
    return ssl.create_default_context(cafile=str(ca_file))


def wait_port(
    port: int, process: subprocess.Popen[bytes] | None, what: str, *, tls: Path | None = None
) -> None:
    """Until ``port`` greets with +OK (POP3) or * OK (IMAP), over TLS verified against the CA
    file ``tls`` if given; fails if ``process`` exits."""
    deadline = time.monotonic() + START_TIMEOUT
    context = client_context(tls) if tls is not None else None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with contextlib.ExitStack() as stack:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                stack.enter_context(sock)
                if context is not None:
                    sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
                    stack.enter_context(sock)
                greeting = sock.recv(512)
                if greeting.startswith((b"+OK", b"* OK")):
                    sock.sendall(b"QUIT\r\n" if greeting[:1] == b"+" else b"Z LOGOUT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not answering on port {port}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM this one process (a Dovecot master takes its children along) and reap it."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


# ----------------------------------------------------------------- Dovecot backend


def start_backend(
    directory: Path, users: dict[str, str], *, login_per_connection: bool = False
) -> Dovecot:
    """The harness's Dovecot (IMAP + POP3 on Maildir) with the limits raised for 1,000 sessions.

    The limits are in its config from the start: Dovecot sizes each listening socket's
    backlog from them, and a reload would keep the sockets of the default limits (a backlog
    of 100, which a burst of 200 logins overflows into 1 s and 3 s SYN retransmissions).
    """
    limits = backend_limits(login_per_connection)
    backend = start_dovecot(directory, users, extra_config=limits)
    try:
        conf = backend.directory / "dovecot.conf"
        checked = subprocess.run(
            [shutil.which("doveconf") or "doveconf", "-c", str(conf), "-n"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if checked.returncode != 0:
            raise RuntimeError(f"dovecot config with raised limits refused: {checked.stderr}")
    except BaseException:
        backend.stop()
        raise
    return backend


# ----------------------------------------------------------------- Dovecot imapc


@dataclass
class Instance:
    """A started server process listening for POP3 on ``port`` (POP3S when started with TLS)."""

    name: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        _stop(self.process)


_Started = TypeVar("_Started", bound=Instance)


def launch(
    kind: type[_Started],
    name: str,
    directory: Path,
    port: int,
    command: list[str],
    log: Path,
    *,
    tls: Path | None = None,
) -> _Started:
    """Start ``command`` (output appended to ``log``) and wait until ``port`` greets (over TLS
    verified against the CA file ``tls`` when given); the process is stopped if it never does."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    instance = kind(name, directory, port, process)
    try:
        wait_port(port, process, name, tls=tls)
    except BaseException:
        instance.stop()
        raise
    return instance


def _identities() -> dict[str, object]:
    """Who Dovecot's processes run as: as root, dovenull/dovecot and mail as nobody."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        return {
            "login_user": "dovenull", "internal_user": "dovecot", "internal_group": "dovecot",
            "mail_uid": nobody.pw_uid, "mail_gid": nobody.pw_gid,
        }  # fmt: skip
    user = pwd.getpwuid(os.getuid()).pw_name
    return {
        "login_user": user, "internal_user": user,
        "internal_group": grp.getgrgid(os.getgid()).gr_name,
        "mail_uid": os.getuid(), "mail_gid": os.getgid(),
    }  # fmt: skip


# imapc and its passdb reach the backend over verified IMAPS (certificate checked against the
# backend's test CA: ssl_client_ca_file for imapc, ssl_ca_file for passdb imap) or plain IMAP.
_IMAPC_TLS = """\
imapc_port = {port}
imapc_ssl = imaps
imapc_ssl_verify = yes
ssl_client_ca_file = {ca_file}
"""


def start_imapc(
    directory: Path, backend: Dovecot, *, tls: bool = False, login_per_connection: bool = False
) -> Instance:
    """Dovecot POP3 with imapc storage proxying to ``backend``: with ``tls`` POP3S to the
    clients and verified IMAPS upstream, else plain POP3 and the backend's plain IMAP port."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # Dovecot's unprivileged processes must get in
    ids = _identities()
    home = directory / "home"
    home.mkdir(exist_ok=True)
    os.chown(home, int(str(ids["mail_uid"])), int(str(ids["mail_gid"])))
    pop3, pop3s = free_port(), free_port()
    up_port = backend.imaps_port if tls else backend.imap_port
    text = string.Template(IMAPC_TEMPLATE.read_text()).substitute(
        ids, dir=directory, pop3_port=pop3, pop3s_port=pop3s,
        up_host=backend.host, up_port=up_port,
        passdb_ssl=f" ssl=imaps ssl_ca_file={backend.pki.ca_file}" if tls else "",
        upstream_tls=(
            _IMAPC_TLS.format(port=up_port, ca_file=backend.pki.ca_file)
            if tls
            else f"imapc_port = {up_port}\n"
        ),
        cert_file=backend.pki.cert_file, key_file=backend.pki.key_file,
        process_limit=PROCESS_LIMIT, client_limit=CLIENT_LIMIT,
        login_service=login_services(login_per_connection),
    )  # fmt: skip
    (directory / "dovecot.conf").write_text(text)
    command = [str(DOVECOT_BIN), "-F", "-c", str(directory / "dovecot.conf")]
    log = directory / "dovecot.out"
    instance = launch(Instance, "imapc", directory, pop3, command, log)
    if tls:
        wait_port(pop3s, instance.process, "imapc POP3S", tls=backend.pki.ca_file)
        instance.port = pop3s
    return instance


# ----------------------------------------------------------------- popbridge

STORE_FILE = "popbridge.sqlite3"  # popbridge's default store, as deployed
_POPBRIDGE_CONFIG = string.Template("""\
# popbridge under benchmark (written by bench/peers.py)
[server]
max_connections = $max_connections
# every benchmark client comes from 127.0.0.1: the per-address cap (default 50) must not bite
max_connections_per_address = $max_connections
auth_failure_delay = 0.1
log_level = "$log_level"

[[listeners]]
host = "127.0.0.1"
port = $port
$listener
[backend]
type = "imap"
host = "$up_host"
port = $up_port
$upstream

[store]
type = "sqlite"
path = "$store"
""")


@dataclass
class Popbridge(Instance):
    """``popbridge serve`` in its own process; memory figures come from /proc."""

    def status_kb(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak RSS) and friends in kB, from /proc/PID/status."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Vm"):
                found[key] = int(value.split()[0])
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (``clear_refs`` 5); False if not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True


def start_popbridge(
    directory: Path,
    backend: Dovecot,
    *,
    profile: Path | None = None,
    log_level: str = "INFO",
    tls: bool = False,
) -> Popbridge:
    """Run ``popbridge serve --config`` (optionally under cProfile, written at SIGTERM): with
    ``tls`` POP3S on its port and verified IMAPS upstream, else plain POP3 and plain IMAP;
    on its default store, a SQLite file in ``directory``, new at every start."""
    port = free_port()
    pki = backend.pki
    store = directory / STORE_FILE
    for stale in (store, *(store.with_name(store.name + end) for end in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)  # a start is a fresh start: nothing remembered
    config = _POPBRIDGE_CONFIG.substitute(
        store=store,
        max_connections=2000,
        log_level=log_level,
        port=port,
        up_host=backend.host,
        up_port=backend.imaps_port if tls else backend.imap_port,
        listener=(
            f'mode = "implicit"\ncert_file = "{pki.cert_file}"\nkey_file = "{pki.key_file}"\n'
            if tls
            else "plaintext_auth = true\n"
        ),
        upstream=f'tls = "implicit"\nca_file = "{pki.ca_file}"\n' if tls else 'tls = "none"\n',
    )
    ca_file = pki.ca_file if tls else None
    return launch_popbridge(directory, port, config, profile=profile, tls=ca_file)


def launch_popbridge(
    directory: Path, port: int, text: str, *, profile: Path | None = None, tls: Path | None = None
) -> Popbridge:
    """Write ``text`` as ``popbridge.toml`` in ``directory`` and serve it; waits for ``port``
    (a TLS port, verified against the CA file ``tls``, when given)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "popbridge.toml"
    config.write_text(text)
    serve = ["serve", "--config", str(config)]
    script = shutil.which("popbridge", path=str(Path(sys.executable).parent))
    command = [script, *serve] if script else [sys.executable, "-m", "popbridge.cli", *serve]
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "popbridge.cli"]
        command += serve
    log = directory / "popbridge.log"
    return launch(Popbridge, "popbridge", directory, port, command, log, tls=tls)
