"""``python -m bench.profile KEY``: where popbridge's CPU time goes in one scenario.

Starts the Dovecot backend and one popbridge process exactly as the benchmark does, runs the
scenario's popbridge side once to warm up, then ``--runs`` times while a sampler watches the
popbridge process: py-spy (``pip install py-spy``; samples the running process, no overhead
in it, idle time in epoll left out) when it is on PATH, otherwise popbridge runs under
cProfile (deterministic, but it roughly doubles popbridge's time). The summary, written to
``profile-KEY.txt`` in the output dir, gives CPU share by layer (asyncio, aioimaplib, the
IMAP backend, the POP3 core, sockets) and the top functions by own and by inclusive time.
Clients and upstream speak TLS as in the benchmark; ``--plain`` profiles the plaintext variant.
"""

from __future__ import annotations

import argparse
import collections
import io
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.peers import HERE, client_context, raise_fd_limit, start_backend, start_popbridge
from bench.scenarios import PROFILES, SCENARIOS, Target, seed, users

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")
# First match wins: where a sample's innermost frame lives says which layer spent it.
LAYERS = (
    ("aioimaplib (IMAP response parsing)", "aioimaplib"),
    ("IMAP backend (backends/imap)", "backends/imap"),
    ("POP3 engine and wire (popbridge/pop3)", "popbridge/pop3"),
    ("popbridge core (session, server, ...)", "popbridge/"),
    ("asyncio event loop and transports", "asyncio/"),
    ("event loop: selectors (epoll)", "selectors.py"),
    ("logging", "logging/"),
)


def _short(path: str) -> str:
    """A file name without machine-specific prefixes (site-packages, the checkout, the stdlib)."""
    for marker in ("site-packages/", "/popbridge/", "/backends/", "/python3."):
        at = path.find(marker)
        if at >= 0:
            rest = path[at + len(marker) :]
            if marker == "/python3.":
                rest = rest.split("/", 1)[-1]
            elif marker != "site-packages/":
                rest = marker.strip("/") + "/" + rest
            return rest
    return path.rsplit("/", 1)[-1]


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function with a short file name, full file name) per frame, outermost first."""
    frames = []
    for frame in stack.split(";")[1:]:  # the first entry names the process/thread
        found = _FRAME.match(frame)
        if found:
            frames.append((f"{found['func']} ({_short(found['file'])})", found["file"]))
        else:
            frames.append((frame, ""))
    return frames


def _layer(path: str) -> str:
    for name, marker in LAYERS:
        if marker in path:
            return name
    return "other (stdlib, C calls)"


def summarise_samples(lines: Iterable[str], top: int = 30) -> str:
    """CPU share per layer and top functions from py-spy's collapsed ("raw") output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = _frames(stack), int(count)
        total += n
        if frames:
            own[frames[-1][0]] += n
            layers[_layer(frames[-1][1])] += n
        for name in {name for name, _ in frames}:
            inclusive[name] += n
    out = [
        f"{total} py-spy samples of popbridge. EpollSelector.select is mostly the loop waiting",
        "(py-spy's idle filter misses some epoll waits); compare the other rows with each other.",
        "",
    ]
    out += ["CPU share by layer (innermost frame):"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in layers.most_common()]
    for title, counter in (("own", own), ("inclusive", inclusive)):
        out += ["", f"top functions by {title} time:"]
        out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out) + "\n"


def summarise_cprofile(path: Path) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(35)
    return re.sub(r"^.*\.prof$", "(cProfile of popbridge)", text.getvalue(), flags=re.MULTILINE)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("key", choices=[s.key for s in SCENARIOS], help="scenario")
    parser.add_argument("--runs", type=int, default=5, help="profiled runs (default 5)")
    parser.add_argument("--quick", action="store_true", help="the --quick mailbox sizes")
    parser.add_argument("--sampler", choices=("py-spy", "cprofile"), help="default: py-spy")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output dir")
    parser.add_argument("--plain", action="store_true", help="plaintext POP3 and IMAP")
    args = parser.parse_args(argv)
    if args.sampler is None:
        args.sampler = "py-spy" if shutil.which("py-spy") else "cprofile"
    return args


def _profile(args: argparse.Namespace, work: Path) -> str:
    profile = PROFILES["quick" if args.quick else "full"]
    scenario = next(s for s in SCENARIOS if s.key == args.key)
    backend = start_backend(work / "backend", users(profile))
    try:
        seed(backend, profile)
        prof = work / "popbridge.prof" if args.sampler == "cprofile" else None
        tls = not args.plain
        bridge = start_popbridge(work / "popbridge", backend, profile=prof, tls=tls)
        context = client_context(backend.pki.ca_file) if tls else None
        target = Target("popbridge", bridge.port, bridge=bridge, tls=context)
        try:
            scenario.run(target, profile)  # warm-up, not sampled
            sampler = None
            if prof is None:
                command = ["py-spy", "record", "--pid", str(bridge.pid), "--rate", "250"]
                command += ["--nonblocking"]  # never pause popbridge: keeps latencies honest
                command += [
                    "--full-filenames",
                    "--format",
                    "raw",
                    "--output",
                    str(work / "raw.txt"),
                ]
                sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            figures = [scenario.run(target, profile).figures for _ in range(args.runs)]
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                sampler.wait(timeout=60)
        finally:
            bridge.stop()
    finally:
        backend.stop()
    head = f"scenario ({args.key}) {scenario.title}, profile {profile.name}, {args.runs} runs\n"
    head += "figures per run (slower than in the benchmark while sampled):\n"
    head += "".join(f"  {run}\n" for run in figures) + "\n"
    if prof is not None:
        return head + summarise_cprofile(prof)
    return head + summarise_samples((work / "raw.txt").read_text().splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="popbridge-profile-"))
    work.chmod(0o755)
    try:
        report = _profile(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-{args.key}.txt").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
