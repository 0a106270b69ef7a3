"""Typed, validated reads from one TOML table, with errors that name the file and the key.

The core's config loader and every backend read their tables through `TableReader`, so a
mistake is always reported as `FILE: section.key: what is wrong`, unknown keys are refused
rather than silently ignored, and secrets can come from a file or an environment variable
instead of sitting inline in the config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from popbridge.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()


class TableReader:
    """Reads keys of one table; `finish()` refuses the keys nobody asked for."""

    def __init__(self, table: Mapping[str, Any], *, source: str, path: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {path}: must be a table")
        self._table = table
        self._source = source
        self._path = path
        self._seen: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        """An error naming this file and `section.key`."""
        return ConfigError(f"{self._source}: {self._path}.{key}: {problem}")

    def _get(self, key: str, kind: type[T], default: Any, kind_name: str) -> Any:
        self._seen.add(key)
        if key not in self._table:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        value = self._table[key]
        # bool is an int in Python; a config "port = true" must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {kind_name}, not {type(value).__name__}")
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, str, default, "a string")
        if isinstance(value, str) and not value:
            raise self.error(key, "must not be empty")
        return value

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value: int = self._get(key, int, default, "an integer")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float = 0.0) -> float:
        self._seen.add(key)
        value = self._table.get(key, default)
        if value is _MISSING:
            raise self.error(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "must be a number")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return float(value)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value: bool = self._get(key, bool, default, "true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value: str = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def path(self, key: str, default: Any = None, *, must_exist: bool = True) -> Path | None:
        value = self.string(key, default)
        if value is None:
            return None
        resolved = Path(value).expanduser()
        if must_exist and not resolved.exists():
            raise self.error(key, f"file {value!r} does not exist")
        return resolved

    def __contains__(self, key: str) -> bool:
        """Whether the table has `key`, asked or not."""
        return key in self._table

    def list_of_strings(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, list, default, "an array of strings")
        if value is not default and not all(isinstance(item, str) and item for item in value):
            raise self.error(key, "must be an array of non-empty strings")
        return value

    def table(self, key: str) -> TableReader:
        value = self._get(key, dict, {}, "a table")
        return TableReader(value, source=self._source, path=f"{self._path}.{key}")

    def secret(self, key: str) -> str | None:
        """A secret from `key`, `key_file` (first line) or `key_env` (a variable name)."""
        inline = self.string(key, None)
        from_file = self.path(f"{key}_file", None)
        from_env = self.string(f"{key}_env", None)
        given = [v for v in (inline, from_file, from_env) if v is not None]
        if len(given) > 1:
            raise self.error(key, f"give only one of {key}, {key}_file, {key}_env")
        if from_file is not None:
            return from_file.read_text(encoding="utf-8").splitlines()[0].strip()
        if from_env is not None:
            if from_env not in os.environ:
                raise self.error(f"{key}_env", f"environment variable {from_env} is not set")
            return os.environ[from_env]
        return inline  # type: ignore[no-any-return]

    def finish(self) -> None:
        """Refuse keys that no reader asked for: a typo must not pass silently."""
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")
