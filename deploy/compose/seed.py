"""Seed a Maildir with one welcome message, once: the compose demo's mailbox.

Usage: python seed.py MAILDIR [--owner UID:GID]. A Maildir that already holds mail is
left alone, so restarting the demo never adds a second copy.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path


def welcome() -> bytes:
    message = EmailMessage()
    message["From"] = "popbridge demo <demo@example.net>"
    message["To"] = "alice@example.net"
    message["Subject"] = "Welcome to the popbridge demo"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="example.net")
    message.set_content(
        "This message lives in Dovecot. Your POP3 client fetched it through popbridge.\n"
    )
    return message.as_bytes().replace(b"\r\n", b"\n")


def seed(maildir: Path, owner: tuple[int, int] | None = None) -> bool:
    """Create `maildir` with one message unless it already has mail; True if seeded."""
    folders = [maildir / name for name in ("cur", "new", "tmp")]
    if any(folder.is_dir() and any(folder.iterdir()) for folder in folders[:2]):
        return False
    for folder in (maildir, *folders):
        folder.mkdir(parents=True, exist_ok=True)
    name = f"{int(time.time())}.P{os.getpid()}.{socket.gethostname()}"
    (maildir / "tmp" / name).write_bytes(welcome())
    (maildir / "tmp" / name).rename(maildir / "new" / name)  # Maildir: tmp, then new
    if owner is not None:
        for path in (maildir.parent, maildir, *folders, maildir / "new" / name):
            os.chown(path, *owner)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("maildir", type=Path)
    parser.add_argument("--owner", help="UID:GID to own the Maildir (Dovecot's mail user)")
    args = parser.parse_args()
    owner = tuple(int(part) for part in args.owner.split(":")) if args.owner else None
    seeded = seed(args.maildir, owner)  # type: ignore[arg-type]
    print("seeded one message" if seeded else "mailbox already has mail; left alone")


if __name__ == "__main__":
    main()
