"""Reading Asterisk's `cdr` table from MariaDB/MySQL, PostgreSQL or SQLite.

One `Dialect` per database (connect, quote, stream a query); one `TableSource` does the rest:
it re-reads the lookback window of the table every `interval` seconds, admits each row once
through a `Window` (window.py), maps it with the csv plugin's Asterisk mapping, and yields
`ReadResult`s whose checkpoint is the window's JSON.

Blocking driver calls run in one worker thread per `read()` (so that a cancelled fetch and
the close that follows never run at once on a connection); one connection per `read()`,
closed when the reader stops. Errors are raised (the agent restarts the source from its last
checkpoint); `SourceError` for what an operator must fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Protocol

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected
from cdrstats_csv.mapping import FieldInput
from cdrstats_csv.mapping import Mapping as CsvMapping
from cdrstats_csv.stamps import local_zone

from .window import Value, Window, digest

log = get_logger("cdrstats.plugins.asterisk")

_Runner = Callable[..., "asyncio.Future[Any]"]
"""Runs a blocking call in the reader's worker thread."""
STORES = ("mysql", "pgsql", "sqlite", "mysql-legacy")
LOGGED_REJECTS_PER_CHUNK = 20
DATE_COLUMNS = frozenset({"start", "answer", "end", "calldate"})
FUTURE = timedelta(days=1)
"""A time-cursor value further ahead than this is rejected and does not move the window."""


class Cursor(Protocol):
    def fetchmany(self, size: int = ...) -> Sequence[Sequence[Any]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Connection:
    """Where the table is: the driver options of one store."""

    store: str
    table: str
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "asterisk"
    password: str = ""
    database: str = "asterisk"
    unix_socket: str | None = None
    conninfo: str = ""
    path: str = ""
    connect_timeout: float = 10.0

    def describe(self) -> str:
        if self.store == "sqlite":
            return f"sqlite {self.path} table {self.table}"
        if self.store == "pgsql":
            return f"postgresql {_hide_password(self.conninfo)} table {self.table}"
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"mysql {self.user}@{where}/{self.database} table {self.table}"


def _hide_password(conninfo: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(conninfo)
        if "password" in params:
            params["password"] = "***"
        return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})
    except Exception:
        return "(conninfo)"


class Dialect:
    """The database-specific part: connecting, quoting, parameters, streaming."""

    placeholder = "%s"

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def connect(self) -> Any:
        raise NotImplementedError

    def quote(self, name: str) -> str:
        return ".".join(f'"{part}"' for part in name.split("."))

    def param(self, value: Value) -> Any:
        return value

    def stream(self, db: Any, sql: str, params: tuple[Any, ...]) -> tuple[Cursor, list[str]]:
        cur = db.cursor()
        try:
            cur.execute(sql, params)
        except BaseException:
            with contextlib.suppress(Exception):
                cur.close()
            raise
        return cur, [d[0] for d in cur.description]

    def end_stream(self, db: Any, cur: Cursor) -> None:
        cur.close()

    def indexed(self, db: Any, table: str, column: str) -> bool | None:
        """Whether an index starts with `column` (None: cannot tell)."""
        return None

    def scalar(self, db: Any, sql: str) -> Any:
        cur = db.cursor()
        try:
            cur.execute(sql)
            row = cur.fetchone()
            return None if row is None else row[0]
        finally:
            cur.close()


class MySQLDialect(Dialect):
    def connect(self) -> Any:
        import pymysql
        import pymysql.converters
        from pymysql.constants import FIELD_TYPE

        # Values stay text as the server sends them: the mapping reads text (as from
        # Master.csv), so decoding dates and numbers only to format them again is waste.
        conv = dict(pymysql.converters.conversions)
        for field_type in (
            FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP, FIELD_TYPE.DATE, FIELD_TYPE.TINY,
            FIELD_TYPE.SHORT, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG, FIELD_TYPE.INT24,
            FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL,
        ):  # fmt: skip
            conv[field_type] = str
        c = self.conn
        try:
            return pymysql.connect(
                conv=conv,
                host=c.host,
                port=c.port,
                user=c.user,
                password=c.password,
                database=c.database,
                unix_socket=c.unix_socket,
                charset="utf8mb4",
                autocommit=True,  # each poll sees what is committed (no REPEATABLE READ snapshot)
                connect_timeout=max(1, int(c.connect_timeout)),
            )
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            if code in (1044, 1045, 1049):  # access denied, unknown database
                raise SourceError(f"{c.describe()}: {exc.args[1]}") from None
            raise

    def quote(self, name: str) -> str:
        return ".".join(f"`{part}`" for part in name.split("."))

    def indexed(self, db: Any, table: str, column: str) -> bool | None:
        cur = db.cursor()
        try:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA ="
                " DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s AND SEQ_IN_INDEX = 1",
                (table.split(".")[-1], column),
            )
            row = cur.fetchone()
            return bool(row and int(row[0]))
        finally:
            cur.close()

    def stream(self, db: Any, sql: str, params: tuple[Any, ...]) -> tuple[Cursor, list[str]]:
        import pymysql.cursors

        cur = db.cursor(pymysql.cursors.SSCursor)  # rows stream from the server
        try:
            cur.execute(sql, params)
        except BaseException:
            with contextlib.suppress(Exception):
                cur.close()
            raise
        return cur, [d[0] for d in cur.description]


