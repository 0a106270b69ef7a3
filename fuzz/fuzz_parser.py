"""Fuzz the POP3 line parser, SASL decoding, engine and session: `python -m fuzz.fuzz_parser`.

With atheris installed this is a coverage-guided libFuzzer target: every popbridge module is
instrumented, the seeds below form the starting corpus, and libFuzzer's own options pass
through (`-runs=1000000`, `-max_len=4096`, a corpus directory). With `--plain`, or when
atheris is missing, a seeded, coverage-free mutation loop runs instead: the same checks on
the seeds and on mutants made by flipping, inserting, deleting, duplicating and splicing
bytes and protocol tokens. What is checked is in `fuzz.harness`; how to run it, how long a
million inputs take, is in fuzz/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

PLAIN_LOGIN = base64.b64encode(b"\0alice\0secret")
# (first byte: preamble = b % 4, policy bits = b >> 2 (1: plaintext allowed, 2: STLS offered);
#  second byte: piece size - 1; then the client's stream)
SEEDS = [
    b"\x04\xff" + b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nQUIT\r\n",
    b"\x05\x00" + b"LIST 1\r\nUIDL 2\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n",
    b"\x05\x06" + b"RETR 0\r\nRETR 3\r\nDELE 1\r\nDELE 1\r\nTOP 1 99999999\r\nNOOP\r\nQUIT\r\n",
    b"\x06\x10" + b"STAT\r\nRETR 1_0\r\nRETR +1\r\nLIST  1\r\nUIDL 1 1\r\nSTAT x\r\nQUIT\r\n",
    b"\x04\x03" + b"AUTH PLAIN " + PLAIN_LOGIN + b"\r\nSTAT\r\nQUIT\r\n",
    b"\x04\x20" + b"AUTH PLAIN\r\n" + PLAIN_LOGIN + b"\r\nAUTH\r\nAUTH LOGIN\r\n*\r\n",
    b"\x04\x40" + b"AUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\nLIST\r\n",
    b"\x04\x40"
    + b"AUTH XOAUTH2 "
    + base64.b64encode(b"user=alice\x01auth=Bearer x\x01\x01")
    + b"\r\nAQ==\r\nAUTH OAUTHBEARER "
    + base64.b64encode(b"n,a=alice,\x01auth=Bearer tok\x01\x01")
    + b"\r\nUIDL\r\n",
    b"\x0b\x02" + b"STLS\r\nUSER alice\r\nSTLS\r\nCAPA\r\nUSER alice\r\nPASS secret\r\nSTLS\r\n",
    b"\x00\xff" + b"USER alice\r\nPASS secret\r\nAPOP a b\r\nAUTH PLAIN =\r\n",
    b"\x04\x07" + b"USER a\x00b\r\nUS\tER x\r\nNO\rOP\r\nUSER \xff\r\nPASS\r\nXYZZY\r\n\r\n[X\r\n",
    b"\x04\xff" + b"NOOP " + b"A" * 1100 + b"\r\nCAPA\r\nAUTH PLAIN\r\n" + b"A" * 17000 + b"\n",
    b"\x04\xff" + b"BOGUS\r\n" * 12,
    b"\x05\x01" + b"QUIT",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"  ", b"=", b"*", b"USER alice", b"PASS secret",
    b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH XOAUTH2", b"AUTH", b"STLS", b"QUIT", b"RSET", b"DELE 1",
    b"RETR 1", b"TOP 1 0", b"LIST", b"UIDL", b"STAT", b"CAPA", b"NOOP", b"9999999999",
    b"12345678901", PLAIN_LOGIN, b"\xc3\xa9", b"\xff", b"A" * 1030, b"\x01", b"auth=Bearer ",
]  # fmt: skip


def mutate(
    rng: random.Random, data: bytes, *, seeds: Sequence[bytes] = SEEDS,
    tokens: Sequence[bytes] = TOKENS, limit: int = 8192,
) -> bytes:  # fmt: skip
    """One to four random edits of `data`: byte flips, token inserts, cuts, copies, splices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        match rng.randrange(6):
            case 0 if out:
                out[min(at, len(out) - 1)] = rng.randrange(256)
            case 1:
                out[at:at] = rng.choice(tokens)
            case 2:
                del out[at : at + rng.randint(1, 16)]
            case 3:
                out[at:at] = out[at : at + rng.randint(1, 64)]
            case 4:
                other = rng.choice(seeds)
                out[at:] = other[rng.randint(0, len(other)) :]
            case _:
                out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out[:limit])


