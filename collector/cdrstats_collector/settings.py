"""Collector settings: database URL, listen address, limits.

The database URL comes from, in order: `--database-url`, the environment variable
`CDRSTATS_DATABASE_URL`, the config file (`[database] url` in
`/etc/cdrstats/collector.toml`, or the file given with `--config` / `CDRSTATS_CONFIG`).

    [database]
    url = "postgresql://cdrstats@db.example.net/cdrstats"
    pool_max = 8              # connections per collector process
    pool_timeout = 5.0        # seconds a request waits for a connection before a 503

    [server]
    host = "127.0.0.1"
    port = 8080
    public_url = "https://cdr.example.net"   # printed in enrollment commands
    max_body_bytes = 33554432
    clock_window_s = 300

    [maintenance]
    batch_keep_days = 30      # ingest_batch rows (redelivery memory) kept this long
    months_ahead = 2          # cdr partitions created ahead of the current month
    commands_keep_days = 90   # finished commands (and expired ip_block rows) kept this long
    live_counts_keep_days = 90  # live_count_minute rows kept this long
    imports_keep_days = 90    # finished CSV import jobs and their rejected rows
    alerts_keep_days = 180    # resolved alerts (and their notification deliveries)
    auth_failures_keep_days = 7  # failed registrations per minute (auth_failure_minute)

    [commands]                # docs/actions.md
    command_ttl_s = 300       # a command not delivered within this expires
    max_active_blocks = 1000  # active and pending blocks per switch at most
    default_block_ttl_s = 3600  # a block's duration when the request names none

    [notify]                  # docs/notifications.md
    smtp_host = ""            # "" : email channels cannot send (deliveries fail, retried)
    smtp_port = 25
    smtp_from = "cdrstats@localhost"
    smtp_starttls = false
    smtp_username = ""        # with smtp_password: AUTH after STARTTLS
    smtp_password = ""
    smtp_timeout_s = 10
    webhook_timeout_s = 10
    max_attempts = 5          # deliveries of one alert before it is marked failed
    retry_s = 30              # first retry after this, doubled each time (at most 1 h)

    [import]                  # docs/csv-import.md: uploads through the console and the API
    upload_dir = ""           # "" : <system temp dir>/cdrstats-imports (created 0700)
    max_upload_mb = 2048      # a larger upload is refused (413)

    [live]
    stale_s = 90              # a source's live calls are forgotten after this long without
                              # news from it (keep >= 3 x the plugins' snapshot interval)

    [ingest]
    aggregates = true         # update the aggregates in the ingest transaction; false only
                              # for a bulk backfill (then `cdrstats db rebuild-aggregates`)
                              # or to measure their cost (bench/ingest.py)

    [retention]               # docs/analytics.md, "Retention"
    cdr_days = 0              # raw CDRs kept this many days (0: for ever); per tenant:
                              #   `cdrstats tenant retention NAME --cdr-days N`
    aggregate_days = 0        # aggregates kept this many days (0: for ever; >= cdr_days)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cdrstats_agent import wire
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.options import Options

DEFAULT_CONFIG = Path("/etc/cdrstats/collector.toml")
ENV_URL = "CDRSTATS_DATABASE_URL"
ENV_CONFIG = "CDRSTATS_CONFIG"
MAX_BLOCK_TTL_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    max_body_bytes: int = wire.MAX_BODY_BYTES
    clock_window_s: int = wire.CLOCK_WINDOW_S
    pool_min: int = 1
    pool_max: int = 8
    pool_timeout: float = 5.0
    batch_keep_days: int = 30
    months_ahead: int = 2
    maintenance_interval_s: float = 3600.0
    live_stale_s: float = 90.0
    cdr_retention_days: int = 0
    aggregate_retention_days: int = 0
    aggregates: bool = True
    commands_keep_days: int = 90
    live_counts_keep_days: int = 90
    imports_keep_days: int = 90
    alerts_keep_days: int = 180
    auth_failures_keep_days: int = 7
    command_ttl_s: int = 300
    max_active_blocks: int = 1000
    default_block_ttl_s: int = 3600
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "cdrstats@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout_s: float = 10.0
    webhook_timeout_s: float = 10.0
    notify_max_attempts: int = 5
    notify_retry_s: float = 30.0
    upload_dir: str = ""
    max_upload_bytes: int = 2048 << 20

    @property
    def url(self) -> str:
        """The collector's URL as agents should use it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"is not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot be read: {exc.strerror}", file=str(path)) from None


