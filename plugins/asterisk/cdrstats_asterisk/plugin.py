"""The `asterisk` plugin: one `[[source]]` reads one CDR store of an Asterisk server.

`store` chooses the store: `csv` (cdr_csv's Master.csv, followed by the csv plugin's
follower), `mysql` (cdr_adaptive_odbc to MariaDB/MySQL), `pgsql` (cdr_pgsql), `sqlite`
(cdr_sqlite3_custom) or `mysql-legacy` (cdr_mysql, Asterisk <= 19, column `calldate`).
Rows become CDRs through the csv plugin's Asterisk mapping (cdrstats_csv), so every store
normalizes the same way. An optional `[source.ami]` table adds live calls over AMI (ami.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import ActionHandler, AuthFailure, LiveEvent, ReadResult, Source
from cdrstats_csv.config import read_mapping
from cdrstats_csv.plugin import COMPRESSED, CsvSource

from .ami import AmiConfig, AmiLive
from .table import STORES, Connection, TableSource

log = get_logger("cdrstats.plugins.asterisk")

DEFAULT_CSV = "/var/log/asterisk/cdr-csv/Master.csv"
DEFAULT_SQLITE = "/var/log/asterisk/master.db"
MAPPING_KEYS = (
    "timezone",
    "usegmtime",
    "trunks",
    "country_code",
    "international_prefix",
    "national_prefix",
    "disposition_map",
)
"""Options handed to the csv plugin's mapping (same meaning as there)."""
OPTIONS: dict[str, tuple[str, ...]] = {
    "common": (
        "store", *MAPPING_KEYS, "src_ip_field", "interval", "chunk_cdrs", "start_at", "ami",
    ),
    "csv": ("path", "columns", "encoding", "pattern", "exclude"),
    "mysql": ("host", "port", "user", "password", "database", "unix_socket", "table",
              "id_column", "lookback", "connect_timeout"),
    "pgsql": ("conninfo", "table", "id_column", "lookback", "connect_timeout"),
    "sqlite": ("path", "table", "id_column", "lookback", "connect_timeout"),
    "ami": ("host", "port", "username", "secret", "snapshot_interval", "ping_interval",
            "reply_timeout", "connect_timeout", "backoff_min", "backoff_max", "auth_failures"),
}  # fmt: skip
"""Every option, by store (`mysql` also stands for `mysql-legacy`); kept in step with the
README by a test."""
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")

_COMMON = """\
# Zone of the stamps Asterisk writes: cdr.conf usegmtime=yes -> usegmtime = true; else an
# IANA name, or "local" (the agent host's zone, the default).
# usegmtime = false
# timezone = "Europe/Paris"
# Peer names that are trunks (from channel names like PJSIP/carrier-00000001): sets
# `trunk` and derives the direction. Without it, the trunk is the peer of dstchannel,
# else of channel.
# trunks = ["carrier"]
# The column (userfield, or one your dialplan fills) holding the caller's IP address.
# src_ip_field = "userfield"
# E.164 normalisation of caller and callee.
# country_code = "33"
# Seconds between polls, CDRs per batch, where to start without a checkpoint.
# interval = 1.0
# chunk_cdrs = 1000
# start_at = "beginning"   # or "end"
# Live calls over the Asterisk Manager Interface (manager.conf user with
# read=call,system,security: security for failed SIP registrations, scanner detection).
# [source.ami]
# host = "127.0.0.1"
# port = 5038
# username = "cdrstats"
# secret = "change-me"
# snapshot_interval = 30.0   # seconds between CoreShowChannels snapshots
# ping_interval = 10.0       # a peer that does not answer a Ping within reply_timeout
# reply_timeout = 10.0       #   is dropped and reconnected
# auth_failures = true       # report failed SIP authentications (InvalidPassword...)
"""

