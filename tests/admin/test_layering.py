"""Which third-party libraries each part of the core may import: aiohttp only in the admin
listener and the OAuth2 client, prometheus-client only where metrics are kept and served, and
no backend or IMAP library anywhere in `popbridge/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).parents[2] / "popbridge"
ALLOWED = {
    "aiohttp": ("admin", "oauth2"),
    "prometheus_client": ("telemetry", "admin"),
    "aioimaplib": (),
    "backends": (),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_is_imported_only_where_allowed(library: str) -> None:
    users = {
        path.relative_to(CORE).parts[0] for path in CORE.rglob("*.py") if library in imported(path)
    }
    assert users <= set(ALLOWED[library]), f"{library} imported in {sorted(users)}"
