"""The agent's TOML configuration, validated at start without I/O (see docs/agent.md).

    config = load_config("/etc/cdrstats/agent.toml")   # raises ConfigError naming file and key

Every table is read with `Options`, so an unknown key is an error, and every `[[source]]` table
is handed to its plugin's `create_source`, which validates the rest of the table (still without
I/O). The result holds the built sources, ready for the runner.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import plugin as plugin_api
from .errors import ConfigError
from .firewall import BACKENDS, NAME, FirewallSettings
from .options import Options
from .plugin import Plugin, Source

DEFAULT_CONFIG_PATH = "/etc/cdrstats/agent.toml"
DEFAULT_STATE_DIR = "/var/lib/cdrstats-agent"
LOG_LEVELS = ("debug", "info", "warning", "error")
SPOOL_SYNC = ("full", "normal")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The `[agent]` table."""

    state_dir: Path = Path(DEFAULT_STATE_DIR)
    log_level: str = "info"
    spool_max_mb: int = 512
    spool_sync: str = "full"

    @property
    def spool_max_bytes(self) -> int:
        return self.spool_max_mb * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """The `[collector]` table."""

    urls: tuple[str, ...] = ()
    batch_max_cdrs: int = 5000
    batch_max_age_s: float = 1.0
    timeout_s: float = 30.0
    backoff_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """The `[live]` table: streaming of calls in progress (sources that have `live()`)."""

    enabled: bool = True
    flush_interval_s: float = 0.5
    flush_max_events: int = 200
    queue_max_events: int = 10000


@dataclass(frozen=True, slots=True)
class ActionSettings:
    """The `[actions]` table: remote commands from the collector (docs/actions.md)."""

    enabled: bool = True
    dry_run: bool = False
    allowlist: tuple[str, ...] = ()
    """Networks that can never be blocked (CIDR or single addresses), besides the built-in
    ones (loopback, the collector's and the switch's own addresses)."""
    max_blocks: int = 1000
    max_ttl_s: int = 30 * 86400
    poll_wait_s: float = 25.0


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One `[[source]]` table: its name, plugin and the source the plugin built from it."""

    name: str
    plugin: str
    options: Mapping[str, Any]
    source: Source = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    agent: AgentSettings = field(default_factory=AgentSettings)
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    sources: tuple[SourceConfig, ...] = ()
    live: LiveSettings = field(default_factory=LiveSettings)
    path: str = "<memory>"
    actions: ActionSettings = field(default_factory=ActionSettings)
    firewall: FirewallSettings = field(default_factory=FirewallSettings)


def load_config(
    path: str | Path = DEFAULT_CONFIG_PATH, *, plugins: Mapping[str, Plugin] | None = None
) -> Config:
    """Read and validate a config file; every error is a ConfigError naming file and key.

    `plugins` replaces the entry-point discovery (tests); by default plugins are looked up by
    name with `plugin.load`.
    """
    name = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "", "config file not found", file=name, hint="give another one with --config PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read the config file: {exc}", file=name) from None
    return parse_config(text, path=name, plugins=plugins)


def parse_config(
    text: str, *, path: str = "<memory>", plugins: Mapping[str, Plugin] | None = None
) -> Config:
    """Validate config text (see `load_config`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, path) from None
    try:
        return _build(doc, path, plugins)
    except ConfigError as exc:
        raise exc.in_file(path) from None


def _syntax_error(exc: tomllib.TOMLDecodeError, path: str) -> ConfigError:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    problem = message[: match.start()].strip() if match else message
    key = f"line {match.group(1)}, column {match.group(2)}" if match else ""
    return ConfigError(key, f"TOML syntax error: {problem}", file=path)