SAMPLES: dict[str, str] = {
    "csv": f"""\
# Asterisk cdr_csv: Master.csv (16, 18 or 21 columns, detected per row), followed across
# rotations. Point `path` at an <accountcode>.csv instead to read one account only.
[[source]]
name = "asterisk-csv"
plugin = "asterisk"
store = "csv"
path = "{DEFAULT_CSV}"
# Force one layout: 16, 18 (loguniqueid+loguserfield) or 21 (newcdrcolumns).
# columns = 21
{_COMMON}""",
    "mysql": """\
# Asterisk cdr_adaptive_odbc (or cdr_odbc) writing the `cdr` table of MariaDB/MySQL.
[[source]]
name = "asterisk-mysql"
plugin = "asterisk"
store = "mysql"
host = "127.0.0.1"
port = 3306
user = "cdrstats"
password = "change-me"
database = "asterisk"
# unix_socket = "/run/mysqld/mysqld.sock"
# table = "cdr"
# Position: by `end` with a lookback window (default), or by an auto-increment column
# you added (ALTER TABLE cdr ADD id BIGINT AUTO_INCREMENT PRIMARY KEY): id_column = "id".
# id_column = "id"
# lookback = 120     # seconds (end) or ids (id_column: default 1000)
""",
    "pgsql": """\
# Asterisk cdr_pgsql writing the `cdr` table of PostgreSQL.
[[source]]
name = "asterisk-pgsql"
plugin = "asterisk"
store = "pgsql"
conninfo = "postgresql://cdrstats@127.0.0.1/asterisk"
# table = "cdr"
# id_column = "id"   # after ALTER TABLE cdr ADD id bigserial PRIMARY KEY
# lookback = 120
""",
    "sqlite": f"""\
# Asterisk cdr_sqlite3_custom: master.db, table `cdr` with its AcctId INTEGER PRIMARY KEY.
[[source]]
name = "asterisk-sqlite"
plugin = "asterisk"
store = "sqlite"
path = "{DEFAULT_SQLITE}"
# table = "cdr"
# id_column = "AcctId"
""",
    "mysql-legacy": """\
# cdr_mysql (Asterisk <= 19): the `cdr` table with `calldate` instead of start/answer/end.
[[source]]
name = "asterisk-legacy"
plugin = "asterisk"
store = "mysql-legacy"
host = "127.0.0.1"
user = "cdrstats"
password = "change-me"
database = "asteriskcdrdb"
# Strongly advised here (rows are ordered by call start, written at call end):
# id_column = "acctid"
# lookback = 14400   # without id_column: the longest call, in seconds
""",
}

SAMPLE_CONFIG = (
    "# Asterisk: one [[source]] per CDR store. The csv store is shown in full; the other\n"
    "# stores take the same common options.\n"
    + SAMPLES["csv"]
    + "".join(
        "\n" + "\n".join("# " + line if line else "#" for line in SAMPLES[k].splitlines()) + "\n"
        for k in ("mysql", "pgsql", "sqlite", "mysql-legacy")
    )
)


def _identifier(opts: Options, key: str, default: str) -> str:
    value: str = opts.text(key, default)
    if not _IDENT.match(value):
        raise opts.error(key, f"must be a plain SQL name (letters, digits, _), got {value!r:.40}")
    return value


