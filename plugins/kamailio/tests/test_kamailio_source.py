"""The source against real databases (no Kamailio): MariaDB with the Kamailio schema, PostgreSQL.

Rows are inserted as Kamailio's acc module writes them; the source reads them through
pymysql / psycopg, with its checkpoints, id gaps, column mapping and error reporting.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cdrstats_agent.errors import ConfigError, SourceError
from cdrstats_agent.model import Disposition
from cdrstats_agent.plugin import native_actions, supports_live
from cdrstats_kamailio.db import Database, GapGuard
from cdrstats_kamailio.plugin import KamailioLiveSource, KamailioPlugin, KamailioSource
from kamailio_testkit import KamailioDB, collect

T0 = (datetime.now(UTC) - timedelta(minutes=10)).replace(tzinfo=None, microsecond=0)
"""Recent: open calls older than open_call_timeout_s (4 h) would be closed by the timeout."""


def source(db_url: str, **options: Any) -> KamailioSource:
    base = {"db_url": db_url, "timezone": "UTC", "poll_s": 0.02, "gap_wait_s": 0.3}
    return KamailioPlugin().create_source("kam", {**base, **options})


def acc_row(
    db: KamailioDB, table: str, method: str, callid: str, ft: str, tt: str, code: str, at: int,
    row_id: int | None = None, **extra: str,
) -> None:  # fmt: skip
    cols: dict[str, Any] = {"method": method, "callid": callid, "from_tag": ft, "to_tag": tt,
                            "sip_code": code, "sip_reason": "x",
                            "time": T0 + timedelta(seconds=at), **extra}  # fmt: skip
    if row_id is not None:
        cols["id"] = row_id
    names = ", ".join(f"`{c}`" for c in cols)
    marks = ", ".join(["%s"] * len(cols))
    db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(cols.values()))


def call(db: KamailioDB, n: int, at: int, seconds: int, **extra: str) -> None:
    columns = {"src_user": "1001", "dst_ouser": f"06{n:08d}", "src_ip": "203.0.113.9", **extra}
    acc_row(db, "acc", "INVITE", f"c{n}@h", f"f{n}", f"t{n}", "200", at, None, **columns)
    acc_row(db, "acc", "BYE", f"c{n}@h", f"t{n}", f"f{n}", "200", at + seconds)


async def test_reads_pairs_and_resumes_from_its_checkpoint(scratch_db: KamailioDB) -> None:
    db = scratch_db
    call(db, 1, 0, 30)
    acc_row(db, "acc", "INVITE", "c2@h", "f2", "t2", "200", 5, src_user="1002", dst_ouser="2")
    acc_row(db, "missed_calls", "INVITE", "m1@h", "mf", "mt", "486", 6, src_user="1003")
    src = source(db.url, country_code="33")
    cdrs, rejected, checkpoint = await collect(src, lambda c: len(c) == 2)
    assert rejected == []
    by_key = {c.key: c for c in cdrs}
    one = by_key["c1@h;f1"]
    assert (one.duration, one.callee, one.callee_e164, one.src_ip) == (
        30, "0600000001", "+33600000001", "203.0.113.9",
    )  # fmt: skip
    assert by_key["m1@h;mf"].disposition == Disposition.BUSY
    assert checkpoint is not None
    doc = json.loads(checkpoint)
    assert [o[0] for o in doc["open"]] == ["c2@h"], "the unanswered INVITE is in the checkpoint"

    # the agent stops here; the BYE comes while it is down
    acc_row(db, "acc", "BYE", "c2@h", "f2", "t2", "200", 65)
    again = source(db.url)
    cdrs2, _, checkpoint2 = await collect(again, lambda c: len(c) >= 1, checkpoint=checkpoint)
    assert [(c.key, c.duration, c.caller) for c in cdrs2] == [("c2@h;f2", 60, "1002")]
    assert json.loads(checkpoint2 or "{}")["open"] == []


async def test_rows_after_a_gap_in_ids_wait_for_it_then_go(
    scratch_db: KamailioDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = scratch_db
    call(db, 1, 0, 10)  # ids 1, 2
    acc_row(db, "acc", "INVITE", "c3@h", "f3", "t3", "200", 20, row_id=4)  # id 3 still "committing"
    acc_row(db, "acc", "BYE", "c3@h", "f3", "t3", "200", 25, row_id=5)
    queries = 0
    real = Database.rows_after

    def counted(self: Database, table: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        nonlocal queries
        queries += 1
        return real(self, table, after_id, limit)

    monkeypatch.setattr(Database, "rows_after", counted)
    cdrs, _, checkpoint = await collect(
        source(db.url, gap_wait_s=0.5, poll_s=0.1), lambda c: len(c) == 2, limit_s=10
    )
    assert sorted(c.key for c in cdrs) == ["c1@h;f1", "c3@h;f3"]
    assert json.loads(checkpoint or "{}")["acc"] == 5
    assert queries < 40, (
        f"{queries} queries while rows waited behind the gap (polling, not spinning)"
    )


def test_gap_guard_takes_contiguous_rows_now_and_others_after_the_wait() -> None:
    guard = GapGuard(2.0)
    rows = [{"id": i} for i in (11, 12, 14, 15)]
    assert [r["id"] for r in guard.accept(10, rows, now=100.0)] == [11, 12]
    assert [r["id"] for r in guard.accept(12, rows[2:], now=101.0)] == []
    assert [r["id"] for r in guard.accept(12, rows[2:], now=102.1)] == [14, 15]
    assert GapGuard(0).accept(0, rows) == rows


async def test_unusable_rows_are_rejected_with_table_and_id(scratch_db: KamailioDB) -> None:
    db = scratch_db
    acc_row(db, "acc", "BYE", "lost@h", "a", "b", "200", 1)
    acc_row(db, "acc", "INVITE", "c@h", "f", "t", "2x", 2)
    call(db, 1, 3, 4)
    cdrs, rejected, _ = await collect(source(db.url), lambda c: len(c) == 1)
    assert [c.key for c in cdrs] == ["c1@h;f1"]
    assert [(r.where, r.reason[:25]) for r in rejected] == [
        ("acc:1", "BYE of Call-ID 'lost@h' m"),
        ("acc:2", "sip_code '2x' is not a SI"),
    ]


async def test_db_extra_columns_are_mapped_by_configuration(scratch_db: KamailioDB) -> None:
    db = scratch_db
    db.execute("ALTER TABLE acc ADD COLUMN trunk_name VARCHAR(64) NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE missed_calls ADD COLUMN trunk_name VARCHAR(64) NOT NULL DEFAULT ''")
    call(db, 1, 0, 5, trunk_name="carrier-a", ua="Yealink")
    src = source(
        db.url,
        fields={"caller": "dst_ouser", "callee": "src_user", "trunk": "trunk_name",
                "user_agent": "ua"},
    )  # fmt: skip
    (cdr,), _, _ = await collect(src, lambda c: len(c) == 1)
    assert (cdr.caller, cdr.callee, cdr.trunk, cdr.user_agent) == (
        "0600000001",
        "1001",
        "carrier-a",
        "Yealink",
    )
    assert cdr.src_ip is None, "not mapped, so not set"
    assert cdr.extra["src_ip"] == "203.0.113.9" and cdr.extra["trunk_name"] == "carrier-a"


async def test_a_mapped_column_that_does_not_exist_is_named(scratch_db: KamailioDB) -> None:
    src = source(scratch_db.url, fields={"caller": "calling_number"})
    with pytest.raises(SourceError, match="caller = 'calling_number'"):
        await src.check()
    with pytest.raises(SourceError, match="add it with db_extra"):
        await collect(src, lambda c: False, limit_s=5)


async def test_check_names_a_missing_table_and_an_unreachable_server(
    scratch_db: KamailioDB,
) -> None:
    scratch_db.execute("DROP TABLE missed_calls")
    with pytest.raises(SourceError, match="missed_calls"):
        await source(scratch_db.url).check()
    await source(scratch_db.url, failed_from="acc").check()  # does not need missed_calls
    with pytest.raises(SourceError, match=r"cannot connect to mysql://kam:\*\*\*@127.0.0.1:1/"):
        await source("mysql://kam:secret@127.0.0.1:1/kamailio").check()


async def test_acc_cdrs_without_key_columns_is_refused(scratch_db: KamailioDB) -> None:
    src = source(scratch_db.url, records="acc_cdrs", key_columns=["call_id", "ftag"])
    with pytest.raises(SourceError, match=r"has no column.*call_id, ftag.*cdr_extra"):
        await src.check()


PG_SCHEMA = """
CREATE TABLE acc (id SERIAL PRIMARY KEY, method VARCHAR(16) NOT NULL DEFAULT '',
  from_tag VARCHAR(128) NOT NULL DEFAULT '', to_tag VARCHAR(128) NOT NULL DEFAULT '',
  callid VARCHAR(255) NOT NULL DEFAULT '', sip_code VARCHAR(3) NOT NULL DEFAULT '',
  sip_reason VARCHAR(128) NOT NULL DEFAULT '', time TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  src_user VARCHAR(64) NOT NULL DEFAULT '', dst_ouser VARCHAR(64) NOT NULL DEFAULT '');