def _build(doc: dict[str, Any], path: str, plugins: Mapping[str, Plugin] | None) -> Config:
    top = Options(doc)
    agent_table = top.table("agent", {})
    collector_table = top.table("collector", {})
    source_tables = top.table_list("source", [])
    live_table = top.table("live", {})
    actions_table = top.table("actions", {})
    firewall_table = top.table("firewall", {})
    top.finish()
    actions = _actions(Options(actions_table, "actions"))
    firewall = _firewall(Options(firewall_table, "firewall"), actions.dry_run)
    agent = _agent(Options(agent_table, "agent"))
    collector = _collector(Options(collector_table, "collector"))
    live = _live(Options(live_table, "live"))
    sources: list[SourceConfig] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(source_tables):
        prefix = f"source[{i}]"
        sc = _source(table, prefix, plugins)
        if sc.name in seen:
            raise ConfigError(
                f"{prefix}.name", f"{sc.name!r} is already the name of source[{seen[sc.name]}]"
            )
        seen[sc.name] = i
        sources.append(sc)
    return Config(
        agent=agent,
        collector=collector,
        sources=tuple(sources),
        path=path,
        live=live,
        actions=actions,
        firewall=firewall,
    )


def _agent(opts: Options) -> AgentSettings:
    state_dir = opts.text("state_dir", DEFAULT_STATE_DIR)
    if not state_dir:
        raise opts.error("state_dir", "must not be empty")
    settings = AgentSettings(
        state_dir=Path(state_dir),
        log_level=opts.choice("log_level", LOG_LEVELS, "info"),
        spool_max_mb=opts.integer("spool_max_mb", 512, minimum=1),
        spool_sync=opts.choice("spool_sync", SPOOL_SYNC, "full"),
    )
    opts.finish()
    return settings


def _collector(opts: Options) -> CollectorSettings:
    urls = opts.text_list("urls", [])
    for n, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            raise opts.error(f"urls[{n}]", problem, hint="for example http://collector:8080")
    if len(set(urls)) != len(urls):
        raise opts.error("urls", "lists the same URL twice")
    settings = CollectorSettings(
        urls=tuple(u.rstrip("/") for u in urls),
        batch_max_cdrs=opts.integer("batch_max_cdrs", 5000, minimum=1),
        batch_max_age_s=_positive(opts, "batch_max_age_s", 1.0),
        timeout_s=_positive(opts, "timeout_s", 30.0),
        backoff_max_s=_positive(opts, "backoff_max_s", 60.0),
    )
    if settings.batch_max_cdrs > 1_000_000:
        raise opts.error(
            "batch_max_cdrs", f"must be at most 1000000, got {settings.batch_max_cdrs}"
        )
    opts.finish()
    return settings


def _live(opts: Options) -> LiveSettings:
    settings = LiveSettings(
        enabled=opts.flag("enabled", True),
        flush_interval_s=_positive(opts, "flush_interval_s", 0.5),
        flush_max_events=opts.integer("flush_max_events", 200, minimum=1),
        queue_max_events=opts.integer("queue_max_events", 10000, minimum=1),
    )
    if settings.flush_interval_s > 60:
        raise opts.error(
            "flush_interval_s", f"must be at most 60, got {settings.flush_interval_s:g}"
        )
    opts.finish()
    return settings


def _actions(opts: Options) -> ActionSettings:
    import ipaddress

    allow = opts.text_list("allowlist", [])
    for n, entry in enumerate(allow):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise opts.error(
                f"allowlist[{n}]",
                f"{entry!r} is not an IP address or network",
                hint="for example 192.0.2.10 or 198.51.100.0/24 or 2001:db8::/32",
            ) from None
    settings = ActionSettings(
        enabled=opts.flag("enabled", True),
        dry_run=opts.flag("dry_run", False),
        allowlist=tuple(allow),
        max_blocks=opts.integer("max_blocks", 1000, minimum=1),
        max_ttl_s=opts.integer("max_ttl_s", 30 * 86400, minimum=1),
        poll_wait_s=_positive(opts, "poll_wait_s", 25.0),
    )
    if settings.poll_wait_s > 120:
        raise opts.error("poll_wait_s", f"must be at most 120, got {settings.poll_wait_s:g}")
    opts.finish()
    return settings