class AsteriskPlugin:
    name = "asterisk"
    description = (
        "Asterisk CDRs from cdr_csv Master.csv or the cdr table (MariaDB/MySQL, PostgreSQL, "
        "SQLite, legacy cdr_mysql), live calls over AMI"
    )
    sample_config = SAMPLE_CONFIG

    def create_source(self, name: str, options: Mapping[str, Any]) -> AsteriskSource:
        table = {k: v for k, v in options.items() if k not in ("plugin", "name")}
        store = table.get("store")
        if store is None:
            raise ConfigError("store", "is required", hint=f"one of csv, {', '.join(STORES)}")
        if store not in ("csv", *STORES):
            raise ConfigError(
                "store", f"must be one of csv, {', '.join(STORES)}; got {store!r:.40}"
            )
        ami_table = table.pop("ami", None)
        if ami_table is not None and not isinstance(ami_table, dict):
            raise ConfigError("ami", "must be a table ([source.ami])")
        src_ip_field = table.pop("src_ip_field", None)
        if src_ip_field is not None and (not isinstance(src_ip_field, str) or not src_ip_field):
            raise ConfigError("src_ip_field", f"must be a column name, got {src_ip_field!r:.40}")
        mapping_table: dict[str, Any] = {"preset": "asterisk"}
        for key in MAPPING_KEYS + (("columns", "encoding") if store == "csv" else ()):
            if key in table:
                mapping_table[key] = table.pop(key)
        if store == "csv" and src_ip_field is not None:
            mapping_table["fields"] = {"src_ip": src_ip_field}
        try:
            config, mopts = read_mapping(mapping_table)
            mopts.finish()
        except ConfigError as exc:
            if exc.key == "fields.src_ip":
                raise ConfigError("src_ip_field", exc.problem, hint=exc.hint) from None
            raise
        zone = config.mapping.spec.timezone
        ami: AmiConfig | None = None
        if ami_table is not None:
            ami = AmiConfig.from_options(Options(ami_table, "ami"), config.mapping.spec.trunks)
        opts = Options({k: v for k, v in table.items() if k != "store"})
        interval = opts.number("interval", 1.0, minimum=0.001)
        chunk = opts.integer("chunk_cdrs", 1000, minimum=1)
        start_at = opts.choice("start_at", ("beginning", "end"), "beginning")
        reader: Source
        if store == "csv":
            path = opts.text("path", DEFAULT_CSV)
            if not path.strip():
                raise ConfigError("path", "must not be empty")
            pattern = opts.text("pattern", config.pattern)
            exclude = opts.text_list("exclude", COMPRESSED)
            opts.finish()
            reader = CsvSource(
                name,
                config.mapping,
                path=path,
                pattern=pattern,
                exclude=exclude,
                interval=interval,
                chunk_cdrs=chunk,
                start_at=start_at,
            )
        else:
            conn = self._connection(store, opts)
            id_default = "AcctId" if store == "sqlite" else None
            id_column = opts.text("id_column", id_default)
            if id_column is not None and not _IDENT.match(id_column):
                raise opts.error("id_column", f"must be a plain SQL name, got {id_column!r:.40}")
            kind = "id" if id_column else "time"
            cursor_column = id_column or ("calldate" if store == "mysql-legacy" else "end")
            default_lookback = 1000 if kind == "id" else (14400 if store == "mysql-legacy" else 120)
            lookback = opts.number("lookback", default_lookback, minimum=0)
            opts.finish()
            reader = TableSource(
                name,
                conn,
                config.mapping,
                cursor_column=cursor_column,
                kind=kind,
                lookback=lookback,
                zone=zone,
                src_ip_field=src_ip_field,
                interval=interval,
                chunk_cdrs=chunk,
                start_at=start_at,
            )
        if ami is not None:
            return AsteriskLiveSource(name, store, reader, ami)
        return AsteriskSource(name, store, reader, ami)

    @staticmethod
    def _connection(store: str, opts: Options) -> Connection:
        table = _identifier(opts, "table", "cdr")
        timeout = opts.number("connect_timeout", 10.0, minimum=0.1)
        if store == "sqlite":
            path = opts.text("path", DEFAULT_SQLITE)
            return Connection(store, table, path=path, connect_timeout=timeout)
        if store == "pgsql":
            conninfo = opts.text("conninfo")
            try:
                from psycopg.conninfo import conninfo_to_dict

                conninfo_to_dict(conninfo)
            except Exception as exc:
                raise opts.error(
                    "conninfo",
                    f"is not a PostgreSQL connection string: {exc}",
                    hint="e.g. postgresql://user@host/dbname or 'host=... dbname=...'",
                ) from None
            return Connection(store, table, conninfo=conninfo, connect_timeout=timeout)
        return Connection(
            store,
            table,
            host=opts.text("host", "127.0.0.1"),
            port=opts.integer("port", 3306, minimum=1),
            user=opts.text("user", "asterisk"),
            password=opts.text("password", ""),
            database=opts.text(
                "database", "asteriskcdrdb" if store == "mysql-legacy" else "asterisk"
            ),
            unix_socket=opts.text("unix_socket", None),
            connect_timeout=timeout,
        )


class AsteriskSource:
    """A CDR store reader (CsvSource or TableSource), plus AMI live calls when configured."""

    def __init__(self, name: str, store: str, reader: Source, ami: AmiConfig | None) -> None:
        self.name = name
        self.store = store
        self.reader = reader
        self.ami = ami

    async def check(self) -> None:
        """The CDR store must be reachable (SourceError otherwise). The AMI login is tried
        too, but a failure is only logged (`ami_check_failed`, error level): the agent checks
        a source before each read, and live calls being down must not stop CDRs."""
        await self.reader.check()
        if self.ami is not None:
            try:
                await AmiLive(self.name, self.ami).check()
            except SourceError as exc:
                log.error("ami_check_failed", source=self.name, error=str(exc))

    def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        return self.reader.read(checkpoint)

    def actions(self) -> Mapping[str, ActionHandler]:
        # Asterisk has no runtime blocklist: block_ip goes to the agent's firewall backend.
        return {}

    async def close(self) -> None:
        await self.reader.close()


class AsteriskLiveSource(AsteriskSource):
    """A source with a `[source.ami]` table: it also streams live calls (`live()`)."""

    ami: AmiConfig

    def live(self) -> AsyncIterator[LiveEvent | AuthFailure]:
        return AmiLive(self.name, self.ami).events()
