"""The benchmark's order of work: start the peers, seed, run scenarios alternately, report.

One Dovecot backend and one Dovecot imapc proxy live for the whole run; popbridge is started
fresh for each scenario (so its memory figures belong to that scenario), and before each of
its runs of the login scenarios (b) and (g), and stopped by PID at the scenario's end. By
default every client speaks POP3S and both proxies reach the backend over verified IMAPS, as
deployed; ``tls=False`` measures the plaintext variant. Each scenario first runs once
untimed on every server (warm-up: Dovecot builds its indexes, caches fill), except (d), whose
1,000 logins would cost more than they teach; then timed runs go direct, imapc, popbridge,
direct, imapc, popbridge, ... so that all three see the same machine noise. Nothing here
measures; ``bench.scenarios`` does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import jmap
from bench.peers import (
    HERE,
    Instance,
    Popbridge,
    client_context,
    raise_fd_limit,
    start_backend,
    start_imapc,
    start_popbridge,
)
from bench.report import Results
from bench.scenarios import PROFILES, SCENARIOS, Outcome, Profile, Scenario, Target, seed, users
from bench.usage import machine_cpu_seconds
from devkit.dovecot import DOVECOT_BIN, Dovecot
from popbridge import __version__

NO_WARMUP = frozenset({"d"})


@dataclass(frozen=True)
class Options:
    profile: str = "full"
    runs: int | None = None
    only: frozenset[str] = frozenset("abcdefg")
    out: Path = HERE / "results"
    keep: bool = False  # leave the work dir (configs, Dovecot and popbridge logs) behind
    tls: bool = True  # POP3S clients, verified IMAPS upstream; False: plaintext both sides
    login_per_connection: bool = False  # Dovecot's default login processes, not long-lived


def sizes(profile: Profile) -> dict[str, str]:
    (a_n, a_size), (b_n, _), (e_n, e_msgs, e_size) = profile.bulk, profile.many, profile.busy
    return {
        "a": f"{a_n} x {a_size // 1000} KB",
        "b": f"{b_n:,} messages",
        "c": f"{profile.huge / 2**20:g} MiB",
        "d": f"{profile.idle:,}",
        "e": f"{e_n} sessions x {e_msgs} x {e_size // 1000} KB",
        "f": f"{a_n} x {a_size // 1000} KB",
        "g": f"{profile.giant:,} messages",
    }


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(options: Options) -> Results:
    """Run the selected scenarios; the returned results hold every figure and check."""
    profile = PROFILES[options.profile]
    if options.runs is not None:
        profile = replace(profile, runs=options.runs)
    limit = raise_fd_limit()
    results = Results(profile.name, sizes(profile), tls=options.tls)
    results.notes += _notes(profile, limit, options.tls)
    if options.login_per_connection:
        results.notes.append(
            "- `--login-processes per-connection`: Dovecot's login services in their default "
            "mode, one login process forked per connection (direct, imapc and the backend)"
        )
    work = Path(tempfile.mkdtemp(prefix="popbridge-bench-"))
    work.chmod(0o755)  # Dovecot's unprivileged processes must get in
    try:
        if options.only & set("abcdeg"):
            _dovecot_scenarios(options, profile, work, results)
        if "f" in options.only:
            _jmap_scenario(profile, work, results)
    finally:
        if options.keep:
            progress(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def _dovecot_scenarios(options: Options, profile: Profile, work: Path, results: Results) -> None:
    """(a) to (e) and (g): one Dovecot backend and one imapc proxy for all of them."""
    with contextlib.ExitStack() as stack:
        progress(f"profile {profile.name}: starting Dovecot backend, seeding mailboxes")
        per_connection = options.login_per_connection
        backend = start_backend(
            work / "backend", users(profile), login_per_connection=per_connection
        )
        stack.callback(backend.stop)
        seed(backend, profile)
        imapc = start_imapc(
            work / "imapc", backend, tls=options.tls, login_per_connection=per_connection
        )
        stack.callback(imapc.stop)
        for scenario in SCENARIOS:
            if scenario.key in options.only:
                _scenario(scenario, profile, (backend, imapc), work, results, options.tls)


def _jmap_scenario(profile: Profile, work: Path, results: Results) -> None:
    """(f): Cyrus and a JMAP popbridge for this scenario only; raw pass and popbridge alternate."""
    progress(f"(f) profile {profile.name}: starting Cyrus, seeding {profile.bulk[0]} messages")
    cyrus, octets = jmap.start_cyrus_peer(profile)
    try:
        bridge = jmap.start_jmap_popbridge(work / "popbridge-f", cyrus)
        try:
            start_kb = bridge.status_kb()["VmRSS"]
            sides = jmap.runs(cyrus, bridge, (profile.bulk[0], octets))
            for number in range(-1, profile.runs):
                label = "warm-up" if number < 0 else f"run {number + 1}/{profile.runs}"
                for server, side in zip((jmap.RAW, jmap.BRIDGE), sides, strict=True):
                    progress(f"(f) JMAP bulk (Cyrus): {label}, {server}")
                    _record(results, "f", server, number, _guarded(side))
            peak = bridge.status_kb()["VmHWM"]
            results.memory["f"] = {"start": start_kb / 1024, "peak": peak / 1024}
        finally:
            bridge.stop()
    finally:
        cyrus.stop()


def _scenario(
    scenario: Scenario,
    profile: Profile,
    dovecots: tuple[Dovecot, Instance],
    work: Path,
    results: Results,
    tls: bool,
) -> None:
    backend, imapc = dovecots
    start = functools.partial(start_popbridge, work / f"popbridge-{scenario.key}", backend, tls=tls)
    context = client_context(backend.pki.ca_file) if tls else None
    bridge = Target("popbridge", 0, bridge=start(), tls=context)
    try:
        assert bridge.bridge is not None
        bridge.port = bridge.bridge.port
        start_kb = bridge.bridge.status_kb()["VmRSS"]
        targets = [
            Target("direct", backend.pop3s_port if tls else backend.pop3_port,
                   tree_root=backend.pid, tls=context),
            Target("imapc", imapc.port, tree_root=imapc.pid, tls=context),
            bridge,
        ]  # fmt: skip
        peak = _runs(scenario, profile, targets, results, start)
        results.memory[scenario.key] = {"start": start_kb / 1024, "peak": peak / 1024}
    finally:
        if bridge.bridge is not None:  # the latest one, after restarts
            bridge.bridge.stop()


def _runs(
    scenario: Scenario,
    profile: Profile,
    targets: Sequence[Target],
    results: Results,
    restart: Callable[[], Popbridge],
) -> int:
    """Warm-up, then the timed runs, alternating servers; returns popbridge's peak RSS (kB)."""
    first = 0 if scenario.key in NO_WARMUP else -1
    peak = 0
    for number in range(first, scenario.repeat(profile)):
        label = "warm-up" if number < 0 else f"run {number + 1}/{scenario.repeat(profile)}"
        for target in targets:
            progress(f"({scenario.key}) {scenario.title}: {label}, {target.name}")
            bridge = target.bridge
            if bridge is not None and scenario.fresh:
                bridge.stop()  # nothing remembered from the previous run: a first login
                bridge = target.bridge = restart()
                target.port = bridge.port
            cpu = bridge.cpu_seconds() if bridge is not None else 0.0
            machine = machine_cpu_seconds()
            outcome = _guarded(functools.partial(scenario.run, target, profile))
            outcome.figures[f"{scenario.key}.machine_cpu"] = machine_cpu_seconds() - machine
            if bridge is not None:
                peak = max(peak, bridge.status_kb()["VmHWM"])
                outcome.figures[f"{scenario.key}.cpu"] = bridge.cpu_seconds() - cpu
            _record(results, scenario.key, target.name, number, outcome)
    return peak


