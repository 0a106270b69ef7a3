"""Configuration overrides from `POPBRIDGE_...` environment variables, for containers.

A variable names a key by its path with `__` (two underscores) between the levels, after
the `POPBRIDGE_` prefix, in any case: `POPBRIDGE_BACKEND__HOST` sets `[backend] host`,
`POPBRIDGE_SERVER__MAX_CONNECTIONS` sets `[server] max_connections`, and
`POPBRIDGE_LISTENERS__0__PORT` sets `port` of the first `[[listeners]]` table (index one
past the last adds a table). The value is read as a TOML value when it is one (`500`,
`true`, `["10.0.0.0/8"]`, `"007"` for a string of digits) and as a plain string otherwise.
Overrides are applied to the parsed file before validation, so a mistake is reported like
one in the file, naming the variable.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from popbridge.errors import ConfigError

PREFIX = "POPBRIDGE_"
SEPARATOR = "__"


def apply_environment(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of the parsed config `data` with every `POPBRIDGE_...` override applied."""
    result: dict[str, Any] = _copy(data)
    for name in sorted(environ):
        if not name.upper().startswith(PREFIX) or SEPARATOR not in name[len(PREFIX) :]:
            continue  # POPBRIDGE_ACCOUNTS_KEY and the like are values, not overrides
        path = name[len(PREFIX) :].lower().split(SEPARATOR)
        if not all(path):
            raise ConfigError(f"environment: {name}: empty part in the key path")
        _set(result, path, _value(environ[name]), name)
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _set(node: Any, path: list[str], value: Any, name: str) -> None:
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise ConfigError(
                    f"environment: {name}: {part!r} is not an index up to {len(node)}"
                )
            if int(part) == len(node):
                node.append({})
            index = int(part)
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if part == "listeners" else {})
        else:
            raise ConfigError(f"environment: {name}: {'.'.join(path[:depth])} is not a table")
