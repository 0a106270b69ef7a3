"""Config loading: defaults, validation errors that name the file and key, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from popbridge.config import load_config
from popbridge.contract import DispositionKind
from popbridge.errors import ConfigError
from popbridge.upstream.settings import TableReader

MINIMAL = """
[[listeners]]
port = 1110

[backend]
type = "imap"
host = "imap.example.net"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_safe_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.listeners[0].port == 1110 and config.listeners[0].host == "127.0.0.1"
    assert config.listeners[0].plaintext_auth is False
    assert config.server.idle_timeout == 600
    assert config.server.listen_backlog == 1024
    assert config.server.max_logins_in_flight == 8
    assert config.server.min_logins_in_flight == 2
    alone = load_config(write(tmp_path, MINIMAL + "\n[server]\nmax_logins_in_flight = 1\n"))
    assert alone.server.min_logins_in_flight == 1  # the default floor follows a lower cap
    assert config.maildrop.disposition.kind is DispositionKind.EXPUNGE
    assert config.maildrop.mark_seen_on_retr is False
    assert config.backend_type == "imap" and config.backend_settings["host"] == "imap.example.net"


def test_full_maildrop_section(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            MINIMAL
            + '\n[maildrop]\ndisposition = "move"\nmove_to = "Archive"\nmark_seen_on_retr = true\n',
        )
    )
    assert config.maildrop.disposition.kind is DispositionKind.MOVE
    assert config.maildrop.disposition.folder == "Archive"
    assert config.maildrop.mark_seen_on_retr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[server]\nidle_timeout = 30\n", "server.idle_timeout: must be at least 600"),
        ("[server]\nmax_connections = true\n", "server.max_connections: must be an integer"),
        ('[server]\nlog_level = "LOUD"\n', "server.log_level: must be one of"),
        ("[server]\nidle_timout = 700\n", "server.idle_timout: unknown key"),
        ('[maildrop]\ndisposition = "shred"\n', "maildrop.disposition: must be one of"),
        ('[maildrop]\ndisposition = "move"\n', "maildrop.move_to: is required"),
        ('[maildrop]\nkeyword = "bad word"\n', "maildrop.keyword: must be"),
        ("[extras]\na = 1\n", "extras: unknown section"),
        ("[server]\nlisten_backlog = 0\n", "server.listen_backlog: must be"),
        ("[server]\nmax_logins_in_flight = 0\n", "server.max_logins_in_flight: must be"),
        ("[server]\nmin_logins_in_flight = 0\n", "server.min_logins_in_flight: must be"),
        (
            "[server]\nmax_logins_in_flight = 4\nmin_logins_in_flight = 5\n",
            "server.min_logins_in_flight: must not exceed max_logins_in_flight",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[backend]\ntype = "imap"\n', "listeners: at least one"),
        ('listeners = []\n[backend]\ntype = "imap"\n', "listeners: must be a non-empty"),
        (
            '[[listeners]]\nport = 99999\n[backend]\ntype = "imap"\n',
            "listeners[0].port: must be at most",
        ),
        ("[[listeners]]\nport = 110\n", "backend: a [backend] table is required"),
        ('[[listeners]]\n[backend]\nhost = "x"\n', "backend.type: is required"),
        ("not toml = = =", "not valid TOML"),
    ],
)
def test_structural_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_secret_from_file_env_or_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\nignored\n")
    monkeypatch.setenv("POPBRIDGE_TEST_SECRET", "from-env")

    def read(table: dict[str, Any]) -> str | None:
        return TableReader(table, source="f.toml", path="backend").secret("password")

    assert read({"password_file": str(tmp_path / "pw")}) == "from-file"
    assert read({"password_env": "POPBRIDGE_TEST_SECRET"}) == "from-env"
    assert read({"password": "inline"}) == "inline"
    assert read({}) is None
    with pytest.raises(ConfigError, match="give only one"):
        read({"password": "a", "password_env": "POPBRIDGE_TEST_SECRET"})
    with pytest.raises(ConfigError, match="password_env: environment variable"):
        read({"password_env": "POPBRIDGE_NOT_SET_ANYWHERE"})
    with pytest.raises(ConfigError, match="does not exist"):
        read({"password_file": str(tmp_path / "nope")})


def test_table_reader_types() -> None:
    reader = TableReader({"n": 1.5, "s": "", "t": "x", "b": 1}, source="f", path="p")
    assert reader.number("n") == 1.5
    with pytest.raises(ConfigError, match="must not be empty"):
        reader.string("s")
    with pytest.raises(ConfigError, match="must be true or false"):
        reader.boolean("b")
    with pytest.raises(ConfigError, match="must be a table"):
        reader.table("t")
    with pytest.raises(ConfigError, match="must be a number"):
        TableReader({"n": "x"}, source="f", path="p").number("n")
    with pytest.raises(ConfigError, match="is required"):
        reader.number("absent")
    with pytest.raises(ConfigError, match="must be a table"):
        TableReader([], source="f", path="p")  # type: ignore[arg-type]