def _firewall(opts: Options, dry_run: bool) -> FirewallSettings:
    table = opts.text("table", "cdrstats")
    if not NAME.match(table):
        raise opts.error(
            "table", f"{table!r} is not a valid name", hint="a letter, then letters, digits, '_'"
        )
    netns = opts.text("netns", "")
    if netns and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", netns):
        raise opts.error("netns", f"{netns!r} is not a valid network namespace name")
    settings = FirewallSettings(
        backend=opts.choice("backend", BACKENDS, "none"),
        table=table,
        priority=opts.integer("priority", -10),
        netns=netns,
        dry_run=dry_run,
    )
    opts.finish()
    return settings


def _positive(opts: Options, key: str, default: float) -> float:
    value: float = opts.number(key, default)
    if value <= 0:
        raise opts.error(key, f"must be greater than 0, got {value:g}")
    return value


def url_problem(url: str) -> str:
    """Why `url` is not a usable collector base URL, or "" when it is."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} must be an http:// or https:// URL with a host"
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment"
    return ""


def _source(
    table: dict[str, Any], prefix: str, plugins: Mapping[str, Plugin] | None
) -> SourceConfig:
    opts = Options(table, prefix)
    name = opts.text("name")
    if not _SOURCE_NAME.match(name):
        raise opts.error(
            "name",
            f"{name!r} is not a valid source name",
            hint="letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit",
        )
    plugin_name = opts.text("plugin")
    if plugins is None:
        try:
            found = plugin_api.load(plugin_name)
        except ConfigError as exc:
            raise exc.under(prefix) from None
    else:
        if plugin_name not in plugins:
            known = ", ".join(sorted(plugins)) or "none installed"
            raise opts.error("plugin", f"no plugin named {plugin_name!r} (installed: {known})")
        found = plugins[plugin_name]
    options = {k: v for k, v in table.items() if k not in ("name", "plugin")}
    try:
        source = found.create_source(name, options)
    except ConfigError as exc:
        raise exc.under(prefix) from None
    except Exception as exc:
        raise ConfigError(
            prefix, f"plugin {plugin_name!r} failed to validate the table: {exc!r}"
        ) from None
    return SourceConfig(name=name, plugin=plugin_name, options=options, source=source)


def sample_config(plugin: Plugin) -> str:
    """A complete agent.toml with the defaults and the plugin's sample `[[source]]` table."""
    return f"""\
# cdrstats-agent configuration ({DEFAULT_CONFIG_PATH}); reference: docs/agent.md
[agent]
state_dir = "{DEFAULT_STATE_DIR}"   # spool.sqlite, agent.key, identity.json
log_level = "info"                  # debug | info | warning | error
spool_max_mb = 512                  # past this the agent stops reading sources
spool_sync = "full"                 # full | normal (SQLite synchronous)

[collector]
# urls = ["http://collector:8080"]  # default: the URL given to `cdrstats-agent enroll`
batch_max_cdrs = 5000
batch_max_age_s = 1.0
timeout_s = 30
backoff_max_s = 60

[live]                              # calls in progress, for sources whose plugin has live()
enabled = true
flush_interval_s = 0.5              # events are sent together at most this often
flush_max_events = 200              # ... or as soon as this many wait
queue_max_events = 10000            # per source; past this, wait for the source's next snapshot

[actions]                           # remote commands from the collector (docs/actions.md)
enabled = true
dry_run = false                     # log what block_ip/unblock_ip would do, change nothing
allowlist = []                      # never blocked, besides loopback, the collector and this host
max_blocks = 1000                   # active blocks at most
max_ttl_s = 2592000                 # longest block (30 days); every block expires

[firewall]                          # for sources without a native block (Kamailio has one)
backend = "none"                    # nftables | ipset | iptables | none (needs CAP_NET_ADMIN)
table = "cdrstats"                  # nftables table (inet) / ipset prefix / iptables chain

{plugin.sample_config.strip()}
"""
