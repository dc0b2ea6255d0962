"""mod_cdr_sqlite: the reference table, reading while the switch writes, VACUUM, errors."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from cdrstats_agent.errors import SourceError
from cdrstats_agent.model import Disposition
from freeswitch_testkit import REFERENCE, Reader, call_variables, make_source, render

COLUMNS = (
    "caller_id_name",
    "caller_id_number",
    "destination_number",
    "context",
    "start_stamp",
    "answer_stamp",
    "end_stamp",
    "duration",
    "billsec",
    "hangup_cause",
    "hangup_cause_q850",
    "uuid",
    "bleg_uuid",
    "account_code",
)


def reference_db(path: Path, *, with_rows: bool = True) -> None:
    """The table of the reference dump (mod_cdr_sqlite's `cdr`), with its two rows or none."""
    dump = (REFERENCE / "mod_cdr_sqlite_dump_cdr-pusher.sql").read_text()
    conn = sqlite3.connect(path)
    conn.executescript(dump)
    if not with_rows:
        conn.execute("DELETE FROM cdr")
        conn.commit()
    conn.close()


def insert(path: Path, numbers: range) -> None:
    """Rows as the vanilla `example` template of cdr_sqlite.conf.xml inserts them."""
    conn = sqlite3.connect(path)
    with conn:
        for n in numbers:
            v = call_variables(n)
            v["account_code"] = v["accountcode"]
            conn.execute(
                f"INSERT INTO cdr ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [
                    int(v[c]) if c in ("duration", "billsec", "hangup_cause_q850") else v[c]
                    for c in COLUMNS
                ],
            )
    conn.close()


def keys(numbers: range) -> list[str]:
    return [call_variables(n)["uuid"] for n in numbers]


OPTS = {"store": "sqlite", "timezone": "Europe/Madrid"}


async def test_reference_rows(tmp_path: Path) -> None:
    db = tmp_path / "cdr.db"
    reference_db(db)
    reader = Reader(make_source({**OPTS, "path": str(db)}))
    try:
        first, second = await reader.take(2)
        assert first.key == "2bbe83f7-5111-4b5b-9626-c5154608d4ee"
        assert second.key == "2bbe83f7-5111-4b5b-1324-joij32j2o344"
        # 2015-01-14 17:58:01 in Madrid (CET, +01:00)
        assert first.start.isoformat() == "2015-01-14T16:58:01+00:00"
        assert (first.caller, first.caller_name, first.callee) == (
            "800123123",
            "Outbound Call",
            "34650881188",
        )
        assert (first.duration, first.billsec, first.hangup_cause) == (50, 50, 16)
        assert first.disposition is Disposition.ANSWERED and first.accountcode == ""
        assert first.extra == {
            "context": "default",
            "hangup_cause": "NORMAL_CLEARING",
            "bleg_uuid": "",
        }
        await reader.quiet()
    finally:
        await reader.close()


async def test_reads_while_the_switch_writes(tmp_path: Path) -> None:
    db = tmp_path / "cdr.db"
    reference_db(db, with_rows=False)
    reader = Reader(make_source({**OPTS, "path": str(db), "chunk_cdrs": 7}))
    try:
        insert(db, range(0, 20))
        await reader.take(20)
        # The switch holds the write lock for a while: the reader waits, it does not fail.
        locked, release = threading.Event(), threading.Event()

        def writer() -> None:
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(5)
            conn.execute("COMMIT")
            conn.close()

        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.to_thread(locked.wait, 5)
        insert_task = asyncio.ensure_future(asyncio.to_thread(insert, db, range(20, 25)))
        await asyncio.sleep(0.2)  # several polls run into the lock meanwhile
        release.set()
        await asyncio.to_thread(thread.join, 5)
        await insert_task
        await reader.take(5)
        await reader.quiet()
        assert [c.key for c in reader.cdrs] == keys(range(25))
    finally:
        await reader.close()


async def test_checkpoint_survives_vacuum(tmp_path: Path) -> None:
    """Rows purged and VACUUM renumbers the rowids: new rows get rowids below the checkpoint's."""
    db = tmp_path / "cdr.db"
    reference_db(db, with_rows=False)
    insert(db, range(10))
    reader = Reader(make_source({**OPTS, "path": str(db)}))
    try:
        await reader.take(10)
        conn = sqlite3.connect(db, isolation_level=None)
        last_rowid = conn.execute("SELECT max(rowid) FROM cdr").fetchone()[0]
        conn.execute("DELETE FROM cdr WHERE rowid <= 5")
        conn.execute("VACUUM")
        moved = conn.execute("SELECT rowid FROM cdr WHERE uuid = ?", keys(range(9, 10))).fetchone()
        assert moved[0] < last_rowid, "VACUUM did not renumber: the test proves nothing"
        conn.close()
        insert(db, range(10, 13))
        await reader.take(3)
        await reader.quiet()
        checkpoint = reader.checkpoint
    finally:
        await reader.close()
    assert [c.key for c in reader.cdrs] == keys(range(13))
    # A restart after another purge + VACUUM.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM cdr WHERE rowid <= 2")
    conn.execute("VACUUM")
    conn.close()
    insert(db, range(13, 15))
    again = Reader(make_source({**OPTS, "path": str(db)}), checkpoint)
    try:
        await again.take(2)
        await again.quiet()
        assert [c.key for c in again.cdrs] == keys(range(13, 15))
    finally:
        await again.close()