def test_example_config_in_deploy_is_valid() -> None:
    from popbridge.config import parse_config

    example = Path(__file__).parents[1] / "deploy" / "popbridge.example.toml"
    import tomllib

    data = tomllib.loads(example.read_text())
    for listener in data["listeners"]:  # the example's certificate paths do not exist here
        listener.pop("cert_file", None)
        listener.pop("key_file", None)
        listener["mode"] = "plain"
        listener.pop("tls_profile", None)
    config = parse_config(data, source=str(example))
    assert len(config.listeners) == 2
    assert config.server.throttle.max_failures_per_user == 10


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ('mode = "implicit"', "listeners[0].cert_file: is required"),
        ('cert_file = "CERT"', "cert_file and key_file go together"),
        (
            'tls_ciphers = "ALL"\ncert_file = "CERT"\nkey_file = "CERT"',
            'need tls_profile = "custom"',
        ),
        ('sasl_mechanisms = ["PLAIN", "NTLM"]', "unknown mechanism 'NTLM'"),
        ("sasl_mechanisms = [1]", "must be an array of non-empty strings"),
        ('tls_profile = "ancient"', "must be one of modern, legacy, custom"),
    ],
)
def test_listener_tls_errors(tmp_path: Path, listener: str, message: str) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    text = f'[[listeners]]\n{listener.replace("CERT", str(cert))}\n[backend]\ntype = "imap"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_tls_listener_config(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    text = (
        f'[[listeners]]\nmode = "implicit"\ncert_file = "{tmp_path / "c.pem"}"\n'
        f'key_file = "{tmp_path / "k.pem"}"\ntls_profile = "custom"\ntls_min_version = "TLSv1.3"\n'
        '[backend]\ntype = "imap"\n'
    )
    listener = load_config(write(tmp_path, text)).listeners[0]
    assert listener.port == 995 and listener.tls is not None
    assert listener.tls.min_version == "TLSv1.3"
    assert "POP3S" in listener.describe() and "custom (minimum TLSv1.3" in listener.describe()


def test_address_prefix_lengths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.server.throttle.ipv4_prefix, config.server.throttle.ipv6_prefix) == (32, 64)
    extra = "\n[server]\nipv4_prefix_length = 24\nipv6_prefix_length = 56\n"
    config = load_config(write(tmp_path, MINIMAL + extra))
    assert (config.server.throttle.ipv4_prefix, config.server.throttle.ipv6_prefix) == (24, 56)
    with pytest.raises(ConfigError, match=r"server\.ipv6_prefix_length: must be"):
        load_config(write(tmp_path, MINIMAL + "\n[server]\nipv6_prefix_length = 129\n"))


PROXIED = MINIMAL.replace("port = 1110", "port = 1110\nproxy_protocol = true")


def test_proxy_protocol_needs_trusted_networks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.proxy_trusted: is required"):
        load_config(write(tmp_path, PROXIED))
    text = PROXIED.replace("proxy_protocol = true", 'proxy_trusted = ["10.0.0.0/8"]')
    with pytest.raises(ConfigError, match="no effect without proxy_protocol"):
        load_config(write(tmp_path, text))
    bad = PROXIED.replace(
        "proxy_protocol = true", 'proxy_protocol = true\nproxy_trusted = ["10.0.0.1/8"]'
    )
    with pytest.raises(ConfigError, match="host bits set"):
        load_config(write(tmp_path, bad))
    good = PROXIED.replace(
        "proxy_protocol = true", 'proxy_protocol = true\nproxy_trusted = ["10.0.0.0/8", "::1/128"]'
    )
    listener = load_config(write(tmp_path, good)).listeners[0]
    assert listener.proxy_protocol
    assert "PROXY protocol from 10.0.0.0/8 ::1/128" in listener.describe()


def test_environment_overrides_config_keys(tmp_path: Path) -> None:
    environ = {
        "POPBRIDGE_BACKEND__HOST": "imap.internal",
        "POPBRIDGE_SERVER__MAX_CONNECTIONS": "500",
        "popbridge_listeners__0__plaintext_auth": "true",
        "POPBRIDGE_LISTENERS__1__PORT": "2110",
        "POPBRIDGE_LISTENERS__1__PROXY_PROTOCOL": "true",
        "POPBRIDGE_LISTENERS__1__PROXY_TRUSTED": '["10.0.0.0/8"]',
        "POPBRIDGE_MAILDROP__KEYWORD": '"007"',
        "POPBRIDGE_LISTENERS__2": '{ port = 3110, host = "::1" }',  # a whole table
        "POPBRIDGE_ACCOUNTS_KEY": "not an override: no double underscore",
        "PATH": "/usr/bin",
    }
    config = load_config(write(tmp_path, MINIMAL), environ)
    assert config.backend_settings["host"] == "imap.internal"
    assert config.server.max_connections == 500
    assert config.listeners[0].plaintext_auth and config.listeners[0].port == 1110
    assert config.listeners[1].port == 2110 and config.listeners[1].proxy_protocol
    assert config.maildrop.disposition.keyword == "007"
    assert (config.listeners[2].host, config.listeners[2].port) == ("::1", 3110)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("POPBRIDGE_SERVER__MAX_CONNECTIONZ", "5", "server.max_connectionz"),
        ("POPBRIDGE_SERVER__MAX_CONNECTIONS", "many", "server.max_connections"),
        ("POPBRIDGE_LISTENERS__5__PORT", "1", "POPBRIDGE_LISTENERS__5__PORT"),
        ("POPBRIDGE_BACKEND__HOST__X", "1", "POPBRIDGE_BACKEND__HOST__X"),
        ("POPBRIDGE_BACKEND____HOST", "1", "empty part"),
    ],
)
def test_environment_mistakes_name_the_key(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL), {name: value})
