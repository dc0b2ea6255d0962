"""Reading Kamailio's accounting tables from MariaDB/MySQL (pymysql) or PostgreSQL (psycopg).

Blocking calls: the sources run them with `asyncio.to_thread`. Every query runs in autocommit
so that each poll sees rows committed since the previous one.

`GapGuard` protects the "id greater than the checkpoint" reading from AUTO_INCREMENT ids that
commit out of order: a row after a hole in the ids is only taken once the hole has been seen
for `gap_wait_s` (a transaction that was still committing has filled it by then, or never will).
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cdrstats_agent.errors import SourceError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SCHEMES = {"mysql": "mysql", "mariadb": "mysql", "postgres": "pg", "postgresql": "pg"}


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def url_kind(url: str) -> str | None:
    """`mysql` or `pg` for a supported URL, None otherwise."""
    return SCHEMES.get(urlsplit(url).scheme.lower())


class Database:
    """One connection to the accounting database; reconnects on demand."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        kind = url_kind(url)
        if kind is None:
            raise ValueError(f"unsupported database URL {redact(url)!r}")
        self.url = url
        self.kind = kind
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._columns: dict[str, list[str]] = {}

    # --- connection ------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self.kind == "mysql":
            import pymysql

            parts = urlsplit(self.url)
            query = parse_qs(parts.query)
            kwargs: dict[str, Any] = {
                "user": unquote(parts.username or "root"),
                "password": unquote(parts.password or ""),
                "database": unquote(parts.path.lstrip("/")) or None,
                "autocommit": True,
                "charset": "utf8mb4",
                "connect_timeout": int(self.timeout_s),
                "read_timeout": int(self.timeout_s * 3),
            }
            if "unix_socket" in query:
                kwargs["unix_socket"] = query["unix_socket"][0]
            else:
                kwargs["host"] = parts.hostname or "127.0.0.1"
                kwargs["port"] = parts.port or 3306
            return pymysql.connect(**kwargs)
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.timeout_s))

    def connection(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except Exception as exc:
                raise SourceError(f"cannot connect to {redact(self.url)}: {_reason(exc)}") from None
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def quote(self, name: str) -> str:
        if not IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain SQL identifier")
        return f"`{name}`" if self.kind == "mysql" else f'"{name}"'

    # --- queries ---------------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        conn = self.connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql, tuple(args))
                names = [d[0] for d in cur.description or ()]
                rows = list(cur.fetchall())
            finally:
                cur.close()
        except Exception as exc:
            self.close()  # a broken connection is not reused; the source restarts
            raise SourceError(f"{redact(self.url)}: {_reason(exc)}") from None
        return names, rows

    def columns(self, table: str) -> list[str]:
        """The column names of `table` (SourceError naming the table when it is missing)."""
        names, _ = self._query(f"SELECT * FROM {self.quote(table)} WHERE 1 = 0", ())
        return names

    def max_id(self, table: str) -> int:
        """The highest id in `table` (0 when empty)."""
        _, rows = self._query(f"SELECT MAX(id) FROM {self.quote(table)}", ())
        return int(rows[0][0] or 0) if rows else 0

    def rows_after(self, table: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows with id > after_id, in id order, as dicts.

        On MySQL/MariaDB the columns other than `id` come packed in one text field per row
        (CONCAT_WS with the ASCII unit separator, which SIP forbids in the values written):
        pymysql decodes a row's fields one by one in Python, so one field instead of fifteen
        is most of the reading cost saved. Values are then text (`time` as
        `YYYY-MM-DD HH:MM:SS`); a row whose text holds the separator is read again plainly.
        """
        if self.kind != "mysql":
            names, rows = self._query(
                f"SELECT * FROM {self.quote(table)} WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            )
            return [dict(zip(names, row, strict=True)) for row in rows]
        columns = self._columns.get(table)
        if columns is None:
            columns = self._columns[table] = [c for c in self.columns(table) if c != "id"]
        packed = ", ".join(f"IFNULL(CAST({self.quote(c)} AS CHAR), '')" for c in columns)
        _, rows = self._query(
            f"SELECT id, CONCAT_WS(CHAR(31 USING utf8mb4), {packed}) FROM {self.quote(table)}"
            " WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit),
        )
        out: list[dict[str, Any]] = []
        width = len(columns)
        for rid, text in rows:
            parts = (text.decode() if isinstance(text, bytes) else str(text)).split("\x1f")
            if len(parts) != width:
                names, plain = self._query(
                    f"SELECT * FROM {self.quote(table)} WHERE id = %s", (rid,)
                )
                out.append(dict(zip(names, plain[0], strict=True)))
                continue
            row = dict(zip(columns, parts, strict=True))
            row["id"] = rid
            out.append(row)
        return out


def _reason(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) == 2 and isinstance(args[0], int):  # pymysql: (errno, message)
        return f"{args[1]} (error {args[0]})"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class GapGuard:
    """Decides which rows after `last_id` are safe to take despite holes in the ids."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._seen: collections.deque[tuple[float, int]] = collections.deque()
        self._aged = 0

    def accept(
        self, last_id: int, rows: list[dict[str, Any]], now: float | None = None
    ) -> list[dict[str, Any]]:
        if not rows or self.wait_s <= 0:
            return rows
        now = time.monotonic() if now is None else now
        self._seen.append((now, int(rows[-1]["id"])))
        while self._seen and now - self._seen[0][0] >= self.wait_s:
            self._aged = max(self._aged, self._seen.popleft()[1])
        taken: list[dict[str, Any]] = []
        expected = last_id + 1
        for row in rows:
            rid = int(row["id"])
            if rid != expected and rid > self._aged:
                break
            taken.append(row)
            expected = rid + 1
        return taken

    @property
    def holding(self) -> bool:
        return bool(self._seen)


def missing_columns(have: Sequence[str], need: Mapping[str, str]) -> list[str]:
    """Entries `field -> column` of `need` whose column is not in `have`."""
    present = set(have)
    return [f"{field} -> {column}" for field, column in need.items() if column not in present]
