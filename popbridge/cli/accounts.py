"""`popbridge accounts`: add, list, remove and re-password mapped accounts, and re-seal secrets.

This module owns the operator's side of mapped accounts. Secrets never come from the command
line, where other users can read them in the process list and shells keep them in history:
the local password and the upstream secret are prompted for (getpass, no echo), or read from
the first line of a file (`--password-file`, `--secret-file`) or from an environment variable
(`--secret-env`) for scripts. `--oauth2 NAME` gets a refresh token by the browser flow
(a loopback redirect) or the device flow, printing what to open, for the scope the account's
backend names if it names one (Gmail: by its `scope` key), else the provider's. Exit status:
0 done, 1 the operation failed, 2 a configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from popbridge.accounts import (
    AccountAdmin,
    AccountError,
    AccountRecord,
    AccountsSettings,
    Unsealable,
    Upstream,
    parse_accounts,
)
from popbridge.accounts.manage import backend_table
from popbridge.accounts.passwords import PasswordHasher
from popbridge.app import backend_defaults
from popbridge.config import Config
from popbridge.contract import Credentials, load_backend
from popbridge.errors import BridgeError, ConfigError
from popbridge.oauth2 import FlowFailed, Grant, Provider, browser_flow, device_flow
from popbridge.oauth2.tokens import refresh
from popbridge.store import AccountRecords, open_store

TLS_MODES = ("implicit", "starttls", "none")


def add_parser(subparsers: Any) -> None:
    """Add `accounts` and its actions to the `popbridge` command's subparsers."""
    # allow_abbrev=False: "--password s3cret" must be an error, not "--password-file s3cret"
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    accounts = subparsers.add_parser("accounts", help="manage mapped accounts", allow_abbrev=False)
    actions = accounts.add_subparsers(dest="accounts_command", required=True)

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, parents=[common], allow_abbrev=False, help=text
        )
        return parser

    _add_add(action("add", "add or replace an account"))
    action("list", "list accounts (no secrets)")
    action("remove", "remove an account").add_argument("name", help="local POP3 user name")
    passwd = action("passwd", "set a new local password")
    passwd.add_argument("name", help="local POP3 user name")
    passwd.add_argument("--password-file", type=Path, help="read the new password from a file")
    action("rekey", "re-seal all secrets under the first key")


def _add_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("name", help="local POP3 user name (what the device logs in as)")
    add.add_argument("--upstream-user", required=True, help="the user name upstream")
    backend = add.add_argument_group("upstream backend overrides (default: [backend])")
    backend.add_argument("--backend-type", help="another backend type than [backend]'s")
    backend.add_argument("--host")
    backend.add_argument("--port", type=int)
    backend.add_argument("--tls", choices=TLS_MODES)
    backend.add_argument("--folder")
    backend.add_argument("--ca-file", type=Path)
    backend.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="any other backend key (a TOML value, or text)")  # fmt: skip
    secrets = add.add_argument_group("secrets (prompted for when not given)")
    secrets.add_argument("--password-file", type=Path, help="local password: a file's first line")
    given = secrets.add_mutually_exclusive_group()
    given.add_argument("--secret-file", type=Path, help="upstream password or refresh token file")
    given.add_argument("--secret-env", metavar="VAR", help="... from this environment variable")
    oauth = add.add_argument_group("OAuth2 upstream")
    oauth.add_argument("--oauth2", metavar="PROVIDER", help="an [accounts.oauth2.PROVIDER] table")
    oauth.add_argument("--flow", choices=("browser", "device"), help="how to authorize")
    oauth.add_argument("--redirect-port", type=int, default=0, help="browser flow: local port")
    oauth.add_argument("--wait", type=float, default=300.0, help="browser flow: seconds to wait")
    add.add_argument("--check", action="store_true", help="log in upstream once before saving")
    add.add_argument("--replace", action="store_true", help="overwrite an existing account")


async def run(args: argparse.Namespace, config: Config) -> int:
    """Run one `popbridge accounts` action against the configured store."""
    try:
        settings = parse_accounts(config.accounts_settings, source=config.source, require_key=True)
        if config.store_settings.get("type", "memory") == "memory":
            raise ConfigError(
                f"{config.source}: store.type: accounts need a durable store "
                '(type = "sqlite" or "postgres")'
            )
        store = await open_store(config.store_settings, source=config.source, base=config.directory)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    try:
        if settings.mode != "mapped":
            _error('note: accounts.mode is not "mapped"; these accounts are not used until it is')
        return await execute(args, config, store.accounts, settings)
    finally:
        await store.close()


async def execute(
    args: argparse.Namespace,
    config: Config,
    records: AccountRecords,
    settings: AccountsSettings,
    *,
    hasher: PasswordHasher | None = None,
) -> int:
    """The action, on `records` (what `run` opened; tests pass their own)."""
    admin = AccountAdmin(records, settings, backend_defaults(config), hasher=hasher)
    try:
        match args.accounts_command:
            case "add":
                record = await _add(args, admin)
                print(f"account {record.name!r} saved")
            case "list":
                for line in _listing(await admin.listing()):
                    print(line)
            case "remove":
                await admin.remove(args.name)
                print(f"account {args.name!r} removed")
            case "passwd":
                await admin.passwd(args.name, _local_password(args, args.name))
                print(f"local password of {args.name!r} changed")
            case "rekey":
                done, current = await admin.rekey()
                print(f"re-sealed {done} account(s); {current} already under the current key")
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except (AccountError, Unsealable, FlowFailed, BridgeError, OSError, ValueError) as exc:
        _error(str(exc) or exc.__class__.__name__)
        return 1
    return 0