def _guarded(action: Callable[[], Outcome]) -> Outcome:
    try:
        return action()
    except Exception as error:  # a failed run is reported, the benchmark goes on
        return Outcome(sessions=1, failed=1, problems=[f"{error.__class__.__name__}: {error}"])


def _record(results: Results, key: str, server: str, number: int, outcome: Outcome) -> None:
    results.checks.append(
        {
            "scenario": key, "server": server, "run": "warm-up" if number < 0 else number + 1,
            "sessions": outcome.sessions, "failed": outcome.failed,
            "messages": outcome.messages, "expected": outcome.expected,
            "problems": "; ".join(outcome.problems[:3]),
        }
    )  # fmt: skip
    if outcome.failed or outcome.messages != outcome.expected:
        progress(f"  PROBLEM on {server}: {outcome.problems[:3]}")
    if number >= 0:
        results.add(server, outcome.figures)


def _source_state() -> str:
    """The commit measured, and whether the work tree differed from it (read-only git)."""
    git = ["git", "-C", str(HERE.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "not a git checkout"
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    changed = len([line for line in dirty.stdout.splitlines() if not line[3:].startswith("bench")])
    return f"commit {head.stdout.strip()}" + (
        f" plus {changed} uncommitted changed files outside bench/" if changed else ""
    )


def _run_counts(profile: Profile) -> str:
    """How many timed runs each scenario gets, e.g. "(a) 10, (b) 5, ..."."""
    return ", ".join(f"({s.key}) {s.repeat(profile)}" for s in SCENARIOS)


def _notes(profile: Profile, fd_limit: int, tls: bool) -> list[str]:
    dovecot = subprocess.run(
        [str(DOVECOT_BIN), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    notes = [
        f"- profile `{profile.name}`, timed runs per scenario: {_run_counts(profile)}, servers "
        f"alternating in each run; run on {time.strftime('%Y-%m-%d %H:%M')}",
        f"- {os.cpu_count()} CPUs, load average at start {load}; Python "
        f"{platform.python_version()}, Dovecot {dovecot}, popbridge {__version__}; "
        f"fd limit {fd_limit}",
        f"- popbridge source: {_source_state()}",
        "- TLS: POP3S clients (certificate verified), imapc and popbridge upstream over verified "
        "IMAPS"
        if tls
        else "- plaintext (`--plain`): POP3 clients, plain IMAP upstream",
        "- ratios are medians of per-run ratios (popbridge / reference in the same run)",
    ]
    return notes