class PostgresDialect(Dialect):
    def connect(self) -> Any:
        import psycopg
        from psycopg.types.string import TextLoader

        try:
            timeout = max(1, int(self.conn.connect_timeout))
            db = psycopg.connect(self.conn.conninfo, connect_timeout=timeout)
            # `timestamp without time zone` as text, as cdr_pgsql wrote it (see MySQLDialect)
            db.adapters.register_loader("timestamp", TextLoader)
            return db
        except psycopg.OperationalError as exc:
            text = str(exc)
            if "password authentication failed" in text or "does not exist" in text:
                raise SourceError(f"{self.conn.describe()}: {text.strip()}") from None
            raise

    def stream(self, db: Any, sql: str, params: tuple[Any, ...]) -> tuple[Cursor, list[str]]:
        cur = db.cursor(name="cdrstats_asterisk")  # a server-side cursor: rows stream
        cur.itersize = 2000
        try:
            cur.execute(sql, params)
        except BaseException:
            with contextlib.suppress(Exception):
                cur.close()
                db.rollback()
            raise
        return cur, [d[0] for d in cur.description]

    def end_stream(self, db: Any, cur: Cursor) -> None:
        cur.close()
        db.commit()  # ends the transaction: the next poll sees newer commits

    def scalar(self, db: Any, sql: str) -> Any:
        value = super().scalar(db, sql)
        db.commit()
        return value

    def indexed(self, db: Any, table: str, column: str) -> bool | None:
        cur = db.cursor()
        try:
            cur.execute(
                "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND a.attname = %s",
                (table, column),
            )
            row = cur.fetchone()
            return bool(row and int(row[0]))
        finally:
            cur.close()
            db.commit()


class SQLiteDialect(Dialect):
    placeholder = "?"

    def connect(self) -> Any:
        path = self.conn.path
        try:
            db = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                check_same_thread=False,  # used from worker threads, one at a time
                isolation_level=None,
                timeout=max(1.0, self.conn.connect_timeout),
            )
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.OperationalError as exc:
            raise SourceError(f"{self.conn.describe()}: {exc}") from None
        return db

    def param(self, value: Value) -> Any:
        # cdr_sqlite3_custom stores what its `values` template gives: text stamps.
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        return value


DIALECTS: dict[str, type[Dialect]] = {
    "mysql": MySQLDialect,
    "mysql-legacy": MySQLDialect,
    "pgsql": PostgresDialect,
    "sqlite": SQLiteDialect,
}


def _unset_or(value: str) -> str:
    return "" if value[:10] == "0000-00-00" else value


def _bytes(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace")


def _decimal(value: Decimal) -> str:
    return str(value.normalize()) if value == value.to_integral() else str(value)


_TEXT: dict[type, Callable[[Any], str]] = {
    str: _unset_or,
    int: str,
    datetime: lambda v: v.isoformat(" "),
    date: lambda v: v.isoformat(),
    type(None): lambda v: "",
    bytes: _bytes,
    bytearray: _bytes,
    memoryview: _bytes,
    Decimal: _decimal,
    float: str,
}


def text_value(value: Any) -> str:
    """A column value as cdr_csv would write it (dates `YYYY-MM-DD HH:MM:SS`, unset empty)."""
    convert = _TEXT.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, str):
        return _unset_or(value)
    if isinstance(value, datetime):
        return value.isoformat(" ")
    return str(value)


def cursor_value(value: Any, kind: str) -> Value:
    """The cursor column's value as an int (id) or datetime (time); ValueError if neither."""
    if kind == "id":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, (str, Decimal)) and str(value).strip().isdigit():
            return int(str(value).strip())
        raise ValueError(f"{value!r:.40} is not an integer id")
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value.strip() and not value.startswith("0000-00-00"):
        return datetime.fromisoformat(value.strip())
    raise ValueError(f"{value!r:.40} is not a time")


