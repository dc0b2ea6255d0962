"""mod_cdr_pg_csv: the module's own create.sql in a scratch PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cdrstats_agent.errors import SourceError
from freeswitch_testkit import REFERENCE, Reader, call_variables, make_source

from tests.fix_db import create_database, drop_database, with_dbname

FIELDS = (
    "local_ip_v4",
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
    "uuid",
    "bleg_uuid",
    "accountcode",
    "read_codec",
    "write_codec",
    "sip_hangup_disposition",
    "ani",
)


@pytest.fixture
def fs_pg(pg_admin_url: str) -> Iterator[str]:
    """A scratch database holding mod_cdr_pg_csv's `cdr` table (scripts/create.sql)."""
    name = create_database(pg_admin_url)
    url = with_dbname(pg_admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((REFERENCE / "mod_cdr_pg_csv_create.sql").read_text())
            # the switch writes local stamps; the session zone is the switch's
        yield url
    finally:
        drop_database(pg_admin_url, name)


def row(n: int, **changes: Any) -> dict[str, Any]:
    v: dict[str, Any] = {**call_variables(n), "local_ip_v4": "192.0.2.1", "ani": "1000"}
    v["answer_stamp"] = v["answer_stamp"] or None
    v["bleg_uuid"] = v["bleg_uuid"] or None
    v["sip_hangup_disposition"] = "send_bye"
    v.update(changes)
    return {k: v[k] for k in FIELDS}


def insert(conn: psycopg.Connection[Any], numbers: range) -> None:
    """As mod_cdr_pg_csv does: one INSERT per CDR with the schema's fields, local stamps."""
    conn.execute("SET TIME ZONE 'Europe/Paris'")
    for n in numbers:
        r = row(n)
        conn.execute(
            f"INSERT INTO cdr ({', '.join(FIELDS)}) VALUES ({', '.join(['%s'] * len(FIELDS))})",
            list(r.values()),
        )


def keys(numbers: range) -> list[str]:
    return [call_variables(n)["uuid"] for n in numbers]


async def test_rows_with_the_switch_schema(fs_pg: str) -> None:
    with psycopg.connect(fs_pg, autocommit=True) as conn:
        insert(conn, range(5))
    reader = Reader(make_source({"store": "pg", "dsn": fs_pg, "chunk_cdrs": 2}))
    try:
        cdrs = await reader.take(5)
        assert [c.key for c in cdrs] == keys(range(5))
        first = cdrs[0]
        assert first.start.isoformat() == "2026-03-01T09:00:00+00:00"
        assert first.answer is not None and first.answer.isoformat() == "2026-03-01T09:00:03+00:00"
        assert (first.duration, first.billsec, first.hangup_cause) == (33, 30, 16)
        assert (first.read_codec, first.accountcode, first.caller) == ("PCMA", "acct0", "1000")
        assert first.extra["local_ip_v4"] == "192.0.2.1"
        assert first.extra["sip_hangup_disposition"] == "send_bye"
        assert "id" not in first.extra
        await reader.quiet()
        checkpoint = reader.checkpoint
    finally:
        await reader.close()
    with psycopg.connect(fs_pg, autocommit=True) as conn:
        insert(conn, range(5, 7))
    again = Reader(make_source({"store": "pg", "dsn": fs_pg}), checkpoint)
    try:
        await again.take(2)
        await again.quiet()
        assert [c.key for c in again.cdrs] == keys(range(5, 7))
    finally:
        await again.close()


async def test_an_open_transaction_is_waited_for_and_a_rollback_skipped(fs_pg: str) -> None:
    with psycopg.connect(fs_pg, autocommit=True) as conn:
        insert(conn, range(2))
    slow = psycopg.connect(fs_pg)
    fast = psycopg.connect(fs_pg, autocommit=True)
    reader = Reader(make_source({"store": "pg", "dsn": fs_pg, "gap_wait_s": 60.0}))
    try:
        await reader.take(2)
        insert(slow, range(2, 3))  # id 3, not committed yet
        insert(fast, range(3, 4))  # id 4, committed
        await reader.quiet(0.3)  # id 4 is visible but must wait for id 3
        slow.commit()
        await reader.take(2)
        assert [c.key for c in reader.cdrs] == keys(range(4))
        insert(slow, range(4, 5))  # id 5, rolled back: a hole for good
        slow.rollback()
        insert(fast, range(5, 6))  # id 6
        await reader.quiet(0.3)
        checkpoint = reader.checkpoint
    finally:
        await reader.close()
        slow.close()
        fast.close()
    impatient = Reader(make_source({"store": "pg", "dsn": fs_pg, "gap_wait_s": 0.0}), checkpoint)
    try:
        await impatient.take(1)
        assert [c.key for c in impatient.cdrs] == keys(range(5, 6))
        assert impatient.source.store.stats["gaps_skipped"] == 1
    finally:
        await impatient.close()


async def test_check_names_the_problem(fs_pg: str, pg_admin_url: str) -> None:
    source = make_source({"store": "pg", "dsn": fs_pg, "table": "cdr_missing"})
    with pytest.raises(SourceError, match="no table 'cdr_missing'"):
        await source.check()
    with psycopg.connect(fs_pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE cdr_noid (uuid uuid, start_stamp timestamptz)")
    source = make_source({"store": "pg", "dsn": fs_pg, "table": "cdr_noid"})
    with pytest.raises(SourceError, match=r"no column 'id'.*id serial primary key"):
        await source.check()
    source = make_source({"store": "pg", "dsn": "host=127.0.0.1 port=1 connect_timeout=2"})
    with pytest.raises(SourceError, match="cannot connect to PostgreSQL"):
        await source.check()
    await make_source({"store": "pg", "dsn": fs_pg}).check()
