"""Turning samples into the benchmark's answer: medians, ratios, targets, Markdown and a chart.

``Results`` holds every figure of every timed run per server, plus correctness counts and
popbridge's memory per scenario. Ratios are popbridge over the reference *per run* (the three
servers ran side by side in that run), and the table shows the median of those ratios, which
drifts less than a ratio of medians on a noisy machine. Each target is checked against the
figure it names and reported as met or missed, never adjusted.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SERVERS = ("direct", "imapc", "popbridge")


@dataclass(frozen=True)
class Target:
    """``against`` is "imapc" or "direct" (a ratio) or "value" (popbridge's own figure)."""

    against: str
    limit: float
    strict: bool = False

    @property
    def text(self) -> str:
        what = "popbridge" if self.against == "value" else f"pb/{self.against}"
        return f"{what} {'<' if self.strict else '<='} {self.limit:g}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    targets: tuple[Target, ...] = ()


def metrics(sizes: dict[str, str], tls: bool = True) -> list[Metric]:
    """Every row of the table, labelled with this profile's mailbox sizes. The targets are
    those of the deployed configuration (TLS both sides); the plaintext run keeps the older
    memory target of (d)."""
    ratio_a = (Target("imapc", 0.8), Target("direct", 1.3))
    memory = Target("value", 250) if tls else Target("value", 150, strict=True)
    return [
        Metric("a.lean", f"(a) {sizes['a']} STAT+UIDL+RETR, lean client", "s", ratio_a),
        Metric("a.poplib", f"(a) {sizes['a']} STAT+UIDL+RETR, poplib", "s", ratio_a),
        Metric("a.cpu", "(a) popbridge CPU time per run (both sessions)", "s"),
        Metric("b.first", f"(b) first login to UIDL, {sizes['b']}", "s",
               (Target("imapc", 1.0),)),
        Metric("b.repeat", f"(b) repeat login to UIDL, {sizes['b']}", "s",
               (Target("direct", 2.5),)),
        Metric("b.stat", f"(b) first STAT after the first login, {sizes['b']}", "s"),
        Metric("b.cpu", "(b) popbridge CPU time per run (both logins)", "s"),
        Metric("c.retr", f"(c) RETR {sizes['c']}, lean client", "s",
               (Target("imapc", 1.2), Target("direct", 1.2))),
        Metric("c.poplib", f"(c) session with RETR {sizes['c']}, poplib", "s"),
        Metric("c.rss_growth", "(c) popbridge peak RSS growth during RETR", "MB",
               (Target("value", 8),)),
        Metric("c.cpu", "(c) popbridge CPU time per run (both sessions)", "s"),
        Metric("d.open", f"(d) open {sizes['d']} sessions (25 logins in flight)", "s"),
        Metric("d.mem", f"(d) POP3-side memory growth, {sizes['d']} sessions", "MB"),
        Metric("d.rss", f"(d) popbridge RSS total, {sizes['d']} sessions", "MB", (memory,)),
        Metric("d.errors", "(d) failed sessions", "", (Target("value", 0),)),
        Metric("d.cpu", "(d) popbridge CPU time to open, hold and close", "s"),
        Metric("e.wall", f"(e) {sizes['e']}: wall time", "s"),
        Metric("e.p50", "(e) command latency p50", "ms"),
        Metric("e.p99", "(e) command latency p99 (all commands)", "ms"),
        Metric("e.txn_p99", "(e) STAT/UIDL/RETR/QUIT p99 (logins excluded)", "ms",
               (Target("direct", 4),)),
        Metric("e.retr_p99", "(e) RETR latency p99", "ms"),
        Metric("e.pass_p99", "(e) PASS latency p99", "ms", (Target("imapc", 0.6),)),
        Metric("e.login_p99", "(e) login p99: connect to PASS reply, per session", "ms"),
        Metric("e.errors", "(e) failed sessions", "", (Target("value", 0),)),
        Metric("e.cpu", "(e) popbridge CPU time per run", "s"),
        Metric("e.machine_cpu", "(e) machine CPU time per run: clients, server, backend", "s"),
        Metric("f.wall", f"(f) JMAP bulk (Cyrus) {sizes['f']}: direct = raw JMAP pass, "
               "popbridge = POP3 session", "s"),
        Metric("f.cpu", "(f) popbridge CPU time per run", "s"),
        Metric("g.first", f"(g) first login to UIDL, {sizes['g']}", "s"),
        Metric("g.repeat", f"(g) repeat login to UIDL, {sizes['g']}", "s",
               (Target("direct", 3.0),)),
        Metric("g.cpu", "(g) popbridge CPU time per run (both logins)", "s"),
    ]  # fmt: skip


@dataclass
class Results:
    """Everything one benchmark run found; JSON-serialisable."""

    profile: str
    sizes: dict[str, str]
    tls: bool = True
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    checks: list[dict[str, object]] = field(default_factory=list)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, server: str, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            self.samples.setdefault(key, {}).setdefault(server, []).append(value)

    def median(self, key: str, server: str) -> float:
        values = self.samples.get(key, {}).get(server, [])
        return statistics.median(values) if values else math.nan

    def ratio(self, key: str, other: str) -> float:
        """Median over runs of popbridge / ``other`` in the same run."""
        ours = self.samples.get(key, {}).get("popbridge", [])
        theirs = self.samples.get(key, {}).get(other, [])
        pairs = [a / b for a, b in zip(ours, theirs, strict=False) if b]
        return statistics.median(pairs) if pairs else math.nan

    def verdict(self, metric: Metric, target: Target) -> bool | None:
        value = (
            self.median(metric.key, "popbridge")
            if target.against == "value"
            else self.ratio(metric.key, target.against)
        )
        if math.isnan(value):
            return None
        return value < target.limit if target.strict else value <= target.limit

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def rows(results: Results) -> list[list[str]]:
    """The main table: one row per metric with data (and one per skipped scenario)."""
    table = []
    for metric in metrics(results.sizes, results.tls):
        if metric.key not in results.samples:
            continue
        medians = [_number(results.median(metric.key, s)) for s in SERVERS]
        ratios = [_ratio(results.ratio(metric.key, s)) for s in ("imapc", "direct")]
        verdicts = [results.verdict(metric, t) for t in metric.targets]
        met = ", ".join("n/a" if v is None else ("met" if v else "MISSED") for v in verdicts)
        unit = f" [{metric.unit}]" if metric.unit else ""
        targets = "; ".join(t.text for t in metric.targets)
        table.append([metric.label + unit, *medians, *ratios, targets, met])
    for key, reason in sorted(results.skipped.items()):
        table.append([f"({key}) {reason}", "-", "-", "-", "-", "-", "", "skipped"])
    return table


def per_message(results: Results) -> list[str]:
    """(g)'s target beside the table: a repeat login on 100,000 unchanged messages never costs
    popbridge more per message than (b)'s first login on 10,000."""
    counts = {key: _count(results.sizes.get(key, "")) for key in "bg"}
    cost: dict[str, float] = {}
    for key, login in (("b", "first"), ("g", "first"), ("g", "repeat")):
        seconds = results.median(f"{key}.{login}", "popbridge")
        if counts[key] and not math.isnan(seconds):
            cost[f"{key}.{login}"] = seconds / counts[key]
    lines = [f"({k[0]}) {k[2:]} login: {v * 1e6:.1f} µs per message" for k, v in cost.items()]
    if "b.first" in cost and "g.repeat" in cost:
        met = "met" if cost["g.repeat"] <= cost["b.first"] else "MISSED"
        lines.append(f"target (g) repeat login per message <= (b) first login per message: {met}")
    return lines


def _count(size: str) -> int:
    digits = size.split(" ")[0].replace(",", "")
    return int(digits) if digits.isdigit() else 0


HEADER = ["scenario / figure (median)", *SERVERS, "pb/imapc", "pb/direct", "target", "met?"]


def text_table(results: Results) -> str:
    table = [HEADER, *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = []
    for n, row in enumerate(table):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"popbridge per message, {line}" for line in per_message(results)]
    for scenario, memory in sorted(results.memory.items()):
        lines.append(
            f"popbridge process, scenario ({scenario}): RSS at start {memory['start']:.1f} MB, "
            f"peak RSS (VmHWM) {memory['peak']:.1f} MB"
        )
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def markdown(results: Results, title: str) -> str:
    out = [f"# {title}", "", *results.notes, ""]
    out += _markdown_table(HEADER, rows(results))
    if per_message(results):
        out += ["", "## popbridge's login cost per message", ""]
        out += [f"- {line}" for line in per_message(results)]
    out += ["", "## popbridge process memory (fresh process per scenario)", ""]
    memory = [
        [f"({key})", f"{m['start']:.1f}", f"{m['peak']:.1f}"]
        for key, m in sorted(results.memory.items())
    ]
    out += _markdown_table(["scenario", "RSS at start [MB]", "peak RSS, VmHWM [MB]"], memory)
    out += ["", "## Correctness (every run, warm-up included)", ""]
    checks = [
        [str(c["scenario"]), str(c["server"]), str(c["run"]), str(c["sessions"]),
         str(c["failed"]), f"{c['messages']}/{c['expected']}", str(c["problems"])[:120]]
        for c in results.checks
    ]  # fmt: skip
    header = ["scenario", "server", "run", "sessions", "failed", "messages", "problems"]
    out += _markdown_table(header, checks)
    out += ["", "## Every timed run", ""]
    for key, per_server in results.samples.items():
        for server, values in per_server.items():
            out.append(f"- `{key}` {server}: " + ", ".join(_number(v) for v in values))
    return "\n".join(out) + "\n"


def chart(results: Results, path: Path, title: str) -> None:
    """One small bar chart per figure: medians per server, every run as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics(results.sizes, results.tls) if m.key in results.samples and m.unit]
    columns = 4
    lines = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.0 * lines))
    flat = list(getattr(axes, "flat", [axes]))
    colours = {"direct": "#4c72b0", "imapc": "#dd8452", "popbridge": "#55a868"}
    for ax, metric in zip(flat, shown, strict=False):
        for i, server in enumerate(SERVERS):
            values = results.samples[metric.key].get(server, [])
            if values:
                ax.bar(i, statistics.median(values), color=colours[server], width=0.6)
                ax.plot([i] * len(values), values, "k.", markersize=3)
        ax.set_xticks(range(len(SERVERS)), SERVERS, fontsize=8)
        ax.set_title(metric.label, fontsize=7.5, wrap=True)
        ax.set_ylabel(metric.unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in flat[len(shown) :]:
        ax.axis("off")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title
    figure.savefig(path, dpi=90)
    plt.close(figure)
