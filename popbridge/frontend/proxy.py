"""PROXY protocol headers, versions 1 and 2: parsing with strict bounds, and nothing else.

A load balancer in TCP mode (HAProxy `send-proxy`/`send-proxy-v2`, AWS NLB, ...) puts one
header in front of the client's byte stream that names the client's address. This module
owns reading that header from bytes: `remaining` says how many more bytes may be read
without reading past the header (so the client's first bytes, a TLS ClientHello say, stay
in the socket for whoever reads next), `parse` turns one whole header into a `ProxyHeader`,
and `is_trusted` decides who may send one at all. It does no I/O; every malformed, oversized
or unsupported header raises `ProxyError`. The format is HAProxy's "The PROXY protocol"
specification (versions 1 and 2), cited below by section.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # §2.1: the longest v1 line, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2
V2_HEADER: Final = 16  # signature, version/command, family/transport, length
# §2.2 allows up to 65535 bytes after the fixed part; we take what fits, with TLVs, in the
# 536-byte minimum TCP segment the specification sizes headers by, and refuse the rest.
V2_MAX_PAYLOAD: Final = 536 - V2_HEADER
FIRST_READ: Final = 15  # "PROXY UNKNOWN\r\n", the shortest header of either version

_V1_FAMILIES: Final = {b"TCP4": 4, b"TCP6": 6}
_V2_ADDRESS_SIZES: Final = {0x11: 12, 0x21: 36}  # TCP over IPv4, TCP over IPv6 (§2.2)
_V2_SKIPPED_FAMILIES: Final = {0x00: 0, 0x31: 216}  # UNSPEC, UNIX stream: no client named


class ProxyError(ValueError):
    """The bytes are not an acceptable PROXY header; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header. `source` is None when the sender names no client (v1 UNKNOWN,
    v2 LOCAL such as the proxy's own health check, or an address family we do not relay):
    then the connection's own peer address stands."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def remaining(data: bytes) -> int:
    """How many more bytes to read before `data` is a whole header: 0 once it is.

    Never more than the header still needs, so nothing after it is consumed. Raises
    `ProxyError` as soon as `data` cannot be the start of a valid header.
    """
    if len(data) < FIRST_READ:
        _check_prefix(data)
        return FIRST_READ - len(data)
    if data.startswith(V1_PREFIX):
        return _v1_remaining(data)
    if not data.startswith(V2_SIGNATURE[: min(len(data), len(V2_SIGNATURE))]):
        raise ProxyError("not a PROXY protocol header")
    if len(data) < V2_HEADER:
        return V2_HEADER - len(data)
    length = int.from_bytes(data[14:16], "big")
    if length > V2_MAX_PAYLOAD:
        raise ProxyError(f"v2 header of {length} bytes is over the {V2_MAX_PAYLOAD}-byte limit")
    if len(data) > V2_HEADER + length:
        raise ProxyError("read past the end of the v2 header")
    return V2_HEADER + length - len(data)


def _check_prefix(data: bytes) -> None:
    if not (V1_PREFIX.startswith(data[:6]) or V2_SIGNATURE.startswith(data[:12])):
        raise ProxyError("not a PROXY protocol header")


def _v1_remaining(data: bytes) -> int:
    end = data.find(b"\r\n")
    if end not in (-1, len(data) - 2):
        raise ProxyError("read past the end of the v1 header")
    if any(byte < 0x20 or byte > 0x7E for byte in data.rstrip(b"\r\n")):
        raise ProxyError("v1 header holds a byte that is not printable ASCII")
    need = 0 if end != -1 else 1 if data.endswith(b"\r") else 2  # read no further than CRLF
    if len(data) + need > V1_MAX:
        raise ProxyError(f"v1 header longer than {V1_MAX} bytes")
    return need


def parse(data: bytes) -> ProxyHeader:
    """The header that is exactly `data` (`remaining(data) == 0`); raises `ProxyError`."""
    if remaining(data) != 0:
        raise ProxyError("incomplete PROXY header")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data[len(V1_PREFIX) : -2])
    return _parse_v2(data[12], data[13], data[V2_HEADER:])


def _parse_v1(line: bytes) -> ProxyHeader:
    """§2.1: "TCP4|TCP6 src dst sport dport", or "UNKNOWN" and anything up to CRLF."""
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1)
    fields = line.split(b" ")
    if len(fields) != 5 or fields[0] not in _V1_FAMILIES:
        raise ProxyError("v1 header is not TCP4/TCP6 with two addresses and two ports")
    version = _V1_FAMILIES[fields[0]]
    source = (_v1_address(fields[1], version), _v1_port(fields[3]))
    destination = (_v1_address(fields[2], version), _v1_port(fields[4]))
    return ProxyHeader(1, source, destination)


def _v1_address(text: bytes, version: int) -> str:
    try:
        if b"%" in text:  # a zone index names an interface of the proxy, not a client
            raise ValueError(text)
        address = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise ProxyError("v1 header holds an invalid address") from None
    if address.version != version:
        raise ProxyError("v1 address does not match its family")
    return str(address)


def _v1_port(text: bytes) -> int:
    # §2.1: a decimal number 0..65535; a leading zero is refused rather than guessed at
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text.startswith(b"0")):
        raise ProxyError("v1 header holds an invalid port")
    port = int(text)
    if port > 65535:
        raise ProxyError("v1 header holds an invalid port")
    return port


def _parse_v2(version_command: int, family: int, payload: bytes) -> ProxyHeader:
    """§2.2: version 2; LOCAL names no client, PROXY names one for TCP over IPv4/IPv6."""
    if version_command >> 4 != 2:
        raise ProxyError("v2 header with an unknown version")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyError("v2 header with an unknown command")
    size = _V2_ADDRESS_SIZES.get(family, _V2_SKIPPED_FAMILIES.get(family))
    if size is None:
        raise ProxyError("v2 header with an unknown address family or transport")
    if len(payload) < size:
        raise ProxyError("v2 header shorter than its address block")
    _check_tlvs(payload[size:])
    if command == 0 or family not in _V2_ADDRESS_SIZES:  # LOCAL, UNSPEC, UDP, UNIX
        return ProxyHeader(2)
    half = size // 2 - 2
    source = ipaddress.ip_address(payload[:half])
    destination = ipaddress.ip_address(payload[half : 2 * half])
    ports = payload[2 * half : size]
    return ProxyHeader(
        2,
        (str(source), int.from_bytes(ports[:2], "big")),
        (str(destination), int.from_bytes(ports[2:], "big")),
    )


def _check_tlvs(data: bytes) -> None:
    """§2.2.7: type, 2-byte length, value; each must fit. Their contents are not used."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyError("v2 header ends inside a TLV")
        offset += 3 + int.from_bytes(data[offset + 1 : offset + 3], "big")
        if offset > len(data):
            raise ProxyError("v2 TLV runs past the end of the header")


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse "CIDR" strings (host bits must be zero); ValueError names a bad one."""
    found = []
    for cidr in cidrs:
        try:
            found.append(ipaddress.ip_network(cidr, strict=True))
        except ValueError as error:
            raise ValueError(f"{cidr!r} is not a network: {error}") from None
    return tuple(found)


def is_trusted(address: str, trusted: Iterable[IPNetwork]) -> bool:
    """Whether the peer `address` is inside one of `trusted` (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)
