"""`popbridge accounts` through a tiny argparse, against a SQLite store and the fake provider."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from devkit.oauth_provider import FakeOAuthProvider
from devkit.tlsca import make_test_pki
from popbridge.accounts import AccountRecord, Keyring, generate_key, parse_accounts
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import open_secret
from popbridge.cli import accounts as cli_accounts
from popbridge.config import Config, load_config
from popbridge.store import MemoryAccountRecords, open_store


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="popbridge")
    cli_accounts.add_parser(top.add_subparsers(dest="command", required=True))
    return top


def write_config(tmp_path: Path, fake: FakeOAuthProvider | None = None, *, keys: str = "",
                 store: str = "sqlite", mode: str = "mapped") -> Path:  # fmt: skip
    key_file = tmp_path / "accounts.key"
    if keys or not key_file.exists():
        key_file.write_text(keys or generate_key() + "\n")
        key_file.chmod(0o600)
    text = f"""
[[listeners]]
port = 0
[backend]
type = "imap"
host = "127.0.0.1"
tls = "none"
[store]
type = "{store}"
path = "state.sqlite3"
[accounts]
mode = "{mode}"
key_file = "{key_file}"
"""
    if fake is not None:
        text += f"""
[accounts.oauth2.custom]
client_id = "bridge"
client_secret = "bridge-secret"
token_url = "{fake.url}/token"
authorize_url = "{fake.url}/authorize"
device_url = "{fake.url}/device"
scope = "mail"
"""
    path = tmp_path / "popbridge.toml"
    path.write_text(text.replace('\npath = "state.sqlite3"', "") if store != "sqlite" else text)
    return path


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


async def cli(config: Path, *argv: str) -> int:
    args = parser().parse_args(["accounts", *argv, "--config", str(config)])
    return await cli_accounts.run(args, load_config(config))


async def records_of(config: Path) -> dict[str, AccountRecord]:
    loaded = load_config(config)
    store = await open_store(loaded.store_settings, source="t", base=loaded.directory)
    try:
        names = await store.accounts.names()
        return {n: AccountRecord.from_bytes(await store.accounts.get(n) or b"") for n in names}
    finally:
        await store.close()


def keyring_of(config: Path) -> Keyring:
    settings = parse_accounts(load_config(config).accounts_settings, source="t")
    assert settings.keyring is not None
    return settings.keyring


async def test_add_list_passwd_remove_through_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    local = secret_file(tmp_path, "local", "local pw 1")
    upstream = secret_file(tmp_path, "upstream", "upstream-secret")
    ca_file = make_test_pki(tmp_path / "tls").ca_file
    code = await cli(
        config, "add", "Printer", "--upstream-user", "alice@example.org",
        "--host", "imap.example.org", "--port", "143", "--tls", "starttls", "--folder", "Scans",
        "--set", "timeout=5", "--ca-file", str(ca_file),
        "--password-file", local, "--secret-file", upstream,
    )  # fmt: skip
    assert code == 0
    record = (await records_of(config))["printer"]
    assert record.upstream.backend == {
        "host": "imap.example.org", "port": 143, "tls": "starttls", "folder": "Scans",
        "timeout": 5, "ca_file": str(ca_file.resolve()),
    }  # fmt: skip
    assert open_secret(record, keyring_of(config)) == "upstream-secret"
    assert await cli(config, "list") == 0
    out = capsys.readouterr().out
    assert "printer  ->  alice@example.org  password" in out and "host=imap.example.org" in out
    assert "upstream-secret" not in out and "local pw" not in out
    new = secret_file(tmp_path, "local2", "local pw 2")
    assert await cli(config, "passwd", "printer", "--password-file", new) == 0
    changed = (await records_of(config))["printer"]
    assert changed.password != record.password
    assert open_secret(changed, keyring_of(config)) == "upstream-secret"
    assert await cli(config, "remove", "PRINTER") == 0
    assert await cli(config, "remove", "printer") == 1
    assert await cli(config, "list") == 0
    assert "no accounts" in capsys.readouterr().out


async def test_refusals_and_their_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    pw = secret_file(tmp_path, "pw", "pw")
    base = ("add", "printer", "--upstream-user", "a", "--password-file", pw, "--secret-file", pw)
    assert await cli(config, *base) == 0
    assert await cli(config, *base) == 1  # exists
    assert "exists (use --replace" in capsys.readouterr().err
    assert await cli(config, *base, "--replace") == 0
    assert await cli(config, *base, "--replace", "--set", "bogus=1") == 2
    assert "backend.bogus: unknown key" in capsys.readouterr().err
    assert await cli(config, *base, "--replace", "--set", "novalue") == 1
    assert await cli(config, *base, "--replace", "--oauth2", "nope") == 2
    assert await cli(config, "add", "bad name", "--upstream-user", "a", "--password-file", pw,
                     "--secret-file", pw) == 1  # fmt: skip
    monkeypatch.delenv("PB_NOPE", raising=False)
    assert await cli(config, *base[:6], "--secret-env", "PB_NOPE", "--replace") == 1
    assert "PB_NOPE is not set" in capsys.readouterr().err
    assert await cli(write_config(tmp_path, store="memory"), "list") == 2
    assert "accounts need a durable store" in capsys.readouterr().err


async def test_passthrough_mode_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(write_config(tmp_path, mode="passthrough"), "list") == 0
    assert 'accounts.mode is not "mapped"' in capsys.readouterr().err


def test_no_option_takes_a_secret_on_the_command_line() -> None:
    for option in ("--password", "--secret", "--refresh-token", "--token"):
        with pytest.raises(SystemExit):
            parser().parse_args(["accounts", "add", "x", "--upstream-user", "u", option, "s",
                                 "--config", "c"])  # fmt: skip


async def test_prompts_with_confirmation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    answers = iter(["local", "local", "upstream", "upstream", "new", "typo"])
    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("popbridge.cli.accounts.getpass.getpass", getpass)
    monkeypatch.setenv("PB_SECRET", "from-env")
    assert await cli(config, "add", "printer", "--upstream-user", "alice") == 0
    assert prompts[0] == "Local POP3 password for printer: "
    assert prompts[2] == "Upstream password for alice: "
    assert await cli(config, "passwd", "printer") == 1
    assert "the two entries differ" in capsys.readouterr().err


async def test_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    monkeypatch.setenv("PB_SECRET", "from-env")
    pw = secret_file(tmp_path, "pw", "pw")
    assert await cli(config, "add", "printer", "--upstream-user", "a", "--password-file", pw,
                     "--secret-env", "PB_SECRET") == 0  # fmt: skip
    assert open_secret((await records_of(config))["printer"], keyring_of(config)) == "from-env"


async def test_rekey_moves_every_secret_to_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = generate_key(), generate_key()
    config = write_config(tmp_path, keys=old)
    pw = secret_file(tmp_path, "pw", "pw")
    for name in ("printer", "scanner"):
        assert await cli(config, "add", name, "--upstream-user", "a", "--password-file", pw,
                         "--secret-file", pw) == 0  # fmt: skip
    config = write_config(tmp_path, keys=f"{new}\n{old}\n")
    assert await cli(config, "rekey") == 0
    assert "re-sealed 2 account(s); 0 already" in capsys.readouterr().out
    assert await cli(config, "rekey") == 0
    assert "re-sealed 0 account(s); 2 already" in capsys.readouterr().out
    config = write_config(tmp_path, keys=new)  # the old key is gone now
    for record in (await records_of(config)).values():
        assert open_secret(record, keyring_of(config)) == "pw"


async def test_passwd_with_a_lost_key_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    pw = secret_file(tmp_path, "pw", "pw")
    await cli(config, "add", "printer", "--upstream-user", "a", "--password-file", pw,
              "--secret-file", pw)  # fmt: skip
    config = write_config(tmp_path, keys=generate_key())
    assert await cli(config, "passwd", "printer", "--password-file", pw) == 1
    assert "not configured" in capsys.readouterr().err


async def test_listing_marks_unreadable_records(
    tmp_path: Path, hasher: PasswordHasher, capsys: pytest.CaptureFixture[str]
) -> None:
    config: Config = load_config(write_config(tmp_path))
    records = MemoryAccountRecords()
    await records.put("broken", b"{}")
    settings = parse_accounts(config.accounts_settings, source="t")
    args = parser().parse_args(["accounts", "list", "--config", "x"])
    assert await cli_accounts.execute(args, config, records, settings, hasher=hasher) == 0
    assert "UNREADABLE  account 'broken'" in capsys.readouterr().out


async def screen_until(capsys: pytest.CaptureFixture[str], seen: list[str], pattern: str) -> str:
    for _ in range(500):
        seen.append(capsys.readouterr().out)
        if found := re.search(pattern, "".join(seen)):
            return found.group(1)
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pattern!r} not printed: {seen}")


async def test_add_oauth2_by_browser_flow(
    tmp_path: Path, fake: FakeOAuthProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, fake)
    pw = secret_file(tmp_path, "pw", "pw")
    oauth = ("add", "printer", "--upstream-user", "alice", "--oauth2", "custom")
    add = asyncio.create_task(cli(config, *oauth, "--password-file", pw))
    url = await screen_until(capsys, [], r"(http://\S+/authorize\?\S+)")
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
    assert await add == 0
    record = (await records_of(config))["printer"]
    assert record.upstream.mechanism == "oauth2" and record.upstream.oauth2 == "custom"
    assert open_secret(record, keyring_of(config)) in fake.refresh_tokens()


async def test_add_oauth2_by_device_flow(
    tmp_path: Path, fake: FakeOAuthProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, fake)
    pw = secret_file(tmp_path, "pw", "pw")
    oauth = ("add", "printer", "--upstream-user", "alice", "--oauth2", "custom")
    add = asyncio.create_task(cli(config, *oauth, "--flow", "device", "--password-file", pw))
    fake.approve(await screen_until(capsys, [], r"enter the code (\S+)"), "alice")
    assert await add == 0
    refresh = open_secret((await records_of(config))["printer"], keyring_of(config))
    assert refresh in fake.refresh_tokens()


async def test_add_oauth2_failures(
    tmp_path: Path, fake: FakeOAuthProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, fake)
    pw = secret_file(tmp_path, "pw", "pw")
    base = (
        "add",
        "printer",
        "--upstream-user",
        "alice",
        "--oauth2",
        "custom",
        "--password-file",
        pw,
    )
    fake.deny = True
    add = asyncio.create_task(cli(config, *base))
    url = await screen_until(capsys, [], r"(http://\S+/authorize\?\S+)")
    async with aiohttp.ClientSession() as http, http.get(url):
        pass
    assert await add == 1
    assert "access_denied" in capsys.readouterr().err
    assert await cli(config, *base, "--wait", "0.1") == 1
    fake.down = True
    assert await cli(config, *base, "--flow", "device") == 1
    assert "HTTP 503" in capsys.readouterr().err
    assert await records_of(config) == {}
