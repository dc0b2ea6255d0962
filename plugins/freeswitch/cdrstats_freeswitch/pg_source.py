"""mod_cdr_pg_csv: the `cdr` table FreeSWITCH fills in PostgreSQL (read with psycopg).

Rows are read in order of an increasing column (`id serial` in the module's create.sql); the
checkpoint is the last id read. Ids of a sequence are handed out at INSERT but become visible
at COMMIT, so a smaller id can appear after a larger one. A hole in the ids is therefore not
skipped at once: reading stops before it for up to `gap_wait_s` seconds (an open transaction
fills it), then goes on (a rolled-back insert or a cached sequence leaves it empty for good).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import psycopg
from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected
from psycopg import sql
from psycopg.rows import dict_row

from .variables import Invalid, Settings, Skipped, to_cdr

log = get_logger("cdrstats.plugins.freeswitch.pg")
CHECKPOINT_VERSION = 1


def parse_checkpoint(text: str | None) -> int:
    if text is None:
        return 0
    try:
        doc = json.loads(text)
        value = doc["id"]
        if doc.get("v") != CHECKPOINT_VERSION or not isinstance(value, int):
            raise ValueError("not a version 1 checkpoint")
        return value
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"not a mod_cdr_pg_csv checkpoint ({exc}): {text[:80]!r}") from None


def dump_checkpoint(last_id: int) -> str:
    return json.dumps({"v": CHECKPOINT_VERSION, "id": last_id}, separators=(",", ":"))


class PgSource:
    """A mod_cdr_pg_csv table."""

    def __init__(
        self,
        name: str,
        *,
        dsn: str,
        table: str,
        order_column: str,
        settings: Settings,
        interval: float,
        chunk_cdrs: int,
        gap_wait_s: float,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.table = table
        self.order_column = order_column
        self.settings = settings
        self.interval = interval
        self.chunk_cdrs = chunk_cdrs
        self.gap_wait_s = gap_wait_s
        self.stats = {"cdrs": 0, "rejected": 0, "b_legs": 0, "gaps_skipped": 0}
        self._gap: tuple[int, float] | None = None
        """(first id after a hole, monotonic time the hole was first seen)."""

    def _table(self) -> sql.Composable:
        schema, _, table = self.table.rpartition(".")
        return sql.Identifier(schema, table) if schema else sql.Identifier(table)

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        try:
            return await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise SourceError(f"cannot connect to PostgreSQL ({first})") from None

    async def _check_table(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        row = await (
            await conn.execute(
                "SELECT array_agg(attname::text) AS cols FROM pg_attribute"
                " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                (self.table,),
            )
        ).fetchone()
        columns = (row or {}).get("cols") or []
        if not columns:
            raise SourceError(f"PostgreSQL: no table {self.table!r} (mod_cdr_pg_csv db-table)")
        for needed in (self.order_column, "uuid"):
            if needed not in columns:
                raise SourceError(
                    f"PostgreSQL table {self.table!r} has no column {needed!r}"
                    + (
                        " (add `id serial primary key` as in mod_cdr_pg_csv's create.sql, or "
                        "set order_column)"
                        if needed == self.order_column
                        else ""
                    )
                )

    async def check(self) -> None:
        conn = await self._connect()
        try:
            await self._check_table(conn)
        finally:
            await conn.close()

    def _take(self, rows: list[dict[str, Any]], last: int) -> list[dict[str, Any]]:
        """The rows up to the first young hole in the ids (see module doc)."""
        taken: list[dict[str, Any]] = []
        expected = last + 1
        for row in rows:
            value = row[self.order_column]
            if value != expected and last > 0:
                now = time.monotonic()
                if self._gap is None or self._gap[0] != value:
                    self._gap = (value, now)
                if now - self._gap[1] < self.gap_wait_s:
                    break
                self.stats["gaps_skipped"] += 1
                log.info("id_gap_skipped", source=self.name, missing_from=expected, to=value - 1)
            taken.append(row)
            last = value
            expected = value + 1
        return taken

    def _map(self, rows: list[dict[str, Any]]) -> tuple[list[CDR], list[Rejected]]:
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        for row in rows:
            try:
                result = to_cdr(row, self.settings)
            except Invalid as exc:
                where = f"{self.table}:{self.order_column}={row[self.order_column]}"
                rejected.append(Rejected(where, str(exc)))
                continue
            if isinstance(result, Skipped):
                self.stats["b_legs"] += 1
                continue
            result.extra.pop(self.order_column, None)
            cdrs.append(result)
        self.stats["cdrs"] += len(cdrs)
        self.stats["rejected"] += len(rejected)
        return cdrs, rejected

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        last = parse_checkpoint(checkpoint)
        conn = await self._connect()
        try:
            await self._check_table(conn)
            query = sql.SQL("SELECT * FROM {} WHERE {} > %s ORDER BY {} LIMIT %s").format(
                self._table(), sql.Identifier(self.order_column), sql.Identifier(self.order_column)
            )
            while True:
                cur = await conn.execute(query, (last, self.chunk_cdrs))
                rows = await cur.fetchall()
                taken = self._take(rows, last)
                if taken:
                    cdrs, rejected = self._map(taken)
                    last = taken[-1][self.order_column]
                    for item in rejected[:20]:
                        log.warning(
                            "row_rejected", source=self.name, where=item.where, reason=item.reason
                        )
                    yield ReadResult(cdrs, dump_checkpoint(last), rejected)
                    if len(taken) == self.chunk_cdrs:
                        continue
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    async def close(self) -> None:
        pass
