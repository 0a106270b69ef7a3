"""`[admin]`, `log_format` and listener names in the config: safe defaults, clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from popbridge.config import parse_config
from popbridge.errors import ConfigError

BASE: dict[str, Any] = {"listeners": [{}], "backend": {"type": "imap"}}
TOKEN = "a-token-of-enough-length"


def parse(**sections: Any) -> Any:
    return parse_config({**BASE, **sections}, source="t.toml")


def test_defaults_are_off_loopback_text() -> None:
    config = parse()
    assert not config.admin.enabled and config.admin.host == "127.0.0.1"
    assert config.admin.token is None and config.server.log_format == "text"
    assert config.listeners[0].name == "pop3-0"


def test_token_from_file_or_environment_never_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    config = parse(admin={"enabled": True, "host": "0.0.0.0", "token_file": str(secret)})
    assert config.admin.token == TOKEN and TOKEN not in repr(config)
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
    assert parse(admin={"token_env": "ADMIN_TOKEN"}).admin.token == TOKEN


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ({"host": "0.0.0.0"}, "admin.host: a non-loopback admin listener needs a token"),
        ({"host": "::"}, "admin.host: a non-loopback"),
        ({"token": "short"}, "admin.token: must have 16 to 512 characters"),
        ({"token": TOKEN, "token_env": "X"}, "give only one of token"),
        ({"port": 70000}, "admin.port"),
        ({"probe_interval": 0}, "admin.probe_interval"),
        ({"bind": "x"}, "admin.bind: unknown key"),
    ],
)
def test_admin_mistakes_are_refused(admin: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse(admin=admin)


def test_an_unprotected_public_admin_listener_needs_saying_so() -> None:
    config = parse(admin={"host": "0.0.0.0", "allow_unauthenticated": True})
    assert config.admin.host == "0.0.0.0" and config.admin.token is None
    assert parse(admin={"host": "localhost"}).admin.host == "localhost"


def test_log_format_and_listener_names() -> None:
    config = parse(server={"log_format": "json"}, listeners=[{"name": "devices-995"}, {}])
    assert config.server.log_format == "json"
    assert [listener.name for listener in config.listeners] == ["devices-995", "pop3-1"]
    with pytest.raises(ConfigError, match=r"server\.log_format"):
        parse(server={"log_format": "xml"})
    for bad in ("", "a b", 'x"}', "é", "x" * 33):
        with pytest.raises(ConfigError, match=r"listeners\[0\]\.name"):
            parse(listeners=[{"name": bad}])
