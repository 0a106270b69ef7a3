"""The files in deploy/ checked by the tools that know their formats.

hadolint for the Dockerfile, kubernetes-validate (strict) for the Kubernetes example, the
compose specification's schema (check-jsonschema) for compose.yaml, `systemd-analyze
verify` and `systemd-analyze security` for the unit, doveconf for the demo's Dovecot
config; every TOML config the deploy files carry is loaded by popbridge itself with the
environment those files give it, and the demo's seed script fills a Maildir a real
Dovecot serves through the bridge. A tool that is missing fails the test unless it truly
cannot be installed here, which the skip reason says.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.dovecot import Dovecot
from popbridge.config import load_config
from tests.conftest import StartBridge

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
UNIT = DEPLOY / "popbridge.service"
EXPOSURE_CEILING = 2.0  # `systemd-analyze security`: 1.4 at the time of writing


def tool(name: str, *, debian: str | None = None) -> str:
    """The path of `name` (the project's virtualenv first); skip only if it cannot exist."""
    found = VENV_BIN / name if (VENV_BIN / name).exists() else shutil.which(name)
    if found is None:
        where = f"Debian package {debian}" if debian else "the test extra in pyproject.toml"
        pytest.fail(f"{name} is missing: it comes from {where} (scripts/bootstrap installs it)")
    return str(found)


def run(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )  # fmt: skip


def test_dockerfile_is_hadolint_clean() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2  # build stage, run stage
    assert re.search(r"^USER \d+", text, re.MULTILINE)  # numeric: runAsNonRoot can check it
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_kubernetes_example_is_valid_and_complete() -> None:
    result = run(tool("kubernetes-validate"), "--strict", "k8s-sidecar.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    documents = list(yaml.safe_load_all((DEPLOY / "k8s-sidecar.yaml").read_text()))
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "popbridge")
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/readyz" in " ".join(sidecar["readinessProbe"]["exec"]["command"])
    assert {"cpu", "memory"} <= set(sidecar["resources"]["limits"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "secret" in volumes["tls"]


def test_kubernetes_config_is_a_valid_popbridge_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "k8s-sidecar.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    text = config_map["data"]["popbridge.toml"]
    tls = _test_certificate(tmp_path)
    text = text.replace("/etc/popbridge/tls/tls.crt", str(tls[0]))
    text = text.replace("/etc/popbridge/tls/tls.key", str(tls[1]))
    monkeypatch.setenv("POPBRIDGE_ADMIN_TOKEN", "x" * 32)
    (tmp_path / "popbridge.toml").write_text(text)
    config = load_config(tmp_path / "popbridge.toml", {})
    assert [listener.port for listener in config.listeners] == [1110, 1995]


def test_compose_file_follows_the_compose_specification() -> None:
    result = run(
        tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_popbridge_config_loads_with_the_compose_environment() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    environment: dict[str, Any] = compose["services"]["popbridge"]["environment"]
    config = load_config(DEPLOY / "compose" / "popbridge.toml", dict(environment))
    assert config.backend_settings["host"] == "dovecot"
    assert config.listeners[0].port == 1110


def test_compose_dovecot_config_is_accepted_by_doveconf() -> None:
    result = run(tool("doveconf", debian="dovecot-core"), "-n", "-c", "compose/dovecot.conf")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "login_trusted_networks" in result.stdout


@pytest.mark.dovecot
async def test_the_compose_seed_fills_a_mailbox_the_bridge_serves(
    dovecot: Dovecot, bridge: StartBridge
) -> None:
    dovecot.reset_mailbox("carol")
    maildir = dovecot.maildir("carol")
    owner = (maildir.parent.stat().st_uid, maildir.parent.stat().st_gid)  # the mail user
    seed = [sys.executable, str(DEPLOY / "compose" / "seed.py"), str(maildir)]
    owner_args = ["--owner", f"{owner[0]}:{owner[1]}"] if os.geteuid() == 0 else []
    assert "seeded one message" in run(*seed, *owner_args).stdout
    assert "left alone" in run(*seed, *owner_args).stdout  # a second start adds nothing
    server = await bridge()
    client = await _pop3(server.addresses[0], "carol", dovecot.users["carol"])
    assert b"Subject: Welcome to the popbridge demo" in client


async def _pop3(address: tuple[str, int], user: str, password: str) -> bytes:
    import asyncio

    def fetch() -> bytes:
        client = poplib.POP3(*address, timeout=20)
        try:
            client.user(user)
            client.pass_(password)
            assert client.stat()[0] == 1
            return b"\n".join(client.retr(1)[1])
        finally:
            client.quit()

    return await asyncio.to_thread(fetch)


def _unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's popbridge (verify checks it)."""
    popbridge = VENV_BIN / "popbridge"
    unit = tmp_path / "popbridge.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/popbridge", str(popbridge)))
    return unit


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", debian="systemd")
    result = run(analyze, "verify", str(_unit_for_verify(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "popbridge.service" not in result.stdout + result.stderr  # not even a warning


def test_systemd_unit_exposure_stays_low(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", debian="systemd")
    unit = _unit_for_verify(tmp_path)
    result = run(analyze, "security", "--offline=true", "--no-pager", str(unit), cwd=tmp_path)
    found = re.search(r"Overall exposure level for popbridge\.service: (\d+\.\d)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE_CEILING, result.stdout


def test_systemd_unit_reads_root_only_secrets_through_credentials() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )  # fmt: skip
    text = UNIT.read_text()
    assert settings["DynamicUser"] == "yes" and "LoadCredential=tls-key:" in text
    assert int(settings["LimitNOFILE"]) > 2 * 1000  # 2 x the default max_connections
    assert settings["UMask"] == "0077"
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert "SystemCallFilter=@system-service" in text and "RestrictAddressFamilies=" in text


def _test_certificate(directory: Path) -> tuple[Path, Path]:
    from devkit.tlsca import make_test_pki

    pki = make_test_pki(directory / "tls")
    return Path(pki.cert_file), Path(pki.key_file)
