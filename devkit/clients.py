"""Runners for real POP3 clients (fetchmail, mpop, getmail6, curl, poplib) against any server.

This module owns driving each client the way a user would, in its own work dir, and returning
what it delivered, so end-to-end tests can compare bytes with the server's originals. Nothing is
normalised silently: each runner documents what its client does to a message, and
:func:`strip_client_additions` undoes exactly that (it raises if the expected additions are
missing). What a POP3 client can receive at best is :func:`pop3_form` of the original: RFC 1939
multi-line replies end in CRLF.CRLF, so a message that does not end in CRLF gains one.
Measured with fetchmail 6.4.37, mpop 1.4.18, getmail6 6.18.11, curl 7.88.1 (Debian 12).
"""

from __future__ import annotations

import ipaddress
import os
import poplib
import pwd
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .dovecot import ensure_installed

CLIENT_TIMEOUT = 120.0
TLS_MODES = ("none", "implicit", "starttls")
# Header fields each client puts on top of a delivered message, in order (see the runners).
_ADDED_FIELDS: dict[str, tuple[str, ...]] = {
    "fetchmail": ("Received",),
    "mpop": ("Received",),
    "getmail": ("Return-Path", "Delivered-To", "Received"),
    "curl": (),
    "poplib": (),
}
_DELIVERS_LF = frozenset({"fetchmail", "mpop", "getmail"})
# Sequential file names: fetchmail and mpop deliver one message at a time, in POP3 order.
_DELIVER_SCRIPT = """\
#!/bin/sh
# Delivers the message on stdin as the next numbered file in {out}.
n=$(ls {out} | wc -l)
exec cat > {out}/$(printf '%06d' $((n + 1)))
"""


class ClientFailed(Exception):
    """A client exited with an unexpected status; the message holds its command and output."""


@dataclass(frozen=True)
class Pop3Target:
    """Where a client connects. ``tls``: "none", "implicit" (POP3S) or "starttls" (STLS).

    TLS is always verified, against ``ca_file``.
    """

    host: str
    port: int
    user: str
    password: str
    tls: str = "none"
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {self.tls!r}")
        if self.tls != "none" and self.ca_file is None:
            raise ValueError("TLS targets need ca_file (clients verify the certificate)")

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def pop3_form(message: bytes) -> bytes:
    """The best a POP3 client can receive for ``message`` (CRLF form): it always ends in CRLF."""
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def strip_client_additions(client: str, data: bytes) -> bytes:
    """Remove exactly the header fields ``client`` adds, and turn its LF line ends into CRLF.

    ``client`` is "fetchmail", "mpop", "getmail", "curl" or "poplib". Raises ValueError when the
    expected fields are not at the top: that means the client behaved differently than measured.
    """
    if client not in _ADDED_FIELDS:
        raise ValueError(f"unknown client {client!r}")
    for name in _ADDED_FIELDS[client]:
        data = _drop_first_field(data, name)
    if client in _DELIVERS_LF:
        if b"\r\n" in data:
            raise ValueError(f"{client} delivered CRLF, expected LF line ends")
        data = data.replace(b"\n", b"\r\n")
    return data


def _drop_first_field(data: bytes, name: str) -> bytes:
    if data[: len(name) + 1].lower() != f"{name.lower()}:".encode():
        raise ValueError(f"expected a {name}: header field first, got {data[:60]!r}")
    end = data.index(b"\n") + 1
    while data[end : end + 1] in (b" ", b"\t"):  # RFC 5322 folded continuation lines
        end = data.index(b"\n", end) + 1
    return data[end:]


