"""`popbridge accounts add` for a Gmail account asks for the scope the backend's `scope` key
names (and so the disposition needs), not the Google preset's full-mail scope."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.gmail.config import FULL_SCOPE, MODIFY_SCOPE
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.accounts import generate_key
from popbridge.cli import accounts as cli_accounts
from popbridge.cli.commands import build_parser
from popbridge.config import load_config


@pytest.fixture
def idp() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


def _config(tmp_path: Path, idp: FakeOAuthProvider, scope: str | None) -> Path:
    key = tmp_path / "accounts.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    backend_scope = f'scope = "{scope}"\n' if scope else ""
    path = tmp_path / "popbridge.toml"
    path.write_text(
        '[[listeners]]\nport = 0\n[backend]\ntype = "gmail"\n' + backend_scope
        + '[maildrop]\ndisposition = "trash"\n'
        + f'[store]\ntype = "sqlite"\n[accounts]\nmode = "mapped"\nkey_file = "{key}"\n'
        + '[accounts.oauth2.custom]\nclient_id = "bridge"\nclient_secret = "bridge-secret"\n'
        + f'token_url = "{idp.url}/token"\ndevice_url = "{idp.url}/device"\nscope = "mail"\n'
    )  # fmt: skip
    return path


async def _add_by_device_flow(
    config: Path, idp: FakeOAuthProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    """The scope of the refresh token `accounts add` stored, and what it printed."""
    password = tmp_path / "pw"
    password.write_text("local pw\n")
    argv = ["accounts", "add", "scanner", "--upstream-user", "me@example.com", "--oauth2",
            "custom", "--flow", "device", "--password-file", str(password),
            "--config", str(config)]  # fmt: skip
    args = build_parser().parse_args(argv)
    adding = asyncio.create_task(cli_accounts.run(args, load_config(config)))
    seen = ""
    for _ in range(500):
        seen += capsys.readouterr().out
        if found := re.search(r"enter the code (\S+)", seen):
            idp.approve(found.group(1), "me")
            break
        await asyncio.sleep(0.01)
    assert await adding == 0
    (refresh,) = idp.refresh_tokens()
    return idp._refresh[refresh].scope, seen + capsys.readouterr().out


@pytest.mark.parametrize(("scope", "wanted"), [("modify", MODIFY_SCOPE), (None, FULL_SCOPE)])
async def test_the_scope_asked_for_is_the_backends(
    tmp_path: Path, idp: FakeOAuthProvider, capsys: pytest.CaptureFixture[str],
    scope: str | None, wanted: str,
) -> None:  # fmt: skip
    config = _config(tmp_path, idp, scope)
    granted, printed = await _add_by_device_flow(config, idp, tmp_path, capsys)
    assert granted == wanted
    assert f"the gmail backend needs: {wanted}" in printed
