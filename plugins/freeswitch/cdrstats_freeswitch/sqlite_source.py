"""mod_cdr_sqlite: the `cdr` table of `${db_dir}/cdr.db`, read while FreeSWITCH writes it.

The table has no INTEGER PRIMARY KEY, so its rowids are not stable: `VACUUM` may renumber
them (it does once rows were deleted). The checkpoint is therefore a rowid *and* the uuids of
the last rows read (the anchor). On each poll the row at the checkpoint's rowid must still
hold the anchor's last uuid; if it does not, the anchor rows are looked up by uuid and reading
continues after the newest one found (VACUUM keeps the rows' order). If every anchor row was
deleted, reading resumes at the first row whose `end_stamp` is not older than the checkpoint's,
which may re-read a few CDRs: the collector stores each key once.

The database is opened read-only with a busy timeout: FreeSWITCH's writes (rollback journal
or WAL) only make a poll wait a little.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncGenerator
from typing import Any

from cdrstats_agent.errors import SourceError
from cdrstats_agent.logs import get_logger
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import ReadResult, Rejected

from .variables import Invalid, Settings, Skipped, to_cdr

log = get_logger("cdrstats.plugins.freeswitch.sqlite")
ANCHOR_ROWS = 8
CHECKPOINT_VERSION = 1


class SqliteCheckpoint:
    def __init__(self, rowid: int = 0, anchor: list[str] | None = None, end: str = "") -> None:
        self.rowid = rowid
        self.anchor = anchor or []
        """uuids of the last rows read, oldest first."""
        self.end = end
        """`end_stamp` of the last row read (fallback when every anchor row is gone)."""

    @classmethod
    def parse(cls, text: str | None) -> SqliteCheckpoint:
        if text is None:
            return cls()
        try:
            doc = json.loads(text)
            if doc.get("v") != CHECKPOINT_VERSION:
                raise ValueError("version")
            rowid, anchor, end = doc["rowid"], doc["anchor"], doc.get("end", "")
            if not isinstance(rowid, int) or not all(isinstance(a, str) for a in anchor):
                raise ValueError("types")
            return cls(rowid, list(anchor), str(end))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SourceError(f"not a mod_cdr_sqlite checkpoint ({exc}): {text[:80]!r}") from None

    def dump(self) -> str:
        doc = {"v": CHECKPOINT_VERSION, "rowid": self.rowid, "anchor": self.anchor, "end": self.end}
        return json.dumps(doc, separators=(",", ":"))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteSource:
    """The `cdr` table of a mod_cdr_sqlite database file."""

    def __init__(
        self,
        name: str,
        *,
        path: str,
        table: str,
        settings: Settings,
        interval: float,
        chunk_cdrs: int,
        busy_timeout_s: float,
    ) -> None:
        self.name = name
        self.path = os.path.abspath(path)
        self.table = table
        self.settings = settings
        self.interval = interval
        self.chunk_cdrs = chunk_cdrs
        self.busy_timeout_s = busy_timeout_s
        self.stats = {"cdrs": 0, "rejected": 0, "b_legs": 0, "resynced": 0}
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if not os.path.exists(self.path):
                raise SourceError(
                    f"{self.path}: no such database (is mod_cdr_sqlite loaded? it creates "
                    "${db_dir}/cdr.db on its first CDR)"
                )
            try:
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro",
                    uri=True,
                    timeout=self.busy_timeout_s,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise SourceError(f"{self.path}: cannot open: {exc}") from None
            self._conn = conn
        return self._conn

    def _columns(self, conn: sqlite3.Connection) -> list[str]:
        try:
            rows = conn.execute(f"PRAGMA table_info({_ident(self.table)})").fetchall()
        except sqlite3.DatabaseError as exc:
            self._drop()
            raise SourceError(f"{self.path}: not a readable SQLite database: {exc}") from None
        if not rows:
            raise SourceError(f"{self.path}: no table {self.table!r} (mod_cdr_sqlite db-table)")
        names = [r[1] for r in rows]
        if "uuid" not in names:
            raise SourceError(f"{self.path}: table {self.table!r} has no uuid column")
        return names

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def check(self) -> None:
        def run() -> None:
            self._columns(self._connect())

        await asyncio.to_thread(run)

    def _resync(self, conn: sqlite3.Connection, cp: SqliteCheckpoint) -> SqliteCheckpoint:
        """The checkpoint with a rowid that is valid again (see module doc)."""
        if cp.rowid == 0 or not cp.anchor:
            return cp
        t = _ident(self.table)
        row = conn.execute(f"SELECT uuid FROM {t} WHERE rowid = ?", (cp.rowid,)).fetchone()
        if row is not None and row[0] == cp.anchor[-1]:
            return cp
        self.stats["resynced"] += 1
        for uuid in reversed(cp.anchor):
            found = conn.execute(f"SELECT max(rowid) FROM {t} WHERE uuid = ?", (uuid,)).fetchone()
            if found and found[0] is not None:
                log.warning(
                    "checkpoint_moved",
                    source=self.name,
                    old_rowid=cp.rowid,
                    new_rowid=found[0],
                    note="rowids changed (VACUUM); resumed after the same row",
                )
                return SqliteCheckpoint(found[0], cp.anchor, cp.end)
        columns = self._columns(conn)
        start = 0
        if cp.end and "end_stamp" in columns:
            found = conn.execute(
                f"SELECT min(rowid) FROM {t} WHERE end_stamp >= ?", (cp.end,)
            ).fetchone()
            start = (found[0] - 1) if found and found[0] is not None else cp.rowid
        log.warning(
            "checkpoint_rows_gone",
            source=self.name,
            old_rowid=cp.rowid,
            new_rowid=start,
            note="the last rows read were deleted; resuming by end_stamp (a few CDRs may be "
            "sent again, the collector stores each once)",
        )
        return SqliteCheckpoint(max(start, 0), [], cp.end)

    def poll(self, cp: SqliteCheckpoint) -> tuple[list[CDR], list[Rejected], SqliteCheckpoint, int]:
        """CDRs after `cp`, rejected rows, the new checkpoint and the number of rows read."""
        conn = self._connect()
        try:
            columns = self._columns(conn)
            cp = self._resync(conn, cp)
            cursor = conn.execute(
                f"SELECT rowid, * FROM {_ident(self.table)} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (cp.rowid, self.chunk_cdrs),
            )
            rows = cursor.fetchall()
        except sqlite3.OperationalError as exc:
            self._drop()
            raise SourceError(f"{self.path}: {exc}") from None
        cdrs: list[CDR] = []
        rejected: list[Rejected] = []
        anchor = list(cp.anchor)
        end = cp.end
        rowid = cp.rowid
        settings = self.settings
        for row in rows:
            rowid = row[0]
            variables: dict[str, Any] = dict(zip(columns, row[1:], strict=True))
            uuid = variables.get("uuid")
            anchor.append(str(uuid) if uuid is not None else "")
            if variables.get("end_stamp"):
                end = str(variables["end_stamp"])
            try:
                result = to_cdr(variables, settings)
            except Invalid as exc:
                rejected.append(Rejected(f"{self.path}:{self.table}:rowid={rowid}", str(exc)))
                continue
            if isinstance(result, Skipped):
                self.stats["b_legs"] += 1
                continue
            cdrs.append(result)
        self.stats["cdrs"] += len(cdrs)
        self.stats["rejected"] += len(rejected)
        return cdrs, rejected, SqliteCheckpoint(rowid, anchor[-ANCHOR_ROWS:], end), len(rows)

    async def read(self, checkpoint: str | None) -> AsyncGenerator[ReadResult, None]:
        cp = SqliteCheckpoint.parse(checkpoint)
        try:
            while True:
                cdrs, rejected, new, count = await asyncio.to_thread(self.poll, cp)
                if new.rowid != cp.rowid or new.anchor != cp.anchor:
                    for item in rejected[:20]:
                        log.warning(
                            "row_rejected", source=self.name, where=item.where, reason=item.reason
                        )
                    cp = new
                    yield ReadResult(cdrs, cp.dump(), rejected)
                    if count >= self.chunk_cdrs:
                        continue
                await asyncio.sleep(self.interval)
        finally:
            await asyncio.to_thread(self._drop)

    async def close(self) -> None:
        await asyncio.to_thread(self._drop)
