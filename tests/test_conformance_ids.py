"""Every checklist id the code cites resolves in docs/conformance.md, with the tests it names.

An id in a comment (`# conformance P-5.3`, `(I-17)`) is only useful when a reader can
look it up; this keeps every cited id in the project's own checklist, and every test that
checklist names real.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKLIST = ROOT / "docs" / "conformance.md"
# P and E ids have a dot (P-5.3, E-2.5); I, J and S ids do not (I-17). "P-256" is a curve.
ID = re.compile(r"\b(?:[IJS]-\d{1,2}|[PE]-\d{1,2}\.\d{1,2})\b")
ROW = re.compile(r"^\| ((?:[IJS]-\d{1,2}|[PE]-\d{1,2}\.\d{1,2})) \|", re.MULTILINE)
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def cited() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for part in ("popbridge", "backends", "devkit", "fuzz", "bench", "tests"):
        for path in (ROOT / part).rglob("*.py"):
            for name in ID.findall(path.read_text()):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_cited_id_is_in_the_checklist() -> None:
    defined = set(ROW.findall(CHECKLIST.read_text()))
    missing = {name: sorted(paths) for name, paths in cited().items() if name not in defined}
    assert not missing, f"add these ids to docs/conformance.md: {missing}"


def test_every_test_the_checklist_names_exists() -> None:
    text = CHECKLIST.read_text()
    absent = [
        f"{path}::{name}"
        for path, name in TEST_REF.findall(text)
        if not re.search(rf"def {name}\b", (ROOT / path).read_text())
    ]
    assert not absent, absent
