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
4. Optionally `Source.live()` yields `LiveEvent`s (call started/answered/ended, snapshots)
   and `AuthFailure`s (failed SIP registrations, for scanner detection), and
   `Source.actions()` declares verbs the plugin executes natively (for example Kamailio's
   htable ban for `block_ip`). See `LiveSource` and `ActionSource` below, and
   docs/plugins.md ("Live calls", "Actions"); `supports_live(source)` and
   `native_actions(source)` tell the agent which of them a source has.
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


LIVE_KINDS = ("started", "answered", "ended", "snapshot")
"""The values of `LiveEvent.kind`."""
LIVE_DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
LIVE_STATES = ("ringing", "answered")
LIVE_TEXT_KEYS = (
    "caller",
    "callee",
    "caller_name",
    "accountcode",
    "src_ip",
    "trunk",
    "user_agent",
    "read_codec",
    "write_codec",
)
"""Keys of `LiveEvent.data` (and of each snapshot call) whose value is a string."""
LIVE_TIME_KEYS = ("start", "answer")
"""Keys whose value is a UNIX epoch in seconds (int or float)."""
LIVE_INT_KEYS = ("hangup_cause", "sip_code")
"""Keys whose value is an int (meaningful on `ended`)."""
LIVE_DATA_KEYS = (*LIVE_TEXT_KEYS, "direction", "state", *LIVE_TIME_KEYS, *LIVE_INT_KEYS)
"""Every key `LiveEvent.data` may hold; all are optional. The agent forwards only these."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A live call event: `started`, `answered`, `ended`, or a `snapshot` of all calls.

    kind     one of `LIVE_KINDS`.
    call_id  the switch's id of the call (FreeSWITCH A-leg uuid, Asterisk linkedid/uniqueid,
             Kamailio Call-ID + from-tag, like the CDR natural key where possible); unused
             for a snapshot.
    at       UNIX epoch seconds (float) when the switch saw the event.
    data     for started/answered/ended, every key optional (`LIVE_DATA_KEYS`):
             caller, callee, caller_name, accountcode, src_ip, trunk, user_agent, read_codec,
             write_codec (str); direction ("inbound" | "outbound" | "internal" | "unknown");
             state ("ringing" | "answered"); start, answer (epoch seconds, float);
             hangup_cause (int, Q.850) and sip_code (int), on "ended".
    calls    for a snapshot: one mapping per call in progress, each with "call_id" plus the
             same keys as `data`. A snapshot REPLACES the whole live state of its source: it
             is how the collector resynchronises after anything was lost.

    Examples:

        LiveEvent("started", "a1b2", 1764064800.25,
                  {"caller": "1001", "callee": "33142278000", "direction": "outbound",
                   "state": "ringing", "src_ip": "192.0.2.10"})
        LiveEvent("answered", "a1b2", 1764064804.0, {"answer": 1764064804.0})
        LiveEvent("ended", "a1b2", 1764064834.0, {"hangup_cause": 16, "sip_code": 200})
        LiveEvent("snapshot", at=1764064830.0,
                  calls=({"call_id": "a1b2", "caller": "1001", "state": "answered"},))
    """

    kind: str
    call_id: str = ""
    at: float = 0.0
    data: Mapping[str, Any] = field(default_factory=dict)
    calls: tuple[Mapping[str, Any], ...] = ()


