"""The PROXY header parser: round trips, exact reads, strict bounds, and any bytes at all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devkit.haproxy import v1_header, v2_header
from fuzz import fuzz_proxy
from popbridge.frontend import proxy

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
endpoints = st.one_of(
    st.tuples(st.tuples(v4, ports), st.tuples(v4, ports)),
    st.tuples(st.tuples(v6, ports), st.tuples(v6, ports)),
)
tlv = st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
    lambda t: bytes([t[0]]) + len(t[1]).to_bytes(2, "big") + t[1]
)


def read(stream: bytes) -> tuple[proxy.ProxyHeader, bytes]:
    """Read as the server does, `remaining` bytes at a time; returns the header and the rest."""
    taken = b""
    while (need := proxy.remaining(taken)) > 0:
        if len(stream) < need:
            raise EOFError
        taken, stream = taken + stream[:need], stream[need:]
    return proxy.parse(taken), stream


def canonical(endpoint: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(endpoint[0])), endpoint[1]


@given(endpoints, st.binary(max_size=64))
def test_v1_round_trip_reads_exactly_the_header(
    pair: tuple[tuple[str, int], tuple[str, int]], after: bytes
) -> None:
    source, destination = pair
    header, rest = read(v1_header(source, destination) + after)
    assert header == proxy.ProxyHeader(1, canonical(source), canonical(destination))
    assert rest == after  # the client's first bytes stay for the next reader


@given(endpoints, st.lists(tlv, max_size=5), st.binary(max_size=64))
def test_v2_round_trip_reads_exactly_the_header(
    pair: tuple[tuple[str, int], tuple[str, int]], tlvs: list[bytes], after: bytes
) -> None:
    source, destination = pair
    raw = v2_header(source, destination, tlvs=b"".join(tlvs))
    if len(raw) - proxy.V2_HEADER > proxy.V2_MAX_PAYLOAD:
        with pytest.raises(proxy.ProxyError, match="limit"):
            read(raw + after)
        return
    header, rest = read(raw + after)
    assert header == proxy.ProxyHeader(2, canonical(source), canonical(destination))
    assert rest == after


@given(st.binary(max_size=600))
def test_any_bytes_give_a_header_an_error_or_a_request_for_more(data: bytes) -> None:
    try:
        header, _ = read(data)
    except (proxy.ProxyError, EOFError):
        return
    assert header.version in (1, 2)


@given(st.binary(min_size=1, max_size=200))
def test_parse_refuses_anything_but_one_whole_header(extra: bytes) -> None:
    whole = v2_header(("192.0.2.1", 1234), ("192.0.2.2", 110))
    with pytest.raises(proxy.ProxyError):
        proxy.parse(whole + extra)
    with pytest.raises(proxy.ProxyError):
        proxy.parse(whole[: -len(extra)] if len(extra) < len(whole) else b"")


def test_local_and_unknown_name_no_client() -> None:
    assert read(v2_header(None))[0] == proxy.ProxyHeader(2)
    assert read(v2_header(None, tlvs=b"\x04\x00\x02ab"))[0] == proxy.ProxyHeader(2)
    assert read(b"PROXY UNKNOWN\r\n")[0] == proxy.ProxyHeader(1)
    assert read(b"PROXY UNKNOWN ff::1 ff::2 1 2\r\n")[0] == proxy.ProxyHeader(1)
    unspec = b"\r\n\r\n\x00\r\nQUIT\n\x21\x00\x00\x00"  # PROXY command, family UNSPEC
    assert read(unspec)[0] == proxy.ProxyHeader(2)


def test_the_longest_v1_header_fits_and_one_byte_more_does_not() -> None:
    full = "ffff:" * 7 + "ffff"
    tcp6 = v1_header((full, 65535), (full, 65535))
    assert read(tcp6)[0].source == (full, 65535)
    longest = tcp6.replace(b"TCP6", b"UNKNOWN")  # the specification's worst case
    assert len(longest) == proxy.V1_MAX
    assert read(longest)[0] == proxy.ProxyHeader(1)
    with pytest.raises(proxy.ProxyError, match="longer than 107"):
        read(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")
    with pytest.raises(proxy.ProxyError, match="longer than 107"):
        read(b"PROXY UNKNOWN " + b"x" * 200)  # no CRLF: refused at 107 bytes, not later


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\x00\n",
        b"PROXY TCP4 1.2.3.\xc4 5.6.7.8 1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"USER alice\r\nPASS secret\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh",  # a TLS ClientHello
    ],
)
def test_malformed_v1_is_refused(line: bytes) -> None:
    with pytest.raises((proxy.ProxyError, EOFError)):
        read(line + b"\r\n" * 60)


def _v2(version_command: int, family: int, block: bytes) -> bytes:
    return (
        proxy.V2_SIGNATURE + bytes([version_command, family]) + len(block).to_bytes(2, "big")
        + block
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_v2(0x11, 0x11, bytes(12)), "version"),
        (_v2(0x22, 0x11, bytes(12)), "command"),
        (_v2(0x21, 0x12, bytes(12)), "family"),  # UDP over IPv4
        (_v2(0x21, 0x10, bytes(12)), "family"),
        (_v2(0x21, 0x11, bytes(11)), "shorter"),
        (_v2(0x21, 0x21, bytes(12)), "shorter"),
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00"), "inside a TLV"),
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05abcd"), "past the end"),
        (_v2(0x20, 0x00, b"\x01\xff\xff"), "past the end"),
        (proxy.V2_SIGNATURE + b"\x21\x11\xff\xff", "limit"),
        (proxy.V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + bytes(12), "not a PROXY"),
    ],
)
def test_malformed_v2_is_refused(raw: bytes, why: str) -> None:
    with pytest.raises(proxy.ProxyError, match=why):
        read(raw)


def test_an_oversized_v2_length_is_refused_after_sixteen_bytes() -> None:
    header = proxy.V2_SIGNATURE + b"\x21\x11" + (proxy.V2_MAX_PAYLOAD + 1).to_bytes(2, "big")
    assert proxy.remaining(header[:15]) == 1
    with pytest.raises(proxy.ProxyError, match="limit"):
        proxy.remaining(header)


def test_trusted_networks() -> None:
    nets = proxy.networks(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])
    assert proxy.is_trusted("127.0.0.1", nets)
    assert proxy.is_trusted("::ffff:10.1.2.3", nets)
    assert proxy.is_trusted("fd12::1", nets)
    assert not proxy.is_trusted("127.0.0.2", nets)
    assert not proxy.is_trusted("not an address", nets)
    assert not proxy.is_trusted("127.0.0.1", ())
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8' is not a network"):
        proxy.networks(["10.0.0.1/8"])


def test_the_fuzz_target_runs_clean_and_catches_a_bad_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fuzz_proxy.plain(3000, seed=7) == 3000
    bad = proxy.ProxyHeader(2, ("192.0.2.1", 70000), ("192.0.2.2", 110))
    monkeypatch.setattr(proxy, "parse", lambda data: bad)
    with pytest.raises(AssertionError):
        fuzz_proxy.check(fuzz_proxy.SEEDS[4])