CREATE TABLE missed_calls (LIKE acc INCLUDING ALL);
CREATE TABLE acc_cdrs (id SERIAL PRIMARY KEY,
  start_time TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT '2000-01-01 00:00:00',
  end_time TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT '2000-01-01 00:00:00',
  duration REAL NOT NULL DEFAULT 0, callid VARCHAR(255) NOT NULL DEFAULT '',
  from_tag VARCHAR(128) NOT NULL DEFAULT '', src_user VARCHAR(64) NOT NULL DEFAULT '',
  dst_user VARCHAR(64) NOT NULL DEFAULT '', sip_code VARCHAR(3) NOT NULL DEFAULT '');
"""


async def test_postgresql_acc_and_acc_cdrs(empty_database_url: str) -> None:
    """Kamailio's db_postgres tables (same columns, TIMESTAMP for DATETIME) through psycopg."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)
        for method, ft, tt, at in (("INVITE", "f1", "t1", 0), ("BYE", "t1", "f1", 42)):
            conn.execute(
                "INSERT INTO acc (method, callid, from_tag, to_tag, sip_code, time, src_user,"
                " dst_ouser) VALUES (%s, 'pg1@h', %s, %s, '200', %s, '1001', '2002')",
                (method, ft, tt, T0 + timedelta(seconds=at)),
            )
        conn.execute(
            "INSERT INTO acc_cdrs (start_time, end_time, duration, callid, from_tag, src_user,"
            " dst_user, sip_code) VALUES (%s, %s, 42.4, 'pg1@h', 'f1', '1001', '2002', '200')",
            (T0, T0 + timedelta(seconds=42)),
        )
    (paired,), _, _ = await collect(source(empty_database_url), lambda c: len(c) == 1)
    assert (paired.key, paired.duration, paired.caller, paired.callee) == (
        "pg1@h;f1", 42, "1001", "2002",
    )  # fmt: skip
    assert paired.start == T0.replace(tzinfo=UTC)
    (dialog,), _, _ = await collect(
        source(empty_database_url, records="acc_cdrs"), lambda c: len(c) == 1
    )
    assert (dialog.key, dialog.billsec, dialog.disposition, dialog.callee) == (
        "pg1@h;f1", 42, Disposition.ANSWERED, "2002",
    )  # fmt: skip
    assert dialog.extra["duration_exact"] == pytest.approx(42.4)


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({}, "db_url", "is required"),
        ({"db_url": "sqlite:///x"}, "db_url", "unsupported database URL"),
        ({"records": "cdr"}, "records", "must be one of acc, acc_cdrs"),
        ({"failed_from": "both"}, "failed_from", "must be one of missed_calls, acc"),
        ({"acc_table": "acc; DROP"}, "acc_table", "not a plain table name"),
        ({"fields": {"caller": "a-b"}}, "fields.caller", "not a plain column name"),
        ({"fields": {"calller": "x"}}, "fields.calller", "is not a known option"),
        ({"key_columns": ["callid"]}, "key_columns", "must name two columns"),
        ({"timezone": "Mars/Base"}, "timezone", "unknown timezone"),
        ({"country_code": "+33"}, "country_code", "must be 1 to 3 digits"),
        ({"rpc_url": "127.0.0.1:5071"}, "rpc_url", "must be an http:// URL"),
        ({"ban_table": "ip ban"}, "ban_table", "not an htable name"),
        ({"poll_s": 0}, "poll_s", "must be at least"),
        ({"open_call_timeout_s": "1h"}, "open_call_timeout_s", "must be a number"),
        ({"colour": "red"}, "colour", "is not a known option"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, message: str) -> None:
    table = {"db_url": "mysql://k@127.0.0.1/kamailio", **options}
    if options == {}:
        table = {}
    with pytest.raises(ConfigError) as info:
        KamailioPlugin().create_source("kam", table)
    assert info.value.key == key and message in info.value.problem


