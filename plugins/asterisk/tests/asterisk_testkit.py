"""Helpers for the asterisk plugin tests: rows as Asterisk writes them, the real schemas on
the real MariaDB / PostgreSQL servers and SQLite files, and a loop that drives `read()`.

The AMI peer is in asterisk_ami_testkit.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult
from cdrstats_asterisk.plugin import AsteriskPlugin, AsteriskSource

REPO = Path(__file__).resolve().parents[3]
REFERENCE = (REPO / "../shared/reference/asterisk").resolve()

COLUMNS_21 = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield", "peeraccount", "linkedid", "sequence",
)  # fmt: skip
"""cdr_csv's columns with loguniqueid, loguserfield and newcdrcolumns (the csv order)."""

SQLITE_CUSTOM_COLUMNS = (
    "calldate", "clid", "dcontext", "channel", "dstchannel", "lastapp", "lastdata", "duration",
    "billsec", "disposition", "amaflags", "accountcode", "uniqueid", "userfield", "test",
)  # fmt: skip
"""The `columns` of the cdr_sqlite3_custom.conf sample (no src, dst, answer or end)."""

LEGACY_MYSQL_SCHEMA = """
CREATE TABLE cdr (
  calldate datetime NOT NULL default '0000-00-00 00:00:00',
  clid varchar(80) NOT NULL default '',
  src varchar(80) NOT NULL default '',
  dst varchar(80) NOT NULL default '',
  dcontext varchar(80) NOT NULL default '',
  channel varchar(80) NOT NULL default '',
  dstchannel varchar(80) NOT NULL default '',
  lastapp varchar(80) NOT NULL default '',
  lastdata varchar(80) NOT NULL default '',
  duration int(11) NOT NULL default '0',
  billsec int(11) NOT NULL default '0',
  disposition varchar(45) NOT NULL default '',
  amaflags int(11) NOT NULL default '0',
  accountcode varchar(20) NOT NULL default '',
  uniqueid varchar(32) NOT NULL default '',
  userfield varchar(255) NOT NULL default '',
  KEY calldate (calldate)
) DEFAULT CHARSET=utf8mb4
"""
"""The table cdr_mysql (Asterisk <= 19) wrote to: `calldate` is the call's start."""


def row(uniqueid: str, **values: Any) -> dict[str, Any]:
    """A 21-column CDR row with plausible defaults; `values` override columns."""
    base: dict[str, Any] = {
        "accountcode": "acme",
        "src": "1000",
        "dst": "0612345678",
        "dcontext": "from-internal",
        "clid": '"Alice" <1000>',
        "channel": f"PJSIP/1000-{abs(hash(uniqueid)) % 16**8:08x}",
        "dstchannel": "PJSIP/carrier-0000000a",
        "lastapp": "Dial",
        "lastdata": "PJSIP/0612345678@carrier,60",
        "start": "2026-03-02 10:00:00",
        "answer": "2026-03-02 10:00:05",
        "end": "2026-03-02 10:01:05",
        "duration": 65,
        "billsec": 60,
        "disposition": "ANSWERED",
        "amaflags": "DOCUMENTATION",
        "uniqueid": uniqueid,
        "userfield": "",
        "peeraccount": "",
        "linkedid": uniqueid,
        "sequence": 1,
    }
    unknown = set(values) - set(base)
    if unknown:
        raise KeyError(f"unknown columns {unknown}")
    base.update(values)
    return base


def csv_line(values: Mapping[str, Any], columns: Sequence[str] = COLUMNS_21) -> str:
    """One Master.csv line as cdr_csv writes it: strings quoted (quotes doubled), duration and
    billsec bare, an unset date an empty bare field."""
    out = []
    for name in columns:
        value = values[name]
        if name in ("duration", "billsec"):
            out.append(str(value))
        elif name in ("start", "answer", "end") and not value:
            out.append("")
        else:
            out.append('"' + str(value).replace('"', '""') + '"')
    return ",".join(out) + "\n"


def make_source(options: Mapping[str, Any], name: str = "pbx") -> AsteriskSource:
    return AsteriskPlugin().create_source(name, {"interval": 0.01, **options})


@dataclass
class Drain:
    """Everything a `read()` yielded, and the last checkpoint."""

    results: list[ReadResult] = field(default_factory=list)

    @property
    def cdrs(self) -> list[CDR]:
        return [c for r in self.results for c in r.cdrs]

    @property
    def rejected(self) -> list[Any]:
        return [x for r in self.results for x in r.rejected]

    @property
    def checkpoint(self) -> str | None:
        return self.results[-1].checkpoint if self.results else None


