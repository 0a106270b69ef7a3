"""The command line: `popbridge serve`, `check`, `accounts`, `cert`.

The outermost layer: it may import every package of the core (through `popbridge.app`,
which wires the services together), never a backend directly; backends are found by
their entry points.
"""

from __future__ import annotations

from popbridge.cli.commands import main

__all__ = ["main"]
