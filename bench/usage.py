"""What the machine and the servers' process trees use: CPU time of the whole machine, and
the proportional set size of a process and all its descendants (both from /proc).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all CPUs summed (/proc/stat).

    A run's difference counts every party that shares the CPUs: the clients, the server
    under test and the backend behind it, which no per-process figure shows together.
    """
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- memory of process trees


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pss_kb(root: int) -> int:
    """Summed proportional set size (kB) of ``root`` and all its descendants."""
    tree, pending, total = _children(), [root], 0
    while pending:
        pid = pending.pop()
        pending.extend(tree.get(pid, ()))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total