class TableSource:
    """A `cdr` table read through a lookback window (see window.py and the plugin docs)."""

    def __init__(
        self,
        name: str,
        conn: Connection,
        mapping: CsvMapping,
        *,
        cursor_column: str,
        kind: str,
        lookback: float,
        zone: tzinfo | None,
        src_ip_field: str | None,
        interval: float,
        chunk_cdrs: int,
        start_at: str,
    ) -> None:
        self.name = name
        self.conn = conn
        self.dialect = DIALECTS[conn.store](conn)
        self.mapping = mapping
        self.cursor_column = cursor_column
        self.kind = kind
        self.lookback = lookback
        self.zone = zone
        self.src_ip_field = src_ip_field
        self.interval = interval
        self.chunk_cdrs = chunk_cdrs
        self.start_at = start_at
        self.stats = {"rows": 0, "cdrs": 0, "rejected": 0, "polls": 0}
        self._mappings: dict[tuple[str, ...], CsvMapping] = {}

    # --- SQL ----------------------------------------------------------------------------

    def _select(self, lower: Value | None) -> tuple[str, tuple[Any, ...]]:
        q, col = self.dialect.quote, self.dialect.quote(self.cursor_column)
        sql = f"SELECT * FROM {q(self.conn.table)} WHERE {col} IS NOT NULL"
        params: tuple[Any, ...] = ()
        if lower is not None:
            sql += f" AND {col} >= {self.dialect.placeholder}"
            params = (self.dialect.param(lower),)
        return sql + f" ORDER BY {col}", params

    def _max_sql(self) -> str:
        q = self.dialect.quote
        return f"SELECT MAX({q(self.cursor_column)}) FROM {q(self.conn.table)}"

    # --- check --------------------------------------------------------------------------

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        db = self._connect()
        try:
            sql, params = self._select(None)
            try:
                cur, names = self.dialect.stream(db, sql + " LIMIT 1", params)
                cur.fetchmany(1)
                self.dialect.end_stream(db, cur)
            except Exception as exc:
                raise SourceError(f"{self.conn.describe()}: {_error_text(exc)}") from None
            self._mapping_for(names)
            lowered = [n.lower() for n in names]
            column = names[lowered.index(self.cursor_column.split(".")[-1].lower())]
            if self.kind == "time" and self.dialect.indexed(db, self.conn.table, column) is False:
                log.warning(
                    "cursor_not_indexed",
                    source=self.name,
                    table=self.conn.table,
                    column=column,
                    hint=f"every poll scans the table: CREATE INDEX cdr_{column} ON "
                    f"{self.conn.table} ({self.dialect.quote(column)}), or use id_column",
                )
        finally:
            db.close()

    def _connect(self) -> Any:
        try:
            return self.dialect.connect()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.conn.describe()}: {_error_text(exc)}") from None

    def _mapping_for(self, names: list[str]) -> CsvMapping:
        key = tuple(n.lower() for n in names)
        mapping = self._mappings.get(key)
        if mapping is not None:
            return mapping
        if self.cursor_column.split(".")[-1].lower() not in key:
            raise SourceError(
                f"{self.conn.describe()}: no column {self.cursor_column!r} "
                f"(columns: {', '.join(key)})"
            )
        fields = dict(self.mapping.spec.fields)
        if "calldate" in key and "start" not in key:  # cdr_mysql, cdr_sqlite3_custom
            fields["start"] = (FieldInput("calldate"),)
        if self.src_ip_field is not None:
            if self.src_ip_field.lower() not in key:
                raise SourceError(
                    f"{self.conn.describe()}: src_ip_field {self.src_ip_field!r} is not a "
                    f"column (columns: {', '.join(key)})"
                )
            fields["src_ip"] = (FieldInput(self.src_ip_field.lower()),)
        if "start" not in key and "calldate" not in key and "end" not in key:
            raise SourceError(
                f"{self.conn.describe()}: neither start, calldate nor end is a column: "
                "this is not an Asterisk cdr table"
            )
        mapping = CsvMapping(replace(self.mapping.spec, fields=fields, layouts=(key,)))
        self._mappings[key] = mapping
        return mapping

    # --- read ---------------------------------------------------------------------------

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        window = Window(self.kind, self.lookback, self.zone)
        if checkpoint is not None:
            try:
                window.load(json.loads(checkpoint))
            except ValueError as exc:
                raise SourceError(
                    f"source {self.name}: cannot resume from checkpoint: {exc}"
                ) from None
        worker = ThreadPoolExecutor(1, thread_name_prefix=f"cdr-{self.name}")
        loop = asyncio.get_running_loop()

        def run(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(worker, fn, *args)

        connecting = run(self._connect)
        try:
            db = await asyncio.shield(connecting)
        except BaseException:
            with contextlib.suppress(BaseException):
                (await connecting).close()
            worker.shutdown(wait=False)
            raise
        try:
            last = checkpoint
            if checkpoint is None and self.start_at == "end":
                top = await run(self.dialect.scalar, db, self._max_sql())
                if top is not None:
                    window.top = cursor_value(top, self.kind)
                    window.settle()
                    async with contextlib.aclosing(self._poll(run, db, window, True)) as skip:
                        async for _ in skip:
                            pass
                last = window.dumps()
                yield ReadResult([], last)
            while True:
                # aclosing: a reader stopped at `yield` closes the query's cursor now
                async with contextlib.aclosing(self._poll(run, db, window)) as results:
                    async for result in results:
                        if result.cdrs or result.rejected or result.checkpoint != last:
                            last = result.checkpoint
                            yield result
                self.stats["polls"] += 1
                await asyncio.sleep(self.interval)
        finally:
            try:
                await asyncio.shield(run(db.close))
            finally:
                worker.shutdown(wait=False)

    async def _poll(
        self, run: _Runner, db: Any, window: Window, silent: bool = False
    ) -> AsyncGenerator[ReadResult, None]:
        sql, params = self._select(window.lower_bound())
        opening = run(self.dialect.stream, db, sql, params)
        try:
            cur, names = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Stopped while the query runs: let it finish, then close its cursor.
            with contextlib.suppress(Exception):
                cur, _ = await opening
                await run(self.dialect.end_stream, db, cur)
            raise
        try:
            mapping = self._mapping_for(names)
            index = [n.lower() for n in names].index(self.cursor_column.split(".")[-1].lower())
            fetching = run(cur.fetchmany, self.chunk_cdrs)
            while True:
                rows = await fetching
                if not rows:
                    break
                # The next chunk is read (and the server sends it) while this one is mapped.
                fetching = run(cur.fetchmany, self.chunk_cdrs)
                cdrs, rejected = self._admit(rows, index, mapping, window, silent)
                window.settle()
                yield ReadResult(cdrs, window.dumps(), rejected)
        finally:
            await asyncio.shield(run(self.dialect.end_stream, db, cur))

    def _admit(
        self,
        rows: Sequence[Sequence[Any]],
        index: int,
        mapping: CsvMapping,
        window: Window,
        silent: bool,
    ) -> tuple[list[CDR], list[Rejected]]:
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        dates = [i for i, name in enumerate(mapping.spec.layouts[0]) if name in DATE_COLUMNS]
        horizon = datetime.now(self.zone or local_zone()).replace(tzinfo=None) + FUTURE
        for row in rows:
            # Text as it comes (PyMySQL and psycopg are set to leave dates as text); other
            # types, and zero dates (MySQL's '0000-00-00 ...' for unset), through text_value.
            values = [v if type(v) is str else text_value(v) for v in row]
            for i in dates:
                if values[i][:4] == "0000":
                    values[i] = ""
            raw = "\x1f".join(values).encode()
            problem = ""
            try:
                value = cursor_value(row[index], self.kind)
            except ValueError as exc:
                # Placed at the top of the window so it is reported once, not every poll.
                value = window.top if window.top is not None else _origin(self.kind)
                problem = f"column {self.cursor_column!r}: {exc}"
            move = True
            if (
                not problem
                and isinstance(value, datetime)
                and value.tzinfo is None
                and value > horizon
            ):
                move = False
                problem = (
                    f"column {self.cursor_column!r}: {values[index]} is more than a day "
                    "ahead of this host's clock (not used as the read position)"
                )
            if not window.admit(value, digest(raw), move=move) or silent:
                continue
            self.stats["rows"] += 1
            where = f"{self.conn.table}:{self.cursor_column}={values[index] or 'NULL'}"
            if problem:
                rejected.append(Rejected(where, problem))
                continue
            try:
                result = mapping.map_values(values, raw)
            except Exception as exc:  # a bug must cost one row, not the table
                log.error("map_failed", exc_info=True, source=self.name, where=where)
                rejected.append(Rejected(where, f"internal error while mapping: {exc!r}"))
                continue
            if isinstance(result, CDR):
                cdrs.append(result)
            else:
                rejected.append(Rejected(where, result.reason))
        self.stats["cdrs"] += len(cdrs)
        self.stats["rejected"] += len(rejected)
        for item in rejected[:LOGGED_REJECTS_PER_CHUNK]:
            log.warning("row_rejected", source=self.name, where=item.where, reason=item.reason)
        return cdrs, rejected

    async def close(self) -> None:
        pass


def _origin(kind: str) -> Value:
    return 0 if kind == "id" else datetime(1970, 1, 1) + timedelta(0)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
