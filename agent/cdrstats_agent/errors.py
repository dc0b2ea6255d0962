"""Errors the agent reports to an operator as one clear line."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem: names the file, the key and what is wrong with it."""

    def __init__(self, key: str, problem: str, *, file: str | None = None, hint: str = "") -> None:
        self.key = key
        self.problem = problem
        self.file = file
        self.hint = hint
        super().__init__(str(self))

    def in_file(self, file: str) -> ConfigError:
        return ConfigError(self.key, self.problem, file=file, hint=self.hint)

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key nested under `prefix` (a table of the config)."""
        return ConfigError(f"{prefix}.{self.key}", self.problem, file=self.file, hint=self.hint)

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{key}{self.problem}{hint}"


class SourceError(Exception):
    """A source cannot read its switch's store (permission, connection, format)."""


class IdentityError(Exception):
    """The agent's identity (key pair, enrollment) is missing, unreadable or refused."""