async def test_every_anchor_row_deleted_resumes_by_end_stamp(tmp_path: Path) -> None:
    db = tmp_path / "cdr.db"
    reference_db(db, with_rows=False)
    insert(db, range(10))
    reader = Reader(make_source({**OPTS, "path": str(db)}))
    try:
        await reader.take(10)
        checkpoint = reader.checkpoint
    finally:
        await reader.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM cdr")
    conn.execute("VACUUM")
    conn.close()
    insert(db, range(10, 14))
    again = Reader(make_source({**OPTS, "path": str(db)}), checkpoint)
    try:
        await again.take(4)
        await again.quiet()
        assert [c.key for c in again.cdrs] == keys(range(10, 14))
    finally:
        await again.close()


async def test_bad_rows_are_rejected_with_their_rowid(tmp_path: Path) -> None:
    db = tmp_path / "cdr.db"
    reference_db(db, with_rows=False)
    insert(db, range(2))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO cdr (uuid, start_stamp) VALUES ('', '2026-01-01 00:00:00')")
        conn.execute("INSERT INTO cdr (uuid, start_stamp) VALUES ('x', 'someday')")
    conn.close()
    insert(db, range(2, 3))
    reader = Reader(make_source({**OPTS, "path": str(db)}))
    try:
        await reader.take(5)
        assert [c.key for c in reader.cdrs] == keys(range(3))
        assert [r.where.rsplit(":", 1)[1] for r in reader.rejected] == ["rowid=3", "rowid=4"]
        assert "uuid: missing" in reader.rejected[0].reason
        assert "start_stamp: not a time" in reader.rejected[1].reason
    finally:
        await reader.close()


async def test_check_names_the_problem(tmp_path: Path) -> None:
    missing = make_source({**OPTS, "path": str(tmp_path / "cdr.db")})
    with pytest.raises(SourceError, match=r"no such database.*mod_cdr_sqlite"):
        await missing.check()
    sqlite3.connect(tmp_path / "other.db").close()
    no_table = make_source({**OPTS, "path": str(tmp_path / "other.db")})
    with pytest.raises(SourceError, match="no table 'cdr'"):
        await no_table.check()
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    junk = make_source({**OPTS, "path": str(tmp_path / "junk.db")})
    with pytest.raises(SourceError, match="not a readable SQLite database"):
        await junk.check()
    with pytest.raises(SourceError, match="not a mod_cdr_sqlite checkpoint"):
        reader = Reader(make_source({**OPTS, "path": str(tmp_path / "other.db")}), "{bad")
        try:
            await reader.take(1)
        finally:
            await reader.close()


MODULE_TABLE = """CREATE TABLE cdr (
    caller_id_name VARCHAR, caller_id_number VARCHAR, destination_number VARCHAR,
    context VARCHAR, start_stamp DATETIME, answer_stamp DATETIME, end_stamp DATETIME,
    duration INTEGER, billsec INTEGER, hangup_cause VARCHAR, uuid VARCHAR, bleg_uuid VARCHAR,
    account_code VARCHAR)"""
"""The table mod_cdr_sqlite creates when it finds none (its default_create_sql)."""

MODULE_TEMPLATE = (
    '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}",'
    '"${start_stamp}","${answer_stamp}","${end_stamp}",${duration},${billsec},'
    '"${hangup_cause}","${uuid}","${bleg_uuid}","${accountcode}"'
)
"""mod_cdr_sqlite's built-in template: the module runs `INSERT INTO cdr VALUES (<expanded>)`,
so the values are double-quoted SQL tokens (SQLite takes them as strings)."""


async def test_rows_exactly_as_the_module_inserts_them(tmp_path: Path) -> None:
    db = tmp_path / "cdr.db"
    conn = sqlite3.connect(db)
    conn.execute(MODULE_TABLE)
    for n in range(4):
        v = call_variables(n, answered=n != 2)
        conn.execute(f"INSERT INTO cdr VALUES ({render(MODULE_TEMPLATE, v)})")
    conn.commit()
    conn.close()
    reader = Reader(make_source({**OPTS, "path": str(db)}))
    try:
        cdrs = await reader.take(4)
        assert [c.key for c in cdrs] == keys(range(4))
        unanswered = cdrs[2]
        v = call_variables(2, answered=False)
        assert unanswered.answer is None and unanswered.disposition is Disposition.NO_ANSWER
        assert unanswered.hangup_cause == 19 and unanswered.duration == int(v["duration"])
        assert cdrs[0].accountcode == "acct0" and cdrs[0].billsec == 30
        assert cdrs[0].start.timestamp() == int(call_variables(0)["start_epoch"])
    finally:
        await reader.close()