async def drain(
    source: AsteriskSource,
    checkpoint: str | None,
    *,
    want: int,
    settle: float = 0.3,
    deadline_s: float = 20.0,
) -> Drain:
    """Read until `want` CDRs+rejects came, then `settle` seconds more (to catch doubles)."""
    out = Drain()
    agen = source.read(checkpoint)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    quiet_until: float | None = None
    pending: asyncio.Future[ReadResult] | None = None
    try:
        while True:
            now = loop.time()
            if quiet_until is None and len(out.cdrs) + len(out.rejected) >= want:
                quiet_until = now + settle
            if quiet_until is not None and now >= quiet_until:
                break
            if now >= deadline:
                raise AssertionError(
                    f"read() gave {len(out.cdrs)} CDRs and {len(out.rejected)} rejects, "
                    f"wanted {want}"
                )
            if pending is None:
                pending = asyncio.ensure_future(anext(agen))
            limit = (quiet_until if quiet_until is not None else deadline) - now
            done, _ = await asyncio.wait({pending}, timeout=limit)
            if pending in done:
                out.results.append(pending.result())
                pending = None
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()
    return out


# --- databases -------------------------------------------------------------------------


def sql_statements(path: Path) -> list[str]:
    """The statements of a reference .sql file, without comments and BEGIN/COMMIT."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.strip().startswith("--")
    )
    out = []
    for stmt in text.split(";"):
        stmt = stmt.strip()
        if stmt and stmt.upper() not in ("BEGIN", "COMMIT"):
            out.append(stmt)
    return out


MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


def _mysql_admin() -> Any:
    return pymysql.connect(**MYSQL, autocommit=True, connect_timeout=5)


@dataclass
class MySQLDatabase:
    name: str

    def connect(self) -> Any:
        return pymysql.connect(
            **MYSQL,
            database=self.name,
            autocommit=True,
            charset="utf8mb4",
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)

    def insert(self, rows: Sequence[Mapping[str, Any]], table: str = "cdr") -> None:
        if not rows:
            return
        columns = list(rows[0])
        names = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join(["%s"] * len(columns))
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO `{table}` ({names}) VALUES ({marks})",
                [
                    [
                        r[c] if r[c] != "" or c not in ("start", "answer", "end") else None
                        for c in columns
                    ]
                    for r in rows
                ],
            )

    def options(self, **extra: Any) -> dict[str, Any]:
        return {
            "store": "mysql",
            "host": MYSQL["host"],
            "port": MYSQL["port"],
            "user": MYSQL["user"],
            "password": MYSQL["password"],
            "database": self.name,
            **extra,
        }


@contextlib.contextmanager
def mysql_database() -> Iterator[MySQLDatabase]:
    """A scratch MariaDB database, dropped afterwards; skips (fails under CI) without one."""
    try:
        admin = _mysql_admin()
    except pymysql.err.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"MariaDB not reachable on 127.0.0.1:3306: {exc}")
    name = f"cdrstats_ast_{os.getpid()}_{secrets.token_hex(3)}"
    with contextlib.closing(admin), admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield MySQLDatabase(name)
    finally:
        with contextlib.closing(_mysql_admin()) as admin2, admin2.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def create_reference_mysql_cdr(db: MySQLDatabase) -> None:
    """The cdr table exactly as asterisk/contrib/realtime/mysql creates it."""
    for stmt in sql_statements(REFERENCE / "contrib_realtime_mysql_cdr.sql"):
        db.execute(stmt)


def create_sqlite_custom(path: Path, columns: Sequence[str] = SQLITE_CUSTOM_COLUMNS) -> None:
    """master.db as cdr_sqlite3_custom creates it: `AcctId INTEGER PRIMARY KEY` + columns."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, {', '.join(columns)})")
        db.commit()


def sqlite_insert(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as the sample `values` template writes them: every value a quoted string."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        for r in rows:
            columns = list(r)
            db.execute(
                f"INSERT INTO cdr ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [str(r[c]) for c in columns],
            )
        db.commit()


def sqlite_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """A 21-column row in the cdr_sqlite3_custom sample's columns (calldate = start)."""
    out = {c: r.get(c, "") for c in SQLITE_CUSTOM_COLUMNS}
    out["calldate"] = r["start"]
    out["test"] = ""
    return out


async def aiter_n(agen: AsyncIterator[Any], n: int, deadline_s: float = 10.0) -> list[Any]:
    out: list[Any] = []

    async def take() -> None:
        async for item in agen:
            out.append(item)
            if len(out) >= n:
                return

    async with asyncio.timeout(deadline_s):
        await take()
    return out


def keys(cdrs: Sequence[CDR]) -> list[str]:
    return sorted(c.key for c in cdrs)
