"""Typed reading of a TOML table with errors that name the key (for the agent and plugins).

opts = Options(table)
path = opts.text("path")                      # required
tz = opts.timezone("timezone", "UTC")
unit = opts.choice("duration_unit", ("s", "ms", "hms"), "s")
opts.finish()                                # unknown keys are an error
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

_MISSING: Any = object()
T = TypeVar("T")


class Options:
    def __init__(self, table: Mapping[str, Any], prefix: str = "") -> None:
        self._table = dict(table)
        self._prefix = prefix
        self._seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else key

    def _get(self, key: str, default: Any, kind: type | tuple[type, ...], kind_name: str) -> Any:
        self._seen.add(key)
        if key not in self._table:
            if default is _MISSING:
                raise ConfigError(self._key(key), "is required and missing")
            return default
        value = self._table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(self._key(key), f"must be {kind_name}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(
                self._key(key), f"must be {kind_name}, got {type(value).__name__} {value!r:.60}"
            )
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, str, "a string")

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, bool, "true or false")

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        value = self._get(key, default, int, "an integer")
        if value is not None and minimum is not None and value < minimum:
            raise ConfigError(self._key(key), f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, minimum: float | None = None) -> Any:
        value = self._get(key, default, (int, float), "a number")
        if value is not None and minimum is not None and value < minimum:
            raise ConfigError(self._key(key), f"must be at least {minimum}, got {value}")
        return None if value is None else float(value)

    def choice(self, key: str, allowed: Sequence[str], default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if value is not None and value not in allowed:
            raise ConfigError(self._key(key), f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def text_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, list, "a list of strings")
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ConfigError(self._key(key), "must be a list of strings")
        return value

    def table(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, dict, "a table")

    def table_list(self, key: str, default: Any = _MISSING) -> Any:
        """An array of tables (`[[key]]`)."""
        value = self._get(key, default, list, "an array of tables ([[" + key + "]])")
        if value is not None:
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ConfigError(
                        f"{self._key(key)}[{i}]", f"must be a table, got {type(item).__name__}"
                    )
        return value

    def timezone(self, key: str, default: Any = _MISSING) -> Any:
        name = self.text(key, default)
        if name is None:
            return None
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                self._key(key),
                f"unknown timezone {name!r}",
                hint="use an IANA name such as Europe/Paris",
            ) from None

    def error(self, key: str, problem: str, hint: str = "") -> ConfigError:
        return ConfigError(self._key(key), problem, hint=hint)

    def finish(self) -> None:
        """Raise for keys nobody asked for (a typo must not be silently ignored)."""
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise ConfigError(
                self._key(unknown[0]),
                "is not a known option",
                hint=f"check the spelling; unknown keys: {', '.join(unknown)}",
            )