def test_passwords_never_appear_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        KamailioPlugin().create_source("kam", {"db_url": "oracle://u:hunter2@h/db"})
    assert "hunter2" not in str(info.value)


async def test_live_keeps_retrying_while_kamailio_rpc_is_unreachable() -> None:
    src = source("mysql://k@127.0.0.1/kamailio", rpc_url="http://127.0.0.1:1/RPC",
                 live_interval_s=0.05)  # fmt: skip
    assert isinstance(src, KamailioLiveSource)
    events: list[Any] = []

    async def consume() -> None:
        async for event in src.live():
            events.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    assert not task.done(), "live() must not end on a connection error"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == []
    await src.close()


def test_no_rpc_url_means_no_live_and_no_native_actions() -> None:
    plain = source("mysql://k@127.0.0.1/kamailio")
    assert not supports_live(plain) and native_actions(plain) == {}
    with_rpc = source("mysql://k@127.0.0.1/kamailio", rpc_url="http://127.0.0.1:5071/RPC")
    assert supports_live(with_rpc)
    assert set(native_actions(with_rpc)) == {"block_ip", "unblock_ip"}
    no_ban = source("mysql://k@127.0.0.1/k", rpc_url="http://h/RPC", ban_table="")
    assert supports_live(no_ban) and native_actions(no_ban) == {}


async def test_a_table_emptied_behind_the_checkpoint_is_reported(scratch_db: KamailioDB) -> None:
    call(scratch_db, 1, 0, 5)
    _, _, checkpoint = await collect(source(scratch_db.url), lambda c: len(c) == 1)
    scratch_db.execute("TRUNCATE TABLE acc")
    acc_row(scratch_db, "acc", "INVITE", "c2@h", "f2", "t2", "200", 10)  # ids start again at 1
    with pytest.raises(SourceError, match="table acc ends before the checkpoint"):
        await collect(source(scratch_db.url), lambda c: False, limit_s=5, checkpoint=checkpoint)
