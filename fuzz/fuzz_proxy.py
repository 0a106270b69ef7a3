"""Fuzz the PROXY protocol header parser: `python -m fuzz.fuzz_proxy`.

Each input is read the way the server reads a connection's first bytes, `remaining` bytes
at a time, then parsed. Checked: nothing escapes but `ProxyError`; a version 1 header is
never read past 107 bytes nor a version 2 header past 16 + 520; the reader never takes a
byte after the header (what follows stays for TLS or POP3); a parsed header's addresses
are valid IP addresses and its ports 0-65535. With atheris installed this is a
coverage-guided libFuzzer target (libFuzzer options pass through); with `--plain`, or
without atheris, a seeded mutation loop runs instead. How to run it is in fuzz/README.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time
from collections.abc import Iterator, Sequence

from devkit.haproxy import v1_header, v2_header
from fuzz.fuzz_parser import libfuzzer_arguments, mutate
from popbridge.frontend import proxy

TAIL = b"USER alice\r\n"  # the client's first bytes after the header
SEEDS = [
    v1_header(("192.0.2.7", 40000), ("198.51.100.1", 110)) + TAIL,
    v1_header(("2001:db8::7", 1), ("2001:db8::1", 995)) + TAIL,
    b"PROXY UNKNOWN\r\n" + TAIL,
    b"PROXY UNKNOWN " + b"f" * 90 + b"\r\n" + TAIL,
    v2_header(("192.0.2.7", 40000), ("198.51.100.1", 110)) + TAIL,
    v2_header(("2001:db8::7", 1), ("2001:db8::1", 995), tlvs=b"\x04\x00\x03abc") + TAIL,
    v2_header(None, tlvs=b"\x01\x00\x02h2\x05\x00\x00") + TAIL,
    proxy.V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216) + TAIL,
    proxy.V2_SIGNATURE + b"\x21\x11\x02\x09" + bytes(521),
]
TOKENS = [
    b"\r\n", b"\r", b"\n", b" ", b"\x00", b"PROXY ", b"TCP4", b"TCP6", b"UNKNOWN", b"65535",
    b"65536", b"0", b"::", b"1.2.3.4", b"\xff\xff", b"\x00\x0c", b"\x21", b"\x20", b"\x11",
    b"\x21\x11", proxy.V2_SIGNATURE, b"%eth0",
]  # fmt: skip


def check(data: bytes) -> None:
    """Read and parse `data` as a connection's first bytes; AssertionError on a violation."""
    taken = b""
    try:
        while (need := proxy.remaining(taken)) > 0:
            assert need <= proxy.V2_HEADER + proxy.V2_MAX_PAYLOAD, f"asked for {need} bytes"
            if len(data) - len(taken) < need:
                return  # the client stopped sending: the server's deadline closes it
            taken = data[: len(taken) + need]
        header = proxy.parse(taken)
    except proxy.ProxyError:
        return
    if taken.startswith(b"PROXY "):
        limit, end = proxy.V1_MAX, taken.find(b"\r\n") + 2
    else:
        limit, end = 16 + proxy.V2_MAX_PAYLOAD, 16 + int.from_bytes(taken[14:16], "big")
    assert len(taken) <= limit, f"read {len(taken)} bytes of a header"
    assert len(taken) == end, f"read {len(taken)} bytes of a {end}-byte header"
    for endpoint in (header.source, header.destination):
        if endpoint is not None:
            ipaddress.ip_address(endpoint[0])
            assert 0 <= endpoint[1] <= 65535
    assert (header.source is None) == (header.destination is None)


def inputs(runs: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)  # noqa: S311 - reproducible test inputs, not secrets
    for index in range(runs):
        if index < len(SEEDS):
            yield SEEDS[index]
        else:
            yield mutate(rng, rng.choice(SEEDS), seeds=SEEDS, tokens=TOKENS, limit=1024)


def plain(runs: int, seed: int = 0) -> int:
    """The coverage-free loop; returns the number of inputs checked."""
    for data in inputs(runs, seed):
        try:
            check(data)
        except BaseException:
            print(f"failing input: {data!r}", file=sys.stderr)
            raise
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fuzz.fuzz_proxy", description=__doc__)
    parser.add_argument("--plain", action="store_true", help="mutation loop, no atheris")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs for --plain")
    parser.add_argument("--seed", type=int, default=0, help="random seed for --plain")
    known, rest = parser.parse_known_args(argv[1:])
    if not known.plain:
        try:
            import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError:
            known.plain = True
    if known.plain:
        started = time.monotonic()
        runs = plain(known.runs, known.seed)
        print(f"{runs} inputs in {time.monotonic() - started:.1f} s, no violation")
        return 0
    atheris.instrument_all()  # the parser is imported already: instrument what is loaded
    atheris.Setup(libfuzzer_arguments([argv[0], *rest], SEEDS), check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
