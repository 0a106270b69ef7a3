"""The benchmark still works: ``python -m bench --smoke`` end to end, correctness only.

The smoke profile runs every scenario on tiny mailboxes (20 x 2 KB, ...) once, through the same
code as the real benchmark: Dovecot backend, Dovecot imapc, ``popbridge serve`` in its own
process, the lean client and poplib, all over TLS (POP3S clients, verified IMAPS upstream) as
by default; (b) alone runs once more in plaintext (``--plain``). No timing is asserted, only
that the table and its files were produced and every session of every server retrieved exactly
the seeded messages.
The test suite collects bench/ too; ``.venv/bin/python -m pytest bench -q`` runs these alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.floor import main as floor_main
from bench.logins import main as logins_main
from bench.report import SERVERS
from bench.scenarios import PROFILES
from devkit.cyrus import ensure_installed as ensure_cyrus
from devkit.dovecot import ensure_installed


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, float]:
    ensure_installed()
    ensure_cyrus()
    out = tmp_path_factory.mktemp("bench-smoke")
    started = time.monotonic()
    status = main(["--smoke", "--out", str(out)])
    return status, out, time.monotonic() - started


def test_smoke_run_succeeds_and_writes_every_output(smoke: tuple[int, Path, float]) -> None:
    status, out, elapsed = smoke
    assert status == 0
    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "results.md").read_text()
    assert "| scenario / figure (median) | direct | imapc | popbridge |" in table
    assert "(f) JMAP bulk (Cyrus)" in table
    assert "skipped" not in table
    assert elapsed < 60  # generous: a correctness check, not a timing


def test_every_session_retrieved_every_seeded_message(smoke: tuple[int, Path, float]) -> None:
    _, out, _ = smoke
    checks = json.loads((out / "results.json").read_text())["checks"]
    profile = PROFILES["smoke"]
    expected = {
        "a": 2 * profile.bulk[0],  # lean client and poplib
        "b": 2 * profile.many[0],  # UIDL lines of a first and a repeat login
        "c": 2,
        "d": 0,
        "e": profile.busy[0] * profile.busy[1],
        "f": profile.bulk[0],  # raw JMAP pass ("direct") and popbridge over JMAP
        "g": 2 * profile.giant,
    }
    seen = {(c["scenario"], c["server"]) for c in checks}
    wanted = {(key, server) for key in "abcdeg" for server in SERVERS}
    assert seen == wanted | {("f", "direct"), ("f", "popbridge")}
    for check in checks:
        assert check["failed"] == 0, check
        assert check["messages"] == check["expected"] == expected[check["scenario"]], check


def test_all_figures_present_for_all_servers(smoke: tuple[int, Path, float]) -> None:
    _, out, _ = smoke
    samples = json.loads((out / "results.json").read_text())["samples"]
    for key in ("a.lean", "a.poplib", "b.first", "b.repeat", "c.retr", "d.mem", "e.p99", "g.first"):
        assert set(samples[key]) == set(SERVERS), key
    assert samples["d.errors"] == {server: [0.0] for server in SERVERS}
    assert "popbridge" in samples["c.rss_growth"]
    assert set(samples["f.wall"]) == {"direct", "popbridge"}
    assert set(samples["f.cpu"]) == {"popbridge"}


def test_the_plaintext_variant_stays_available(tmp_path: Path) -> None:
    ensure_installed()
    assert main(["--smoke", "--plain", "--only", "b", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "plaintext (`--plain`)" in table
    checks = json.loads((tmp_path / "results.json").read_text())["checks"]
    assert {c["server"] for c in checks} == set(SERVERS)
    assert all(c["failed"] == 0 for c in checks)


def test_dovecots_default_login_mode_is_available(tmp_path: Path) -> None:
    ensure_installed()
    argv = ["--smoke", "--login-processes", "per-connection", "--only", "e", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "one login process forked per connection" in (tmp_path / "results.md").read_text()
    checks = json.loads((tmp_path / "results.json").read_text())["checks"]
    assert {c["server"] for c in checks} == set(SERVERS)
    assert all(c["failed"] == 0 for c in checks)


def table_rows(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The rows of the Markdown table a command printed, without its header."""
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]


def test_floor_command_compares_direct_stub_and_popbridge(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ensure_installed()
    # a session that retrieves less than STAT announced raises, so 0 means all arrived
    assert floor_main(["--profile", "smoke", "--runs", "1"]) == 0
    names = [row.split(" | ")[0] for row in table_rows(capsys)]
    assert names == ["| direct", "| stub", "| popbridge"]


def test_logins_command_compares_the_storm_with_the_imap_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ensure_installed()
    # a refused login raises, so 0 means every session of every server logged in
    assert logins_main(["--profile", "smoke", "--runs", "1"]) == 0
    rows = table_rows(capsys)
    assert [row.split(" | ")[0] for row in rows] == ["| imap", "| direct", "| imapc", "| popbridge"]
    assert rows[0].endswith("| 1.00 |")  # the floor against itself


def test_logins_command_runs_scenario_e_next_to_its_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ensure_installed()
    # a session that retrieves less than STAT announced raises, so 0 means all arrived
    assert logins_main(["--profile", "smoke", "--runs", "1", "--retrieve"]) == 0
    rows = table_rows(capsys)
    assert [row.split(" | ")[0] for row in rows] == ["| imap", "| direct", "| imapc", "| popbridge"]
    imapc, direct = rows[2].split(" | "), rows[1].split(" | ")
    assert imapc[2] == "1.00"  # each reference against itself
    assert direct[4] == "1.00"
    assert all(float(row.split(" | ")[5].rstrip(" |")) >= 0 for row in rows)  # machine CPU