AUTH_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss", "sctp")
"""The values of `AuthFailure.transport` (lower case)."""
AUTH_TEXT_MAX = 256
"""Longest `username`, `reason`, `service` or `realm` forwarded (longer ones are cut)."""


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A failed SIP registration or authentication seen by the switch (scanner detection).

    A `live()` MAY yield these between its `LiveEvent`s: a REGISTER (or INVITE) whose digest
    was wrong, an unknown account, a request refused by an ACL. They travel on the live
    channel (not spooled: losing a few during an outage is acceptable, docs/protocol.md) and
    feed the collector's `scanner` rules per source IP. They do not touch the live calls
    state: no snapshot is needed for them, and a source waiting for its next snapshot still
    forwards them.

    src_ip     the address the request came from (IPv4 or IPv6; required).
    at         UNIX epoch seconds (float) when the switch saw it.
    src_port   the source port, when known.
    username   the account or extension tried (From/To user, AccountID), when known.
    sip_code   the SIP answer sent (401, 403, 407...), when known.
    reason     short text: the switch's event name or cause ("InvalidPassword",
               "sofia::register_failure", "FailedACL").
    transport  "udp", "tcp", "tls", "ws", "wss" or "sctp", when known.
    method     "REGISTER", or "INVITE" (a call attempt whose authentication failed), when known.
    service    the switch's part that refused it ("PJSIP", "SIP", a Sofia profile name...).

    Example:

        AuthFailure("203.0.113.5", at=1764064800.2, src_port=5060, username="1001",
                    sip_code=403, reason="sofia::register_failure", transport="udp",
                    method="REGISTER", service="internal")
    """

    src_ip: str
    at: float = 0.0
    src_port: int | None = None
    username: str | None = None
    sip_code: int | None = None
    reason: str | None = None
    transport: str | None = None
    method: str | None = None
    service: str | None = None


LiveItem = LiveEvent | AuthFailure
"""What a `live()` yields."""


ActionHandler = Callable[[Mapping[str, Any]], Awaitable[str]]
"""A native action: receives the command's arguments, returns a one-line result.

It raises an exception (with an operator-readable message) when the action failed.
"""

BLOCK_ACTIONS = ("block_ip", "unblock_ip")
"""The block verbs. `block_ip` args: {"ip": str (checked with `ipaddress`), "ttl": int seconds};
`unblock_ip` args: {"ip": str}. A plugin with a native blocklist (Kamailio htable) declares
both; a plugin without one declares neither and the agent's host firewall backend is used."""


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


@runtime_checkable
class LiveSource(Protocol):
    """A source that also reports calls in progress (optional; see `LiveEvent`)."""

    name: str

    def live(self) -> AsyncIterator[LiveEvent | AuthFailure]:
        """Yield live events (and failed registrations, `AuthFailure`) until cancelled.

        Send a snapshot first (on every (re)connect) and then periodically (configurable,
        default every 30 s): the collector forgets a source's calls when nothing came from its
        `live()` for a while (3 x 30 s by default), and the agent, after losing events (queue
        overflow, collector unreachable), forwards nothing from the source until its next
        snapshot. On a lost connection to the switch, retry with backoff inside `live()` and
        log clearly; raise `SourceError` only for what retrying cannot fix (the agent logs it
        and calls `live()` again later, with backoff). `live()` never affects CDR reading.
        A `live()` that ends at once without yielding anything, the first time, tells the agent
        that the source has no live calls as configured (for example no AMI login set): it is
        not called again.
        """
        ...


@runtime_checkable
class ActionSource(Protocol):
    """A source that executes remote actions natively (optional)."""

    name: str

    def actions(self) -> Mapping[str, ActionHandler]:
        """Verb name -> async handler(args) -> one-line result (see `BLOCK_ACTIONS`)."""
        ...


def supports_live(source: object) -> bool:
    """Whether `source` has a `live()` method (its calls in progress can be streamed)."""
    return callable(getattr(source, "live", None))


def native_actions(source: object) -> Mapping[str, ActionHandler]:
    """The actions `source` executes natively (empty when it declares none).

    A plugin whose `actions()` raises or returns something else than a mapping is treated
    as having none (the error propagates only from `actions()` itself: callers log it).
    """
    method = getattr(source, "actions", None)
    if not callable(method):
        return {}
    found = method()
    if not isinstance(found, Mapping):
        return {}
    return {str(k): v for k, v in found.items() if callable(v)}


def has_native_block(source: object) -> bool:
    """Whether `source` blocks IPs itself (declares both `block_ip` and `unblock_ip`)."""
    actions = native_actions(source)
    return all(verb in actions for verb in BLOCK_ACTIONS)


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
