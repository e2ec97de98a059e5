"""TOML configuration files whose every error names the file, the line and the key.

The daemons (``coinfer edge gateway --config gateway.toml``, ``coinfer cloud serve
--config cloud.toml``) read one TOML file each; an operator who mistyped a value must see
which line is wrong, not a traceback and not a message about a Python dict. ``tomllib``
reports syntax errors with their line; values it parsed carry none, so
:class:`ConfigFile` finds the line of a key by reading the text again.

Example:

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "gateway.toml"
>>> _ = path.write_text('[server]\\nport = 8100\\n\\n[gate]\\nbudget_fraction = 2.0\\n')
>>> config = ConfigFile.read(path)
>>> config.table("server").integer("port", 8000, low=0, high=65535)
8100
>>> config.table("gate").number("budget_fraction", 0.5, low=0, high=1)
Traceback (most recent call last):
...
coinfer.sdk.config_file.ConfigError: ...gateway.toml:5: [gate] budget_fraction must be in [0, 1], got 2.0
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coinfer.sdk.errors import CoinferError, InputNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "ConfigFile", "ConfigTable"]

#: A configuration file larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


class ConfigError(CoinferError):
    """A configuration file that cannot be used; the message starts with ``FILE:LINE:``."""


class ConfigFile:
    """One parsed TOML file and the text it came from (to name the line of a bad value)."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        self._lines = text.splitlines()

    @classmethod
    def read(cls, path: str | Path) -> ConfigFile:
        """Parse ``path``; a missing, oversized, non-UTF-8 or malformed file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such configuration file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: over the {MAX_CONFIG_BYTES}-byte limit of a configuration file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: unreadable configuration file: {error}") from error
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            found = re.search(r"\(at line (\d+), column \d+\)", str(error))
            where = f"{path}:{found.group(1)}" if found else str(path)
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error))
            raise ConfigError(f"{where}: not valid TOML: {message}") from error
        return cls(path, text, data)

    def table(self, name: str, *, required: bool = False) -> ConfigTable:
        """The table ``[name]`` (empty when absent, unless ``required``)."""
        value = self.data.get(name, {})
        if name not in self.data and required:
            raise ConfigError(f"{self.path}: missing table [{name}]")
        if not isinstance(value, dict):
            raise self.error(self.line_of(None, name), f"{name} must be a table [{name}]")
        return ConfigTable(self, name, None, value)

    def tables(self, name: str) -> list[ConfigTable]:
        """The array of tables ``[[name]]`` (empty when absent)."""
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(self.line_of(None, name), f"{name} must be an array of tables [[{name}]]")
        return [ConfigTable(self, name, index, item) for index, item in enumerate(value)]

    def check_known(self, names: Iterable[str]) -> None:
        """Refuse a top-level table or key this program does not read (a typo would be ignored)."""
        known = set(names)
        for name in self.data:
            if name not in known:
                raise self.error(self.line_of(None, name),
                                 f"unknown table or key {name!r}; expected one of {', '.join(sorted(known))}")

    def error(self, line: int | None, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")

    def line_of(self, table: tuple[str, int | None] | None, key: str) -> int | None:
        """The 1-based line where ``key`` is set in ``table`` (``(name, index)`` of an array of
        tables; ``None`` for the top level), or where the table itself starts."""
        current: tuple[str, int | None] | None = None
        seen: dict[str, int] = {}
        assignment = re.compile(rf"^\s*(\"{re.escape(key)}\"|{re.escape(key)})\s*=")
        for number, line in enumerate(self._lines, start=1):
            header = _HEADER.match(line)
            if header:
                name = header.group(2)
                if header.group(1) == "[[":
                    seen[name] = seen.get(name, -1) + 1
                    current = (name, seen[name])
                else:
                    current = (name, None)
                if table is None and name == key:
                    return number
                continue
            if current == table and assignment.match(line):
                return number
        return None


class ConfigTable:
    """One table of a :class:`ConfigFile`, read key by key with its bounds checked."""

    def __init__(self, config: ConfigFile, name: str, index: int | None, values: dict[str, Any]) -> None:
        self.config, self.name, self.index, self.values = config, name, index, values
        self._read: set[str] = set()

    @property
    def label(self) -> str:
        return f"[{self.name}]" if self.index is None else f"[[{self.name}]] #{self.index + 1}"

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def error(self, key: str | None, message: str) -> ConfigError:
        """An error at ``key``'s line (the table's own line when ``key`` is ``None`` or absent)."""
        where = (self.name, self.index)
        line = self.config.line_of(where, key) if key is not None else None
        if line is None:
            line = self.config.line_of(None, self.name) if self.index is None else self._header_line()
        subject = f"{self.label} {key}" if key is not None else self.label
        return self.config.error(line, f"{subject} {message}" if key is not None else f"{subject}: {message}")

    def _header_line(self) -> int | None:
        count = -1
        for number, line in enumerate(self.config._lines, start=1):
            header = _HEADER.match(line)
            if header and header.group(1) == "[[" and header.group(2) == self.name:
                count += 1
                if count == self.index:
                    return number
        return None

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._read.add(key)
        if key not in self.values:
            if required:
                raise self.error(None, f"missing required key {key!r}")
            return default
        return self.values[key]

    def string(self, key: str, default: str | None = None, *, required: bool = False,
               choices: Iterable[str] | None = None) -> Any:
        value = self._get(key, default, required)
        if value is default and key not in self.values:
            return value
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in set(choices):
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def path(self, key: str, *, required: bool = False) -> Path | None:
        """A path; relative paths are relative to the configuration file's folder."""
        value = self.string(key, required=required)
        return None if value is None else (self.config.path.parent / value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int | None = None, *, required: bool = False,
                low: int | None = None, high: int | None = None) -> Any:
        value = self._get(key, default, required)
        if key not in self.values:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        self._check_range(key, value, low, high)
        return value

    def number(self, key: str, default: float | None = None, *, required: bool = False,
               low: float | None = None, high: float | None = None) -> Any:
        value = self._get(key, default, required)
        if key not in self.values:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value!r}")
        self._check_range(key, value, low, high)
        return float(value)

    def strings(self, key: str, default: tuple[str, ...] = (), *, choices: Iterable[str] | None = None
                ) -> tuple[str, ...]:
        value = self._get(key, default, False)
        if key not in self.values:
            return value
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.error(key, f"must be an array of non-empty strings, got {value!r}")
        allowed = None if choices is None else tuple(choices)
        wrong = [item for item in value if allowed is not None and item not in allowed]
        if wrong:
            raise self.error(key, f"has unknown value(s) {wrong}; choose from {', '.join(allowed or ())}")
        return tuple(value)

    def check_known(self) -> None:
        """Refuse a key no getter asked for: call it after reading the table."""
        for key in self.values:
            if key not in self._read:
                raise self.error(key, f"is not a known key; expected one of {', '.join(sorted(self._read))}")

    def _check_range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and high is not None and not low <= value <= high:
            raise self.error(key, f"must be in [{low}, {high}], got {value}")
        if low is not None and value < low:
            raise self.error(key, f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise self.error(key, f"must be <= {high}, got {value}")