async def _add(args: argparse.Namespace, admin: AccountAdmin) -> AccountRecord:
    provider = _provider(args, admin.settings)
    upstream = Upstream(
        user=args.upstream_user,
        mechanism="password" if provider is None else "oauth2",
        backend=_overrides(args),
        oauth2=None if provider is None else provider.name,
    )
    # before any prompt or browser window: a typo or a duplicate fails fast
    admin.validate(upstream)
    if provider is not None:
        provider = _scoped(admin, upstream, provider)
    if not args.replace and await admin.exists(args.name):
        raise AccountError(f"account {args.name!r} exists (use --replace to overwrite it)")
    password = _local_password(args, args.name)
    grant: Grant | None = None
    if provider is not None and args.secret_file is None and args.secret_env is None:
        grant = await _authorize(args, provider, admin.settings)
        if grant.refresh_token is None:
            raise AccountError(f"{provider.name} returned no refresh token (check its scope)")
        secret = grant.refresh_token
    else:
        secret = _upstream_secret(args, provider)
    if args.check:
        await _probe(admin, upstream, provider, secret, grant)
    return await admin.add(args.name, password, upstream, secret, replace=args.replace)


def _scoped(admin: AccountAdmin, upstream: Upstream, provider: Provider) -> Provider:
    """The provider asking for the scope the account's backend says its tokens need, if it
    says so with an `oauth_scope` attribute (the Gmail backend's depends on whether the
    disposition deletes for good); otherwise as configured."""
    kind, table = backend_table(admin.defaults, upstream.backend)
    backend = load_backend(kind, table, source=f"{admin.defaults.source} (account backend)")
    wanted = getattr(backend, "oauth_scope", None)
    if not isinstance(wanted, str) or not wanted or wanted == provider.scope:
        return provider
    print(f"asking {provider.name} for the scope the {kind} backend needs: {wanted}")
    return dataclasses.replace(provider, scope=wanted)


def _provider(args: argparse.Namespace, settings: AccountsSettings) -> Provider | None:
    if args.oauth2 is None:
        return None
    provider = settings.providers.get(args.oauth2)
    if provider is None:
        raise ConfigError(f"accounts.oauth2.{args.oauth2}: no such provider table in the config")
    return provider


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AccountError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = _toml_value(value)
    named = {"type": args.backend_type, "host": args.host, "port": args.port, "tls": args.tls}
    named |= {"folder": args.folder}
    overrides |= {key: value for key, value in named.items() if value is not None}
    if args.ca_file is not None:  # absolute: the server may run from another directory
        overrides["ca_file"] = str(args.ca_file.expanduser().resolve())
    return overrides


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


async def _authorize(
    args: argparse.Namespace, provider: Provider, settings: AccountsSettings
) -> Grant:
    flow = args.flow or ("browser" if provider.authorize_url else "device")
    deadline = settings.http_timeout
    if flow == "device":
        if provider.device_url is None:
            raise AccountError(f"{provider.name} has no device flow here: use --flow browser")
        return await device_flow(provider, _say, deadline=deadline)
    return await browser_flow(
        provider, _say, deadline=deadline, port=args.redirect_port, wait=args.wait
    )


async def _probe(
    admin: AccountAdmin,
    upstream: Upstream,
    provider: Provider | None,
    secret: str,
    grant: Grant | None,
) -> None:
    """`--check`: one real upstream login with what is about to be stored."""
    kind, table = backend_table(admin.defaults, upstream.backend)
    backend = load_backend(kind, table, source=f"{admin.defaults.source} (account backend)")
    credentials = Credentials(upstream.user, secret, "password")
    if provider is not None:
        if grant is None:
            grant = await refresh(provider, secret, deadline=admin.settings.http_timeout)
        credentials = Credentials(upstream.user, grant.access_token, "oauth2")
    mailbox = await backend.open(credentials)
    await mailbox.close()
    print(f"upstream login as {upstream.user!r}: ok")


def _listing(found: list[AccountRecord | AccountError]) -> list[str]:
    lines = []
    for item in found:
        if isinstance(item, AccountError):
            lines.append(f"UNREADABLE  {item}")
            continue
        up = item.upstream
        how = up.mechanism if up.oauth2 is None else f"oauth2:{up.oauth2}"
        overrides = " ".join(f"{k}={v}" for k, v in sorted(up.backend.items())) or "-"
        lines.append(f"{item.name}  ->  {up.user}  {how}  {overrides}  updated {item.updated}")
    return lines or ["no accounts"]


def _local_password(args: argparse.Namespace, name: str) -> str:
    if args.password_file is not None:
        return _first_line(args.password_file)
    return _prompt_twice(f"Local POP3 password for {name}: ")


def _upstream_secret(args: argparse.Namespace, provider: Provider | None) -> str:
    if args.secret_file is not None:
        return _first_line(args.secret_file)
    if args.secret_env is not None:
        if args.secret_env not in os.environ:
            raise AccountError(f"environment variable {args.secret_env} is not set")
        return os.environ[args.secret_env]
    what = "password" if provider is None else "refresh token"
    return _prompt_twice(f"Upstream {what} for {args.upstream_user}: ")


def _prompt_twice(prompt: str) -> str:
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        raise AccountError("the two entries differ")
    return first


def _first_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


def _say(text: str) -> None:
    print(text, flush=True)


def _error(text: str) -> None:
    print(f"popbridge accounts: {text}", file=sys.stderr)