def inputs(runs: int, seed: int) -> Iterator[bytes]:
    """The seeds, then mutants of earlier inputs (a growing pool, kept small)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test inputs, not secrets
    pool = list(SEEDS)
    for index in range(runs):
        if index < len(SEEDS):
            yield SEEDS[index]
            continue
        data = mutate(rng, rng.choice(pool))
        if rng.random() < 0.05:
            pool[rng.randrange(len(pool)) if len(pool) > 256 else len(pool) :] = [data]
        yield data


def plain(runs: int, seed: int = 0, *, progress: bool = False) -> tuple[int, int]:
    """The coverage-free loop: (inputs checked, inputs that hit a known bug)."""
    from fuzz.harness import KnownBug, check

    known, started = 0, time.monotonic()
    for count, data in enumerate(inputs(runs, seed), 1):
        try:
            check(data)
        except KnownBug:
            known += 1
        except BaseException:
            print(f"failing input: {data!r}", file=sys.stderr)
            raise
        if progress and count % 100_000 == 0:
            rate = count / (time.monotonic() - started)
            print(f"{count} inputs, {rate:.0f}/s, {known} known-bug hits", file=sys.stderr)
    return runs, known


def fuzz_with_atheris(argv: Sequence[str]) -> None:
    """libFuzzer over `harness.check`; only popbridge and the harness are instrumented."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    # popbridge is first imported here, inside the hook, so that it reports coverage
    with atheris.instrument_imports(include=["popbridge", "fuzz"]):
        from fuzz.harness import KnownBug, check

    def one_input(data: bytes) -> None:
        with contextlib.suppress(KnownBug):
            check(data)

    args = list(argv)
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=4096")
    atheris.Setup(libfuzzer_arguments(args, SEEDS), one_input)
    atheris.Fuzz()


def libfuzzer_arguments(args: list[str], seeds: Sequence[bytes]) -> list[str]:
    """`args`, plus a temporary crash directory (never the work tree) and, when no corpus
    directory is given, a temporary one holding `seeds`."""
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args = [*args, f"-artifact_prefix={tempfile.mkdtemp(prefix='popbridge-fuzz-crash-')}/"]
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="popbridge-fuzz-corpus-"))
        for index, data in enumerate(seeds):
            (corpus / f"seed-{index:02d}").write_bytes(data)
        args = [*args, str(corpus)]
    return args


def replay(files: list[Path]) -> int:
    """Run saved inputs (crash files) once each; a violated property raises as usual."""
    from fuzz.harness import KnownBug, check

    for path in files:
        try:
            check(path.read_bytes())
        except KnownBug as bug:
            print(f"{path}: known bug {bug}")
            continue
        print(f"{path}: ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m fuzz.fuzz_parser", description=__doc__)
    parser.add_argument("--plain", action="store_true", help="mutation loop, no atheris")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs for --plain")
    parser.add_argument("--seed", type=int, default=0, help="random seed for --plain")
    known, rest = parser.parse_known_args(argv[1:])
    try:
        import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        known.plain = True
    if not known.plain:
        fuzz_with_atheris([argv[0], *rest])
        return 0
    if files := [Path(a) for a in rest if not a.startswith("-")]:
        return replay(files)
    started = time.monotonic()
    runs, bugs = plain(known.runs, known.seed, progress=True)
    elapsed = time.monotonic() - started
    print(f"{runs} inputs in {elapsed:.1f} s ({runs / elapsed:.0f}/s), {bugs} known-bug hits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