def _from_table(doc: Mapping[str, Any], url: str | None) -> Settings:
    top = Options(doc)
    db = Options(top.table("database", {}), "database")
    server = Options(top.table("server", {}), "server")
    maint = Options(top.table("maintenance", {}), "maintenance")
    live = Options(top.table("live", {}), "live")
    keep = Options(top.table("retention", {}), "retention")
    ingest = Options(top.table("ingest", {}), "ingest")
    cmds = Options(top.table("commands", {}), "commands")
    notify = Options(top.table("notify", {}), "notify")
    imports = Options(top.table("import", {}), "import")
    top.finish()
    file_url = db.text("url", None)
    defaults = Settings(database_url="")
    values: dict[str, Any] = {
        "pool_max": db.integer("pool_max", defaults.pool_max, minimum=1),
        "pool_timeout": db.number("pool_timeout", defaults.pool_timeout, minimum=0.1),
        "host": server.text("host", defaults.host),
        "port": server.integer("port", defaults.port, minimum=1),
        "public_url": server.text("public_url", None),
        "max_body_bytes": server.integer("max_body_bytes", defaults.max_body_bytes, minimum=1024),
        "clock_window_s": server.integer("clock_window_s", defaults.clock_window_s, minimum=1),
        "batch_keep_days": maint.integer("batch_keep_days", defaults.batch_keep_days, minimum=1),
        "months_ahead": maint.integer("months_ahead", defaults.months_ahead, minimum=0),
        "live_stale_s": live.number("stale_s", defaults.live_stale_s, minimum=1),
        "cdr_retention_days": keep.integer("cdr_days", 0, minimum=0),
        "aggregate_retention_days": keep.integer("aggregate_days", 0, minimum=0),
        "aggregates": ingest.flag("aggregates", True),
        "commands_keep_days": maint.integer(
            "commands_keep_days", defaults.commands_keep_days, minimum=1
        ),
        "live_counts_keep_days": maint.integer(
            "live_counts_keep_days", defaults.live_counts_keep_days, minimum=1
        ),
        "imports_keep_days": maint.integer(
            "imports_keep_days", defaults.imports_keep_days, minimum=1
        ),
        "alerts_keep_days": maint.integer("alerts_keep_days", defaults.alerts_keep_days, minimum=1),
        "auth_failures_keep_days": maint.integer(
            "auth_failures_keep_days", defaults.auth_failures_keep_days, minimum=1
        ),
        "command_ttl_s": cmds.integer("command_ttl_s", defaults.command_ttl_s, minimum=10),
        "max_active_blocks": cmds.integer(
            "max_active_blocks", defaults.max_active_blocks, minimum=1
        ),
        "default_block_ttl_s": cmds.integer(
            "default_block_ttl_s", defaults.default_block_ttl_s, minimum=1
        ),
        "smtp_host": notify.text("smtp_host", defaults.smtp_host),
        "smtp_port": notify.integer("smtp_port", defaults.smtp_port, minimum=1),
        "smtp_from": notify.text("smtp_from", defaults.smtp_from),
        "smtp_starttls": notify.flag("smtp_starttls", defaults.smtp_starttls),
        "smtp_username": notify.text("smtp_username", defaults.smtp_username),
        "smtp_password": notify.text("smtp_password", defaults.smtp_password),
        "smtp_timeout_s": notify.number("smtp_timeout_s", defaults.smtp_timeout_s, minimum=0.1),
        "webhook_timeout_s": notify.number(
            "webhook_timeout_s", defaults.webhook_timeout_s, minimum=0.1
        ),
        "notify_max_attempts": notify.integer(
            "max_attempts", defaults.notify_max_attempts, minimum=1
        ),
        "notify_retry_s": notify.number("retry_s", defaults.notify_retry_s, minimum=0.01),
        "upload_dir": imports.text("upload_dir", defaults.upload_dir),
        "max_upload_bytes": imports.integer(
            "max_upload_mb", defaults.max_upload_bytes >> 20, minimum=1
        )
        << 20,
    }
    for opts in (db, server, maint, live, keep, ingest, cmds, notify, imports):
        opts.finish()
    cdr_days, agg_days = values["cdr_retention_days"], values["aggregate_retention_days"]
    if agg_days and (cdr_days == 0 or agg_days < cdr_days):
        raise ConfigError(
            "retention.aggregate_days",
            f"must be 0 or at least retention.cdr_days, got {agg_days} with cdr_days = {cdr_days}",
            hint="aggregates are kept at least as long as the raw CDRs they summarise",
        )
    if values["default_block_ttl_s"] > MAX_BLOCK_TTL_S:
        raise ConfigError(
            "commands.default_block_ttl_s",
            f"must be at most {MAX_BLOCK_TTL_S} (30 days), got {values['default_block_ttl_s']}",
        )
    if values["smtp_port"] > 65535:
        raise ConfigError("notify.smtp_port", f"must be at most 65535, got {values['smtp_port']}")
    if "@" not in values["smtp_from"]:
        raise ConfigError(
            "notify.smtp_from", f"must be an email address, got {values['smtp_from']!r:.60}"
        )
    if bool(values["smtp_username"]) != bool(values["smtp_password"]):
        raise ConfigError(
            "notify.smtp_password" if values["smtp_username"] else "notify.smtp_username",
            "is required with the other one (give both smtp_username and smtp_password, or none)",
        )
    if values["port"] > 65535:
        raise ConfigError("server.port", f"must be at most 65535, got {values['port']}")
    chosen = url or file_url
    if not chosen:
        raise ConfigError(
            "database.url",
            "is required and missing",
            hint=f"pass --database-url, set {ENV_URL}, or set url under [database]",
        )
    return Settings(database_url=chosen, **values)


def load(
    database_url: str | None = None,
    config_path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the command line, the environment and the config file.

    The config file is optional when a URL is given; when one is named explicitly it must
    exist. Raises `ConfigError` naming the key and the file.
    """
    env = os.environ if env is None else env
    url = database_url or env.get(ENV_URL) or None
    explicit = config_path or env.get(ENV_CONFIG) or None
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    if explicit or path.exists():
        doc = _read_file(path)
        try:
            return _from_table(doc, url)
        except ConfigError as exc:
            raise exc.in_file(str(path)) from None
    if not url:
        raise ConfigError(
            "database.url",
            "no database URL given",
            file=str(path),
            hint=f"pass --database-url, set {ENV_URL}, or create {path} with [database] url",
        )
    return Settings(database_url=url)
