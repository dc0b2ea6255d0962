"""The public plugin API: what a switch plugin implements, and how the agent finds it.

A plugin is any installed distribution that registers, in the entry-point group
`cdrstats.plugins`, an object satisfying `Plugin`. The built-in plugins (csv, freeswitch,
asterisk, kamailio) are registered exactly the same way; nothing imports a plugin by name.

Life of a source (see docs/plugins.md for a worked example):

1. `Plugin.create_source(name, options)` validates the `[[source]]` table from the agent's
   config, without any I/O, and raises `ConfigError` naming the bad key.
2. `Source.check()` reaches the switch's store once and raises `SourceError` with a clear
   message if it cannot (used by `cdrstats-agent check` and at start).
3. `Source.read(checkpoint)` is an async iterator that runs until cancelled. It starts exactly
   after `checkpoint` (None the first time) and yields `ReadResult`s: CDRs plus the checkpoint
   reached after them. The agent commits each result's CDRs and checkpoint to the spool in one
   transaction, so a crash loses nothing and re-reads nothing. A result may carry no CDRs (only
   rejected rows, or a new position after skipping data).
4. Optionally `Source.live()` yields `LiveEvent`s (call started/answered/ended, snapshots), and
   `Source.actions()` declares verbs the plugin executes natively (for example Kamailio's
   htable ban for `block_ip`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError
from .model import CDR

ENTRY_POINT_GROUP = "cdrstats.plugins"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the source could not turn into a CDR: where it was and why."""

    where: str
    """File and line (`/var/log/asterisk/cdr-csv/Master.csv:1042`), table and id, ..."""
    reason: str


@dataclass(slots=True)
class ReadResult:
    """CDRs read from a source and the checkpoint that follows the last of them."""

    cdrs: list[CDR]
    checkpoint: str
    """Opaque to the agent: the source's own serialization (JSON is customary)."""
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A live call event: `started`, `answered`, `ended`, or a `snapshot` of all calls."""

    kind: str
    call_id: str = ""
    at: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)
    calls: tuple[Mapping[str, Any], ...] = ()


ActionHandler = Callable[[Mapping[str, Any]], Awaitable[str]]
"""A native action: receives the command's arguments, returns a one-line result."""


@runtime_checkable
class Source(Protocol):
    """One configured CDR store of a switch."""

    name: str

    async def check(self) -> None:
        """Reach the store once; raise SourceError with an operator-readable reason."""

    def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        """Yield CDRs after `checkpoint`, forever (until cancelled)."""
        ...

    async def close(self) -> None:
        """Release connections and files."""


class Plugin(Protocol):
    """What the entry point refers to (a class or a module-level object)."""

    name: str
    description: str
    sample_config: str
    """A commented `[[source]]` table, printed by `cdrstats-agent sample-config NAME`."""

    def create_source(self, name: str, options: Mapping[str, Any]) -> Source:
        """Validate options (no I/O) and build the source; raise ConfigError on bad options."""
        ...


def discover() -> dict[str, Plugin]:
    """Installed plugins by name, from the `cdrstats.plugins` entry points.

    A plugin whose entry point fails to import is left out (see `broken_plugins()` for why), so
    that one broken third-party plugin does not stop the agent from using the others.
    """
    found, _ = _scan()
    return found


def broken_plugins() -> dict[str, str]:
    """Plugins whose entry point is registered but fails to load, with the reason."""
    _, broken = _scan()
    return broken


def _scan() -> tuple[dict[str, Plugin], dict[str, str]]:
    found: dict[str, Plugin] = {}
    broken: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            found[ep.name] = obj() if isinstance(obj, type) else obj
        except Exception as exc:
            broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
    return found, broken


def load(name: str) -> Plugin:
    plugins, broken = _scan()
    if name in broken:
        raise ConfigError(
            "plugin", f"plugin {name!r} is installed but fails to load ({broken[name]})"
        )
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none installed"
        raise ConfigError("plugin", f"no plugin named {name!r} (installed: {known})")
    return plugins[name]
