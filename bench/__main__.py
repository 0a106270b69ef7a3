"""``python -m bench``: run the benchmark, print the table, write Markdown, JSON and a PNG.

Exit status 0 when every session of every run retrieved exactly what it should (targets met
or not: they are reported, not enforced), 1 when any run failed or retrieved the wrong data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.report import Results, chart, markdown, text_table
from bench.runner import Options, progress, run

TITLE = "popbridge vs Dovecot POP3 (direct) vs Dovecot POP3 via imapc"


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller mailboxes, 3 runs (~1 min)")
    size.add_argument("--smoke", action="store_true", help="tiny mailboxes, 1 run: correctness")
    parser.add_argument("--runs", type=int, metavar="N", help="timed runs per scenario")
    parser.add_argument(
        "--only", default="abcdefg", metavar="KEYS", help="scenarios to run, e.g. 'ac'"
    )
    parser.add_argument(
        "--plain", action="store_true",
        help="plaintext POP3 clients and plain IMAP upstream (default: POP3S and verified IMAPS)",
    )  # fmt: skip
    parser.add_argument(
        "--login-processes", choices=("long-lived", "per-connection"), default="long-lived",
        help="Dovecot's login services: long-lived (high-performance mode, the default) or "
        "per-connection (Dovecot's own default)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="output dir (default: bench/results)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir with configs and server logs"
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    options = Options(
        profile="smoke" if args.smoke else "quick" if args.quick else "full",
        runs=args.runs,
        only=frozenset(args.only.lower()),
        keep=args.keep,
        tls=not args.plain,
        login_per_connection=args.login_processes == "per-connection",
    )
    return options if args.out is None else replace(options, out=args.out)


def write(results: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results.save(out / "results.json")
    (out / "results.md").write_text(markdown(results, TITLE))
    chart(results, out / "results.png", f"{TITLE} (profile {results.profile})")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    results = run(options)
    write(results, options.out)
    print(text_table(results))
    progress(f"wrote results.md, results.json, results.png to {options.out}")
    bad = [c for c in results.checks if c["failed"] or c["messages"] != c["expected"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