def _run(
    argv: list[str],
    target: Pop3Target,
    *,
    env: dict[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    ensure_installed()
    proc = subprocess.run(
        argv, capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=CLIENT_TIMEOUT
    )
    if proc.returncode not in ok:
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        text = f"{shlex.join(argv)} exited {proc.returncode}:\n{output}"
        raise ClientFailed(text.replace(target.password, "<password>"))
    return proc


def _env(workdir: Path) -> dict[str, str]:
    # HOME=workdir: no ~/.fetchmailrc, ~/.mpoprc or ~/.netrc of the caller leaks in.
    return dict(os.environ, HOME=str(workdir), LC_ALL="C")


def _delivery_dir(workdir: Path) -> tuple[Path, Path]:
    """A fresh output dir and the MDA script writing into it (one per run)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="delivered-", dir=workdir))
    script = out.with_name(out.name + ".sh")
    script.write_text(_DELIVER_SCRIPT.format(out=shlex.quote(str(out))))
    return out, script


def _read_all(files: list[Path]) -> list[bytes]:
    return [f.read_bytes() for f in files]


def _local_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _fm_quote(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fetchmail_tls(target: Pop3Target) -> str:
    if target.tls == "none":
        return "sslproto ''"  # also stops fetchmail's opportunistic STLS
    verify = f"sslcertck sslcertfile {_fm_quote(target.ca_file or '')}"
    if target.is_ip:
        verify += " sslcommonname localhost"  # fetchmail ignores IP SANs
    return f"ssl {verify}" if target.tls == "implicit" else f"sslproto 'TLS1.2+' {verify}"


def run_fetchmail(target: Pop3Target, workdir: Path, *, keep: bool) -> list[bytes]:
    """Run fetchmail once; returns the messages its MDA received, in order.

    keep=True: ``keep`` (fetchmail downloads with ``TOP n 99999999``, so nothing gets \\Seen)
    and UIDLs remembered in ``workdir/fetchids``: a second run in the same workdir fetches only
    new messages. keep=False: ``nokeep fetchall`` (RETR + DELE). ``no rewrite`` keeps fetchmail
    from qualifying bare addresses in To/Cc/From (``To: bob`` -> ``To: bob@localhost``).
    What it does to a message: prepends a 3-line ``Received:`` field and delivers LF line ends.
    """
    out, script = _delivery_dir(workdir)
    rc = workdir / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll {_fm_quote(target.host)} with proto POP3 port {target.port} uidl timeout 60\n"
        f"  user {_fm_quote(target.user)} there with password {_fm_quote(target.password)}"
        f" is {_fm_quote(_local_user())} here\n"
        f"  {_fetchmail_tls(target)}\n"
        f"  mda {_fm_quote('/bin/sh ' + shlex.quote(str(script)))}\n"
        f"  {'keep' if keep else 'nokeep fetchall'} no rewrite\n"
    )
    rc.chmod(0o600)  # fetchmail refuses an rc file others can read
    env = _env(workdir) | {"FETCHMAILHOME": str(workdir)}
    argv = ["fetchmail", "-v", "-f", str(rc), "-i", str(workdir / "fetchids")]
    _run(argv, target, env=env, ok=(0, 1))  # 1 = no (new) mail
    return _read_all(sorted(out.iterdir()))


def run_mpop(target: Pop3Target, workdir: Path, *, keep: bool) -> list[bytes]:
    """Run mpop once (command line only, no rc file); returns what its MDA received, in order.

    keep=True: ``--keep=on``, new messages only by the UIDLs in ``workdir/uidls``; keep=False:
    ``--keep=off --only-new=off`` (everything fetched and deleted). mpop pipelines RETRs and
    DELEs when the server offers PIPELINING. Without TLS it needs ``--auth=user``.
    What it does to a message: prepends a 3-line ``Received:`` field and delivers LF line ends.
    """
    out, script = _delivery_dir(workdir)
    password_cmd = "printf '%s\\n' " + shlex.quote(target.password)
    if target.tls == "none":
        tls = ["--tls=off", "--auth=user"]
    else:
        starttls = "on" if target.tls == "starttls" else "off"
        tls = ["--tls=on", f"--tls-starttls={starttls}", f"--tls-trust-file={target.ca_file}"]
    argv = [
        "mpop",
        "-q",
        f"--host={target.host}",
        f"--port={target.port}",
        f"--user={target.user}",
        f"--passwordeval={password_cmd}",
        *tls,
        "--timeout=60",
        f"--delivery=mda,/bin/sh {shlex.quote(str(script))}",
        f"--uidls-file={workdir / 'uidls'}",
        f"--keep={'on' if keep else 'off'}",
        *([] if keep else ["--only-new=off"]),
    ]
    _run(argv, target, env=_env(workdir))
    return _read_all(sorted(out.iterdir()))


def _getmail_rc(target: Pop3Target, maildir: Path, delete: bool) -> str:
    if target.tls == "starttls":
        raise ValueError("getmail6 has no STLS for POP3: use tls='none' or 'implicit'")
    ssl_part = "SSL" if target.tls == "implicit" else ""
    # Only with ca_certs does getmail verify the certificate at all.
    ca = f"ca_certs = {target.ca_file}\n" if target.tls == "implicit" else ""
    # As root getmail refuses to deliver unless told which user to deliver as.
    as_user = "user = nobody\n" if os.geteuid() == 0 else ""
    return (
        f"[retriever]\ntype = SimplePOP3{ssl_part}Retriever\nserver = {target.host}\n"
        f"port = {target.port}\nusername = {target.user}\npassword = {target.password}\n{ca}"
        f"[destination]\ntype = Maildir\npath = {maildir}/\n{as_user}"
        f"[options]\nread_all = {str(delete).lower()}\ndelete = {str(delete).lower()}\n"
    )


def _getmail_order(path: Path) -> tuple[int, str]:
    # getmail names files <secs>.M<usecs>P<pid>Q<delivery count>R<random>.<host>
    found = re.search(r"Q(\d+)R", path.name)
    return (int(found.group(1)) if found else -1, path.name)


def run_getmail(target: Pop3Target, workdir: Path, *, delete: bool) -> list[bytes]:
    """Run getmail6 once into a fresh Maildir; returns the delivered messages in POP3 order.

    delete=False: ``read_all = false`` (new messages only, by the UIDLs in ``workdir/oldmail-*``),
    nothing deleted; delete=True: ``read_all = true``, ``delete = true``. No STLS in getmail6.
    What it does to a message: prepends ``Return-Path: <unknown>``, ``Delivered-To: unknown``
    and a 2-line ``Received:`` field, delivers LF line ends, and re-generates the header through
    Python's ``email`` package: header lines over 78 characters are refolded, a tab after a
    field's colon becomes a space, and an existing ``Return-Path`` is moved to the top (its
    address replaces ``<unknown>``). :func:`strip_client_additions` cannot undo those three.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # As root getmail delivers as nobody, who must reach the Maildir; pytest's tmp dirs are
    # 0700, so the Maildir then lives in a world-searchable temp dir of its own.
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="popbridge-getmail-", dir=None if as_root else workdir))
    try:
        base.chmod(0o755)
        maildir = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        if as_root:
            for path in (maildir, *maildir.iterdir()):
                shutil.chown(path, "nobody", "nogroup")
        rc = workdir / "getmailrc"
        rc.write_text(_getmail_rc(target, maildir, delete))
        rc.chmod(0o600)
        _run(["getmail", f"--getmaildir={workdir}", f"--rcfile={rc}"], target, env=_env(workdir))
        return _read_all(sorted((maildir / "new").iterdir(), key=_getmail_order))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _curl_base(target: Pop3Target) -> list[str]:
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "60"]
    argv += ["-u", f"{target.user}:{target.password}"]
    if target.tls != "none":
        argv += ["--cacert", str(target.ca_file)]
    if target.tls == "starttls":
        argv.append("--ssl-reqd")
    return argv


