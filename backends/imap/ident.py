"""The IMAP ID command (RFC 2971) that tells the upstream which device is logging in.

With `[backend] send_client_address = true`, a connection sends, before LOGIN or
AUTHENTICATE, `ID ("x-originating-ip" "<device address>")`. Dovecot (and others) believe
it only from their trusted networks (Dovecot: `login_trusted_networks`), and then log,
rate-limit and penalise failed logins by the device's address rather than the bridge's.
It is sent only when the server lists ID (RFC 2971 section 3.1); a refusal changes
nothing, a timeout drops the connection as any command's does.
"""

from __future__ import annotations

import ipaddress
import logging

from backends.imap import wire
from backends.imap.connection import Connection

logger = logging.getLogger(__name__)


def id_argument(address: str) -> str | None:
    """The ID parameter list naming `address`, or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"({wire.quote('x-originating-ip')} {wire.quote(str(ip))})"


async def send_client_address(connection: Connection, address: str) -> None:
    """ID with the device's address (RFC 2971 section 3.1), if the server offers ID."""
    argument = id_argument(address)
    if argument is None or "ID" not in connection.capabilities:
        return
    reply = await connection.run("ID", argument, check=False)
    if not reply.ok:
        logger.info("%s: ID refused: %s", connection.peer, reply.describe())
