"""The layout's rules, checked by reading every import of the core and the backends.

Each package of `popbridge` says in its `__init__` docstring what it may import; this test
holds them to it by walking the import statements with `ast`, including imports inside
functions. A new package needs a rule here before it can land.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "popbridge"
BACKENDS = ROOT / "backends"

# What each part of the core may import from the core (besides itself and the standard
# library). The top-level modules config, app and the cli may wire everything together.
CORE_RULES: dict[str, set[str]] = {
    "popbridge.errors": set(),
    "popbridge.contract": {"popbridge.errors"},
    "popbridge.environment": {"popbridge.errors"},  # POPBRIDGE_... overrides, read by config
    "popbridge.upstream": {"popbridge.errors"},
    "popbridge.pop3": {"popbridge.errors", "popbridge.upstream"},  # upstream.lines: pure
    "popbridge.store": {"popbridge.errors", "popbridge.contract", "popbridge.upstream"},
    "popbridge.oauth2": {"popbridge", "popbridge.errors", "popbridge.upstream"},
    "popbridge.accounts": {
        "popbridge.errors",
        "popbridge.contract",
        "popbridge.upstream",
        "popbridge.store",
        "popbridge.oauth2",
    },
    # metrics, the session board, log formats: counted into from the session and frontend
    "popbridge.telemetry": {"popbridge.errors", "popbridge.contract", "popbridge.pop3"},
    "popbridge.session": {
        "popbridge.errors",
        "popbridge.contract",
        "popbridge.upstream",
        "popbridge.store",
        "popbridge.accounts",
        "popbridge.pop3",
        "popbridge.telemetry",
    },
    "popbridge.frontend": {
        "popbridge.errors",
        "popbridge.config",
        "popbridge.pop3",
        "popbridge.session",
        "popbridge.upstream",
        "popbridge.telemetry",
    },
}
ANYTHING_IN_THE_CORE = {"popbridge.config", "popbridge.app", "popbridge.cli"}

# Third-party and I/O modules no part of the POP3 path may import.
IO_MODULES = {"asyncio", "ssl", "socket", "selectors", "aiohttp", "aioimaplib", "asyncpg"}
NEVER_IN_THE_CORE = {"backends", "aioimaplib"}
HTTP_PACKAGES = {"popbridge.admin", "popbridge.oauth2"}  # the only users of aiohttp
BACKEND_MAY_USE = {"popbridge.contract", "popbridge.errors", "popbridge.upstream"}


def imports(path: Path) -> Iterator[str]:
    """Every module name `path` imports, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            # `from popbridge import pop3` imports a package; `__version__` is an attribute
            yield from (
                f"{node.module}.{alias.name}"
                for alias in node.names
                if not alias.name.startswith("__")
            )


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(name: str) -> str:
    """The package (or top-level module) of the core that `name` belongs to."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_at_most_six_modules_sit_directly_under_the_core() -> None:
    top = sorted(p.name for p in CORE.glob("*.py"))
    assert len(top) <= 6, top


def test_every_package_says_what_it_owns() -> None:
    for init in [*CORE.rglob("__init__.py"), *BACKENDS.rglob("__init__.py")]:
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.relative_to(ROOT)} has no docstring"


def test_every_part_of_the_core_has_a_rule() -> None:
    parts = {part_of(module_name(p)) for p in core_modules()} - {"popbridge"}
    unruled = parts - set(CORE_RULES) - ANYTHING_IN_THE_CORE - HTTP_PACKAGES
    assert not unruled, f"add a rule for {sorted(unruled)} to CORE_RULES"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_keeps_its_layers(path: Path) -> None:
    part = part_of(module_name(path))
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in NEVER_IN_THE_CORE, f"{path.name} imports {name}"
        if top == "aiohttp":
            assert part in HTTP_PACKAGES, f"{path.name} imports aiohttp outside {HTTP_PACKAGES}"
        if top != "popbridge" or part not in CORE_RULES:
            continue
        target = part_of(name)
        allowed = CORE_RULES[part] | {part}
        assert target in allowed or name == "popbridge", f"{part} may not import {name}"


@pytest.mark.parametrize("path", sorted((CORE / "pop3").rglob("*.py")), ids=lambda p: p.name)
def test_the_engine_does_no_io(path: Path) -> None:
    found = {name.split(".")[0] for name in imports(path)} & IO_MODULES
    assert not found, f"{path.name} imports {found}"


@pytest.mark.parametrize("path", sorted(BACKENDS.rglob("*.py")), ids=lambda p: str(p.parent.name))
def test_backends_use_only_the_contract_side(path: Path) -> None:
    for name in imports(path):
        if name.split(".")[0] != "popbridge" or name == "popbridge":
            continue
        assert part_of(name) in BACKEND_MAY_USE, f"{path.relative_to(ROOT)} imports {name}"


def test_aioimaplib_stays_in_the_imap_backend() -> None:
    users = {
        p.relative_to(ROOT).parts[:2]
        for p in [*CORE.rglob("*.py"), *BACKENDS.rglob("*.py")]
        if any(name.split(".")[0] == "aioimaplib" for name in imports(p))
    }
    assert users <= {("backends", "imap")}, users


def test_prometheus_client_stays_where_metrics_are_kept_and_served() -> None:
    users = {
        part_of(module_name(p))
        for p in core_modules()
        if any(name.split(".")[0] == "prometheus_client" for name in imports(p))
    }
    assert users <= {"popbridge.telemetry", "popbridge.admin"}, users


def test_a_forbidden_import_is_found(tmp_path: Path) -> None:
    # the walker must see imports inside functions too, or the rules above prove nothing
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import asyncio\n    from backends.imap import create\n")
    assert {"asyncio", "backends.imap", "backends.imap.create"} <= set(imports(probe))