def _curl_url(target: Pop3Target, path: str = "") -> str:
    scheme = "pop3s" if target.tls == "implicit" else "pop3"
    return f"{scheme}://{target.host}:{target.port}/{path}"


def curl_list(target: Pop3Target) -> str:
    """``LIST`` as curl prints it: ``"1 2031\\r\\n2 2031\\r\\n"`` (CRLF kept, no dot line).

    curl authenticates with ``AUTH PLAIN`` (no initial response) when the server offers SASL
    PLAIN, and falls back to USER/PASS only without SASL.
    """
    return _run([*_curl_base(target), _curl_url(target)], target).stdout.decode("ascii")


def curl_retr(target: Pop3Target, n: int) -> bytes:
    """``RETR n``: curl removes the dot-stuffing and the final ``.`` line, and adds nothing."""
    return _run([*_curl_base(target), _curl_url(target, str(n))], target).stdout


def curl_retr_all(target: Pop3Target, count: int, workdir: Path) -> list[bytes]:
    """RETR 1..count in ONE connection (curl reuses it for consecutive URLs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if count == 0:
        return []
    out = Path(tempfile.mkdtemp(prefix="curl-", dir=workdir))
    argv = _curl_base(target)
    for n in range(1, count + 1):
        argv += [_curl_url(target, str(n)), "-o", str(out / f"{n:06d}")]
    _run(argv, target)
    return _read_all(sorted(out.iterdir()))


def curl_command(target: Pop3Target, command: str) -> str:
    """Send one POP3 ``command`` after logging in; curl sends QUIT at the end (so DELE applies).

    Multi-line commands (CAPA, RETR, TOP, and LIST/UIDL without argument) return the reply body
    and raise ClientFailed on -ERR. Single-line ones (STAT, DELE, NOOP, "LIST 1", ...) return
    the status line, ``+OK ...`` or ``-ERR ...``: curl never prints it, so it is read from
    ``-v`` output (curl exits 8 on -ERR, which is not an error here).
    """
    verb, _, arg = command.partition(" ")
    verb = verb.upper()
    multi = verb in ("CAPA", "RETR", "TOP") or (verb in ("LIST", "UIDL") and not arg.strip())
    if multi:
        proc = _run([*_curl_base(target), "-X", command, _curl_url(target)], target)
        return proc.stdout.decode("utf-8", errors="surrogateescape")
    argv = [*_curl_base(target), "-v", "-I", "-X", command, _curl_url(target)]
    proc = _run(argv, target, ok=(0, 8))
    lines = proc.stderr.decode("utf-8", errors="replace").splitlines()
    if f"> {command}" in lines:
        # With TLS, "{ [5 bytes data]" lines come between the command and its reply.
        after = lines[lines.index(f"> {command}") + 1 :]
        replies = [line[2:] for line in after if line.startswith("< ")]
        if replies:
            return replies[0]
    raise ClientFailed(f"no reply to {command!r} in curl output:\n" + "\n".join(lines))


def _poplib_connect(target: Pop3Target) -> poplib.POP3:
    context = ssl.create_default_context(cafile=target.ca_file) if target.ca_file else None
    if target.tls == "implicit":
        client: poplib.POP3 = poplib.POP3_SSL(target.host, target.port, context=context, timeout=60)
    else:
        client = poplib.POP3(target.host, target.port, timeout=60)
        if target.tls == "starttls":
            client.stls(context=context)
    client.user(target.user)
    client.pass_(target.password)
    return client


def poplib_fetch_all(target: Pop3Target, *, delete: bool) -> list[bytes]:
    """STAT, then RETR (and DELE when ``delete``) every message, then QUIT (RFC 1939: deletions
    apply only at QUIT). Returns each message as lines joined with CRLF plus a final CRLF: poplib
    splits on LF, so this is exact for CRLF wire data. poplib refuses lines over 2048 bytes
    (``poplib._MAXLINE``) with ``error_proto('line too long')``.
    """
    client = _poplib_connect(target)
    try:
        count, _size = client.stat()
        messages = []
        for n in range(1, count + 1):
            _resp, lines, _octets = client.retr(n)
            messages.append(b"".join(line + b"\r\n" for line in lines))
            if delete:
                client.dele(n)
        client.quit()
    except BaseException:
        client.close()
        raise
    return messages
