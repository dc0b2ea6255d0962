"""The `freeswitch` plugin: every CDR store FreeSWITCH writes, and live calls over the ESL.

One `[[source]]` table reads one store, chosen by `store`:

* `csv`: mod_cdr_csv files (csv_source.py)
* `sqlite`: mod_cdr_sqlite database (sqlite_source.py)
* `pg`: mod_cdr_pg_csv PostgreSQL table (pg_source.py)
* `http`: mod_json_cdr / mod_xml_cdr posts (http_source.py)

An `esl` table adds live calls from the Event Socket (esl.py). FreeSWITCH has no runtime
blocklist, so `actions()` declares no `block_ip`: the agent's host firewall backend blocks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from cdrstats_agent.errors import ConfigError
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import ActionHandler, AuthFailure, LiveEvent, ReadResult
from cdrstats_csv.records import Template

from .csv_source import TEMPLATES, CsvSource
from .esl import EslLive, EslSettings
from .http_source import HttpSource
from .pg_source import PgSource
from .sqlite_source import SqliteSource
from .variables import LEGS, Settings

STORES = ("csv", "sqlite", "pg", "http")
COMPRESSED = ["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4"]

COMMON = """\
# Zone of the switch's local *_stamp values (epoch fields are used when present);
# default: the agent host's zone.
# timezone = "Europe/Paris"
# "a": one CDR per call, keyed by the A leg's uuid (B legs skipped); "ab": every leg.
# legs = "a"
# E.164 normalisation of caller and callee.
# country_code = "33"
# international_prefix = "00"
# national_prefix = "0"
"""

ESL = """\
# Live calls from the Event Socket (event_socket.conf.xml); leave out for no live calls.
# [source.esl]
# host = "127.0.0.1"
# port = 8021
# password = "ClueCon"
# snapshot_s = 30.0          # `show calls` resynchronisation period
# command_timeout_s = 5.0
# connect_timeout_s = 5.0
# backoff_max_s = 30.0
# auth_failures = true       # failed registrations (CUSTOM sofia::register_failure)
"""

SAMPLE_CSV = f"""\
# FreeSWITCH mod_cdr_csv (cdr_csv.conf.xml): Master.csv and its rotations.
[[source]]
name = "fs-csv"
plugin = "freeswitch"
store = "csv"
# The cdr-csv directory (or one file).
path = "/var/log/freeswitch/cdr-csv"
# "example" (vanilla default-template), "default" (built into mod_cdr_csv), or the
# template text itself: '"${{uuid}}","${{start_epoch}}",...'
template = "example"
# Files followed in the directory; "*.csv*" also reads the per-accountcode files (a CDR
# found in two files is sent once).
# pattern = "Master.csv*"
# exclude = {COMPRESSED!r}
# A '"' inside a value: read when the line can be cut only one way ("recover"), or "reject".
# broken_quotes = "recover"
# encoding = "utf-8"
# start_at = "beginning"     # or "end": skip what the files hold at the very first start
# interval = 1.0
# chunk_cdrs = 1000
{COMMON}{ESL}"""

SAMPLE_SQLITE = """\
# FreeSWITCH mod_cdr_sqlite (cdr_sqlite.conf.xml): ${db_dir}/cdr.db, table cdr.
# [[source]]
# name = "fs-sqlite"
# plugin = "freeswitch"
# store = "sqlite"
# path = "/var/lib/freeswitch/db/cdr.db"
# table = "cdr"
# busy_timeout_s = 5.0
# interval = 1.0
# chunk_cdrs = 1000
"""

SAMPLE_PG = """\
# FreeSWITCH mod_cdr_pg_csv (cdr_pg_csv.conf.xml): a PostgreSQL table.
# [[source]]
# name = "fs-pg"
# plugin = "freeswitch"
# store = "pg"
# dsn = "host=localhost dbname=cdr user=cdrstats"
# table = "cdr"
# order_column = "id"        # an increasing column (id serial primary key)
# gap_wait_s = 10.0          # how long a hole in the ids may be an open transaction
# interval = 1.0
# chunk_cdrs = 1000
"""

SAMPLE_HTTP = """\
# FreeSWITCH mod_json_cdr / mod_xml_cdr: set url = "http://127.0.0.1:8089/cdr" in
# json_cdr.conf.xml (any `encode`); the agent answers 2xx once the CDR is in its spool.
# [[source]]
# name = "fs-json"
# plugin = "freeswitch"
# store = "http"
# listen = "127.0.0.1"
# port = 8089
# url_path = "/cdr"
# credentials = "user:password"   # json_cdr.conf `cred`, HTTP basic
# decode_values = true            # json_cdr.conf encode-values (default true)
# reply_timeout_s = 10.0
"""

SAMPLE_CONFIG = "\n".join((SAMPLE_CSV, SAMPLE_SQLITE, SAMPLE_PG, SAMPLE_HTTP))
SAMPLES = {"csv": SAMPLE_CSV, "sqlite": SAMPLE_SQLITE, "pg": SAMPLE_PG, "http": SAMPLE_HTTP}

StoreSource = CsvSource | SqliteSource | PgSource | HttpSource


class FreeswitchSource:
    """One FreeSWITCH store (and, with `EslLive`, its live calls)."""

    def __init__(self, store: StoreSource) -> None:
        self.store = store
        self.name = store.name

    async def check(self) -> None:
        await self.store.check()

    def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        return self.store.read(checkpoint)

    async def close(self) -> None:
        await self.store.close()

    def actions(self) -> Mapping[str, ActionHandler]:
        """None: FreeSWITCH has no runtime blocklist (see README "Blocking an IP")."""
        return {}


class FreeswitchLiveSource(FreeswitchSource):
    def __init__(self, store: StoreSource, esl: EslLive) -> None:
        super().__init__(store)
        self.esl = esl

    async def live(self) -> AsyncGenerator[LiveEvent | AuthFailure, None]:
        async for event in self.esl.events():
            yield event


def _settings(opts: Options) -> Settings:
    zone_name = opts.text("timezone", None)
    zone = None if zone_name in (None, "local") else opts.timezone("timezone")
    legs = opts.choice("legs", LEGS, "a")
    cc = opts.text("country_code", None)
    if cc is not None:
        cc = cc.lstrip("+")
        if not (cc.isdigit() and 1 <= len(cc) <= 3 and not cc.startswith("0")):
            raise opts.error(
                "country_code", f'must be a country calling code such as "33", got {cc!r}'
            )
    prefixes: dict[str, str] = {}
    for key, default in (("international_prefix", "00"), ("national_prefix", "0")):
        value = opts.text(key, default)
        if value and not value.isdigit():
            raise opts.error(key, f"must be digits (or empty), got {value!r:.20}")
        prefixes[key] = value
    return Settings(
        timezone=zone,
        legs=legs,
        country_code=cc,
        international_prefix=prefixes["international_prefix"],
        national_prefix=prefixes["national_prefix"],
    )


def _template(opts: Options) -> Template:
    text = opts.text("template", "example")
    text = TEMPLATES.get(text, text)
    if "${" not in text:
        raise opts.error(
            "template",
            f"must be example, default or a template text with ${{variables}}, got {text!r:.60}",
        )
    try:
        template = Template.parse(text)
    except ValueError as exc:
        raise opts.error("template", str(exc)) from None
    if "uuid" not in template.names:
        raise opts.error(
            "template",
            "has no ${uuid}: it is the natural key of a FreeSWITCH CDR",
            hint="add ${uuid} to the template in cdr_csv.conf.xml",
        )
    return template


def _esl(opts: Options) -> EslSettings | None:
    table = opts.table("esl", None)
    if table is None:
        return None
    esl = Options(table, "esl")
    settings = EslSettings(
        host=esl.text("host", "127.0.0.1"),
        port=esl.integer("port", 8021, minimum=1),
        password=esl.text("password", "ClueCon"),
        snapshot_s=esl.number("snapshot_s", 30.0, minimum=0.05),
        command_timeout_s=esl.number("command_timeout_s", 5.0, minimum=0.05),
        connect_timeout_s=esl.number("connect_timeout_s", 5.0, minimum=0.05),
        backoff_max_s=esl.number("backoff_max_s", 30.0, minimum=0.05),
        auth_failures=esl.flag("auth_failures", True),
    )
    esl.finish()
    if ":" in settings.host:
        raise ConfigError(
            "esl.host",
            f"must be an IPv4 address or a host name, got {settings.host!r}",
            hint="greenswitch connects over IPv4 only; FreeSWITCH's listen-ip :: accepts IPv4",
        )
    if settings.port > 65535:
        raise ConfigError("esl.port", f"must be a TCP port, got {settings.port}")
    return settings


class FreeswitchPlugin:
    name = "freeswitch"
    description = (
        "FreeSWITCH: mod_cdr_csv files, mod_cdr_sqlite, mod_cdr_pg_csv, mod_json_cdr/mod_xml_cdr "
        "posts; live calls over the Event Socket"
    )
    sample_config = SAMPLE_CONFIG

    def create_source(self, name: str, options: Mapping[str, Any]) -> FreeswitchSource:
        table = {k: v for k, v in options.items() if k not in ("plugin", "name")}
        if isinstance(table.get("country_code"), int) and not isinstance(
            table["country_code"], bool
        ):
            table["country_code"] = str(table["country_code"])
        opts = Options(table)
        store_kind = opts.choice("store", STORES)
        settings = _settings(opts)
        esl = _esl(opts)
        store: StoreSource
        if store_kind in ("csv", "sqlite", "pg"):
            interval = opts.number("interval", 1.0, minimum=0.001)
            chunk = opts.integer("chunk_cdrs", 1000, minimum=1)
        if store_kind == "csv":
            path = opts.text("path", "/var/log/freeswitch/cdr-csv")
            pattern = opts.text("pattern", "Master.csv*")
            if not pattern or "/" in pattern:
                raise opts.error("pattern", f"must be a file name pattern, got {pattern!r}")
            store = CsvSource(
                name,
                path=path,
                template=_template(opts),
                settings=settings,
                pattern=pattern,
                exclude=opts.text_list("exclude", COMPRESSED),
                broken_quotes=opts.choice("broken_quotes", ("recover", "reject"), "recover"),
                encoding=_encoding(opts),
                interval=interval,
                chunk_cdrs=chunk,
                start_at=opts.choice("start_at", ("beginning", "end"), "beginning"),
            )
        elif store_kind == "sqlite":
            store = SqliteSource(
                name,
                path=opts.text("path", "/var/lib/freeswitch/db/cdr.db"),
                table=opts.text("table", "cdr"),
                settings=settings,
                interval=interval,
                chunk_cdrs=chunk,
                busy_timeout_s=opts.number("busy_timeout_s", 5.0, minimum=0.0),
            )
        elif store_kind == "pg":
            store = PgSource(
                name,
                dsn=opts.text("dsn"),
                table=opts.text("table", "cdr"),
                order_column=opts.text("order_column", "id"),
                settings=settings,
                interval=interval,
                chunk_cdrs=chunk,
                gap_wait_s=opts.number("gap_wait_s", 10.0, minimum=0.0),
            )
        else:
            port = opts.integer("port", 8089, minimum=0)
            if port > 65535:
                raise opts.error("port", f"must be a TCP port, got {port}")
            url_path = opts.text("url_path", "/cdr")
            if not url_path.startswith("/"):
                raise opts.error("url_path", f"must start with '/', got {url_path!r}")
            credentials = opts.text("credentials", None)
            if credentials is not None and ":" not in credentials:
                raise opts.error("credentials", "must be user:password (json_cdr.conf `cred`)")
            store = HttpSource(
                name,
                listen=opts.text("listen", "127.0.0.1"),
                port=port,
                path=url_path,
                credentials=credentials,
                decode_values=opts.flag("decode_values", True),
                settings=settings,
                reply_timeout_s=opts.number("reply_timeout_s", 10.0, minimum=0.01),
            )
        opts.finish()
        if esl is not None:
            return FreeswitchLiveSource(store, EslLive(name, esl))
        return FreeswitchSource(store)


def _encoding(opts: Options) -> str:
    import codecs

    encoding: str = opts.text("encoding", "utf-8")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise opts.error("encoding", f"unknown encoding {encoding!r}", hint="e.g. utf-8") from None
    if '",\n'.encode(encoding, errors="replace") != b'",\n':
        raise opts.error("encoding", f"{encoding!r} is not ASCII-compatible")
    return encoding
