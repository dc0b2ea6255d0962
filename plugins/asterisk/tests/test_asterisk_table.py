"""The cdr table on the real MariaDB and PostgreSQL servers and in SQLite files.

Schemas: asterisk/contrib/realtime (reference files) for MariaDB and PostgreSQL, the table
cdr_sqlite3_custom creates, and the legacy cdr_mysql table.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from asterisk_testkit import (
    LEGACY_MYSQL_SCHEMA,
    REFERENCE,
    MySQLDatabase,
    create_reference_mysql_cdr,
    create_sqlite_custom,
    drain,
    make_source,
    mysql_database,
    row,
    sql_statements,
    sqlite_insert,
    sqlite_row,
)
from cdrstats_agent.errors import SourceError
from cdrstats_agent.model import Disposition

from tests.fix_db import create_database, drop_database, with_dbname

pytestmark = pytest.mark.timeout(120)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


CALLS = [
    row("1772445600.1", clid='"Doe, John "JD"" <1000>', linkedid="1772445600.1", sequence=1),
    row("1772445601.2", clid='"Zoë 李" <2000>', src="2000", disposition="NO ANSWER", answer="",
        billsec=0, duration=20, end="2026-03-02 10:00:20", sequence=2),
    row("1772445600.3", dst="300", linkedid="1772445600.1", sequence=3,
        channel="PJSIP/200-00000002", end="2026-03-02 10:01:06"),
]  # fmt: skip


def check_calls(cdrs: list[Any]) -> None:
    by_key = {c.key: c for c in cdrs}
    assert sorted(by_key) == ["1772445600.1:1", "1772445600.3:3", "1772445601.2:2"]
    first = by_key["1772445600.1:1"]
    assert first.caller_name == 'Doe, John "JD"'
    assert (first.start, first.answer, first.end) == (
        utc(2026, 3, 2, 10), utc(2026, 3, 2, 10, 0, 5), utc(2026, 3, 2, 10, 1, 5),
    )  # fmt: skip
    assert (first.duration, first.billsec, first.disposition) == (65, 60, Disposition.ANSWERED)
    assert first.trunk == "carrier" and first.call_group == "1772445600.1"
    missed = by_key["1772445601.2:2"]
    assert missed.caller_name == "Zoë 李"
    assert missed.answer is None and missed.disposition is Disposition.NO_ANSWER
    assert by_key["1772445600.3:3"].call_group == "1772445600.1"


# --- MariaDB ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mysql_module() -> Iterator[MySQLDatabase]:
    with mysql_database() as db:
        yield db


@pytest.fixture
def mysql(mysql_module: MySQLDatabase) -> MySQLDatabase:
    for table in ("cdr", "alembic_version"):
        mysql_module.execute(f"DROP TABLE IF EXISTS `{table}`")
    return mysql_module


async def test_mysql_reference_schema_read_restart_and_new_rows(mysql: MySQLDatabase) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.insert(CALLS)
    source = make_source(mysql.options(timezone="UTC"))
    await source.check()
    first = await drain(source, None, want=3)
    check_calls(first.cdrs)
    assert not first.rejected
    mysql.insert([row("1772445700.9", sequence=9, end="2026-03-02 10:01:04")])  # earlier end
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["1772445700.9:9"]
    third = await drain(source, second.checkpoint, want=0)
    assert third.cdrs == []


async def test_mysql_equal_end_times_beyond_a_chunk_and_a_restart_mid_way(
    mysql: MySQLDatabase,
) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.insert([row(f"1772445800.{i}", sequence=i) for i in range(250)])
    source = make_source(mysql.options(timezone="UTC", chunk_cdrs=40))
    part = await drain(source, None, want=40, settle=0)
    assert len(part.cdrs) >= 40
    rest = await drain(source, part.checkpoint, want=250 - len(part.cdrs))
    keys = [c.key for c in part.cdrs + rest.cdrs]
    assert len(keys) == len(set(keys)) == 250


async def test_mysql_row_committed_late_with_an_earlier_end(mysql: MySQLDatabase) -> None:
    """A transaction holds its row while a later one commits: nothing is skipped."""
    create_reference_mysql_cdr(mysql)
    source = make_source(mysql.options(timezone="UTC"))
    held = mysql.connect()
    held.autocommit(False)
    try:
        with held.cursor() as cur:
            cur.execute(
                "INSERT INTO cdr (uniqueid, sequence, start, end, duration, billsec, disposition)"
                " VALUES ('slow.1', 1, '2026-03-02 10:00:00', '2026-03-02 10:00:10', 10, 0,"
                " 'NO ANSWER')"
            )
        mysql.insert([row("fast.2", sequence=2, end="2026-03-02 10:00:30", duration=30,
                          billsec=25, answer="2026-03-02 10:00:05")])  # fmt: skip
        first = await drain(source, None, want=1)
        assert [c.key for c in first.cdrs] == ["fast.2:2"]
        held.commit()
    finally:
        held.close()
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["slow.1:1"]


async def test_mysql_auto_increment_id_column(mysql: MySQLDatabase) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.execute("ALTER TABLE cdr ADD id BIGINT AUTO_INCREMENT PRIMARY KEY")
    mysql.insert(CALLS)
    source = make_source(mysql.options(timezone="UTC", id_column="id"))
    first = await drain(source, None, want=3)
    check_calls(first.cdrs)
    assert first.cdrs[0].extra["id"] == "1"
    assert '"kind":"id"' in (first.checkpoint or "")
    mysql.insert([row("1772445900.1", sequence=7)])
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["1772445900.1:7"]


async def test_mysql_start_at_end_skips_existing_rows(mysql: MySQLDatabase) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.insert(CALLS)
    source = make_source(mysql.options(timezone="UTC", start_at="end"))
    first = await drain(source, None, want=0)
    assert first.cdrs == [] and first.checkpoint is not None
    mysql.insert([row("1772446000.1", sequence=8, end="2026-03-02 10:02:00", duration=120,
                      billsec=115)])  # fmt: skip
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["1772446000.1:8"]


async def test_mysql_legacy_cdr_mysql_layout(mysql: MySQLDatabase) -> None:
    mysql.execute(LEGACY_MYSQL_SCHEMA)
    legacy = []
    for r in CALLS:
        legacy.append({"calldate": r["start"], "clid": r["clid"], "src": r["src"],
                       "dst": r["dst"], "dcontext": r["dcontext"], "channel": r["channel"],
                       "dstchannel": r["dstchannel"], "lastapp": r["lastapp"],
                       "lastdata": r["lastdata"], "duration": r["duration"],
                       "billsec": r["billsec"], "disposition": r["disposition"], "amaflags": 3,
                       "accountcode": r["accountcode"], "uniqueid": r["uniqueid"],
                       "userfield": "198.51.100.4"})  # fmt: skip
    mysql.insert(legacy)
    options = mysql.options(timezone="UTC", src_ip_field="userfield")
    options["store"] = "mysql-legacy"
    got = await drain(make_source(options), None, want=3)
    by_key = {c.key: c for c in got.cdrs}
    assert sorted(by_key) == ["1772445600.1", "1772445600.3", "1772445601.2"]
    first = by_key["1772445600.1"]
    assert first.start == utc(2026, 3, 2, 10)
    assert first.end == utc(2026, 3, 2, 10, 1, 5)  # calldate + duration
    assert first.answer == utc(2026, 3, 2, 10, 0, 5)  # end - billsec
    assert first.src_ip == "198.51.100.4"
    assert by_key["1772445601.2"].disposition is Disposition.NO_ANSWER


async def test_mysql_failures_are_clear(mysql: MySQLDatabase) -> None:
    with pytest.raises(SourceError, match=r"table cdr: .*(doesn't exist|1146)"):
        await make_source(mysql.options()).check()
    create_reference_mysql_cdr(mysql)
    with pytest.raises(SourceError, match="src_ip_field 'src_ip' is not a column"):
        await make_source(mysql.options(src_ip_field="src_ip")).check()
    with pytest.raises(SourceError, match="Unknown column 'id'"):
        await make_source(mysql.options(id_column="id")).check()
    bad = mysql.options()
    bad["user"] = "nobody_cdrstats"
    with pytest.raises(SourceError, match="Access denied for user 'nobody_cdrstats'"):
        await make_source(bad).check()
    closed = mysql.options(port=1)
    with pytest.raises(SourceError, match=r"mysql root@127\.0\.0\.1:1/"):
        await make_source(closed).check()


async def test_mysql_a_bad_row_is_rejected_and_the_rest_read(mysql: MySQLDatabase) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.insert([row("ok.1", sequence=1),
                  row("bad.2", sequence=2, answer="2026-03-02 09:00:00")])  # fmt: skip
    got = await drain(make_source(mysql.options(timezone="UTC")), None, want=2)
    assert [c.key for c in got.cdrs] == ["ok.1:1"]
    (bad,) = got.rejected
    assert bad.where == "cdr:end=2026-03-02 10:01:05"
    assert "answer time 2026-03-02T09:00:00+00:00 is before start" in bad.reason


async def test_mysql_a_row_from_the_future_does_not_move_the_window(
    mysql: MySQLDatabase,
) -> None:
    create_reference_mysql_cdr(mysql)
    mysql.insert([row("clock.1", sequence=1, start="2099-01-01 10:00:00",
                      answer="2099-01-01 10:00:05", end="2099-01-01 10:01:05")])  # fmt: skip
    source = make_source(mysql.options(timezone="UTC", lookback=10))
    first = await drain(source, None, want=1)
    (bad,) = first.rejected
    assert "more than a day ahead of this host's clock" in bad.reason
    mysql.insert([row("ok.2", sequence=2)])  # a normal row, far below 2099
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["ok.2:2"] and second.rejected == []


async def test_mysql_connection_killed_mid_read_then_resumed(mysql: MySQLDatabase) -> None:
    """The server drops the reader's connection: read() raises (the agent restarts the
    source from its last committed checkpoint) and the resumed reader misses nothing."""
    create_reference_mysql_cdr(mysql)
    t0 = datetime(2026, 3, 2, 10, 1, 5)
    mysql.insert([row(f"kill.{i}", sequence=i, end=str(t0 + timedelta(seconds=i)),
                      duration=65 + i, billsec=60 + i) for i in range(200)])  # fmt: skip
    source = make_source(mysql.options(timezone="UTC", chunk_cdrs=20))
    agen = source.read(None)
    results = [await anext(agen), await anext(agen)]
    with contextlib.closing(mysql.connect()) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (mysql.name,),
        )
        for (pid,) in cur.fetchall():
            cur.execute(f"KILL {int(pid)}")
    with pytest.raises(pymysql.err.MySQLError):
        while True:
            results.append(await anext(agen))
    await source.close()
    got = [c.key for r in results for c in r.cdrs]
    rest = await drain(source, results[-1].checkpoint, want=200 - len(got))
    assert not rest.rejected and not [x for r in results for x in r.rejected]
    keys = got + [c.key for c in rest.cdrs]
    assert sorted(keys) == sorted(f"kill.{i}:{i}" for i in range(200))


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.__dict__["cdrstats_fields"]["hint"] for r in caplog.records
            if r.getMessage() == "cursor_not_indexed"]  # fmt: skip


async def test_mysql_unset_answer_written_as_a_zero_time(mysql: MySQLDatabase) -> None:
    """An unanswered call whose answer column holds the epoch (in local time) or a zero date
    instead of NULL is read as unanswered."""
    create_reference_mysql_cdr(mysql)
    mysql.insert([row("zero.1", sequence=1, answer="1970-01-01 01:00:00", billsec=0,
                      disposition="NO ANSWER")])  # fmt: skip
    with contextlib.closing(mysql.connect()) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute("INSERT INTO cdr (uniqueid, sequence, start, answer, end, duration, billsec,"
                    " disposition) VALUES ('zero.2', 2, '2026-03-02 10:00:00',"
                    " '0000-00-00 00:00:00', '2026-03-02 10:00:30', 30, 0, 'BUSY')")  # fmt: skip
    got = await drain(make_source(mysql.options(timezone="Europe/Paris")), None, want=2)
    assert not got.rejected
    by_key = {c.key: c for c in got.cdrs}
    assert by_key["zero.1:1"].answer is None
    assert by_key["zero.1:1"].disposition is Disposition.NO_ANSWER
    assert by_key["zero.2:2"].answer is None and by_key["zero.2:2"].ring_time == 30
    assert by_key["zero.2:2"].disposition is Disposition.BUSY


async def test_mysql_check_warns_when_the_cursor_has_no_index(
    mysql: MySQLDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cdrstats.plugins.asterisk")
    create_reference_mysql_cdr(mysql)
    await make_source(mysql.options()).check()
    (hint,) = _warned(caplog)
    assert "CREATE INDEX cdr_end ON cdr (`end`)" in hint
    caplog.clear()
    mysql.execute("CREATE INDEX cdr_end ON cdr (`end`)")
    await make_source(mysql.options()).check()
    assert _warned(caplog) == []


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    name = create_database(pg_admin_url)
    url = with_dbname(pg_admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in sql_statements(REFERENCE / "contrib_realtime_postgresql_cdr.sql"):
            conn.execute(stmt)
    try:
        yield url
    finally:
        drop_database(pg_admin_url, name)


def pg_insert(url: str, rows: list[dict[str, Any]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for r in rows:
            cols = list(r)
            conn.execute(
                f"INSERT INTO cdr ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                f"VALUES ({', '.join(['%s'] * len(cols))})",
                [None if c in ("start", "answer", "end") and r[c] == "" else r[c] for c in cols],
            )


async def test_pgsql_reference_schema_read_restart_and_new_rows(pg_url: str) -> None:
    pg_insert(pg_url, CALLS)
    source = make_source({"store": "pgsql", "conninfo": pg_url, "timezone": "UTC"})
    await source.check()
    first = await drain(source, None, want=3)
    check_calls(first.cdrs)
    pg_insert(pg_url, [row("1772445700.9", sequence=9, end="2026-03-02 10:01:04")])
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["1772445700.9:9"]


async def test_pgsql_local_time_across_the_end_of_dst(pg_url: str) -> None:
    def at(hhmm: str, start: str = "", duration: int = 0) -> dict[str, Any]:
        # a call ending at hhmm local time; `start` (CEST) for one that crossed 03:00 CEST
        end = f"2026-10-25 {hhmm}:00"
        start = f"2026-10-25 {start}:00" if start else end
        return row(f"dst.{hhmm}", start=start, answer=start, end=end, duration=duration,
                   billsec=duration, sequence=int(hhmm.replace(":", "")))  # fmt: skip

    pg_insert(pg_url, [at("02:57"), at("02:59")])  # CEST, before the change
    options = {"store": "pgsql", "conninfo": pg_url, "timezone": "Europe/Paris", "lookback": 60}
    source = make_source(options)
    first = await drain(source, None, want=2)
    # CET: the same hour again (02:50 CEST -> 02:05 CET is 15 minutes, 02:53 -> 02:30 is 37)
    pg_insert(pg_url, [at("02:05", "02:50", 900), at("02:30", "02:53", 2220)])
    second = await drain(source, first.checkpoint, want=2)
    assert sorted(c.end for c in second.cdrs if c.end) == [
        utc(2026, 10, 25, 1, 5), utc(2026, 10, 25, 1, 30),
    ]  # fmt: skip


async def test_pgsql_check_warns_when_the_cursor_has_no_index(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cdrstats.plugins.asterisk")
    await make_source({"store": "pgsql", "conninfo": pg_url}).check()
    (hint,) = _warned(caplog)
    assert 'CREATE INDEX cdr_end ON cdr ("end")' in hint
    caplog.clear()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE INDEX cdr_end ON cdr ("end")')
    await make_source({"store": "pgsql", "conninfo": pg_url}).check()
    assert _warned(caplog) == []


async def test_pgsql_failures_are_clear(pg_admin_url: str) -> None:
    missing = with_dbname(pg_admin_url, "cdrstats_no_such_db")
    with pytest.raises(SourceError, match='database "cdrstats_no_such_db" does not exist'):
        await make_source({"store": "pgsql", "conninfo": missing}).check()
    name = create_database(pg_admin_url)
    try:
        url = with_dbname(pg_admin_url, name)
        with pytest.raises(SourceError, match='relation "cdr" does not exist'):
            await make_source({"store": "pgsql", "conninfo": url}).check()
    finally:
        drop_database(pg_admin_url, name)


# --- SQLite ----------------------------------------------------------------------------


async def test_sqlite_custom_table_by_acctid(tmp_path: Path) -> None:
    db = tmp_path / "master.db"
    create_sqlite_custom(db)
    sqlite_insert(db, [sqlite_row(r) for r in CALLS])
    source = make_source({"store": "sqlite", "path": str(db), "timezone": "UTC"})
    await source.check()
    first = await drain(source, None, want=3)
    keys = sorted(c.key for c in first.cdrs)
    assert keys == ["1772445600.1", "1772445600.3", "1772445601.2"]  # no sequence column
    by_key = {c.key: c for c in first.cdrs}
    one = by_key["1772445600.1"]
    assert one.start == utc(2026, 3, 2, 10) and one.end == utc(2026, 3, 2, 10, 1, 5)
    assert one.caller_name == 'Doe, John "JD"' and one.caller == "1000"
    assert by_key["1772445601.2"].disposition is Disposition.NO_ANSWER
    sqlite_insert(db, [sqlite_row(row("1772446100.1"))])
    second = await drain(source, first.checkpoint, want=1)
    assert [c.key for c in second.cdrs] == ["1772446100.1"]


async def test_sqlite_failures_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unable to open database file"):
        await make_source({"store": "sqlite", "path": str(tmp_path / "none.db")}).check()
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, foo, bar)")
    with pytest.raises(SourceError, match="not an Asterisk cdr table"):
        await make_source({"store": "sqlite", "path": str(db)}).check()
    with pytest.raises(SourceError, match="cannot resume from checkpoint"):
        create_sqlite_custom(tmp_path / "ok.db")
        source = make_source({"store": "sqlite", "path": str(tmp_path / "ok.db")})
        await drain(source, '{"kind": "time", "floor": null, "seen": []}', want=0)


def test_pymysql_is_the_driver() -> None:
    assert pymysql.__name__ == "pymysql"
