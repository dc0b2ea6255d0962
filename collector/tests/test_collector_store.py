"""The ingest transaction (store.Ingestor) and partitions, straight against PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import date, timedelta

import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.model import CDR_FIELDS
from cdrstats_collector import partitions, store
from collector_testkit import NOW, body_of, full_cdr


def _checked(cdrs: list) -> list:  # type: ignore[type-arg]
    body = wire.parse_body(body_of(cdrs))
    return wire.check_rows(body.fields, body.rows)


def _agent(database_url: str) -> store.AgentRef:
    agent_id = uuid.uuid4()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "WITH t AS (INSERT INTO tenant (name) VALUES ('t') RETURNING id),"
            " s AS (INSERT INTO switch (tenant_id, name) SELECT id, 'sw' FROM t"
            "       RETURNING tenant_id, id)"
            " INSERT INTO agent (id, tenant_id, switch_id, public_key)"
            " SELECT %s, tenant_id, id, %s FROM s RETURNING tenant_id, switch_id",
            (agent_id, b"\x01" * 32),
        ).fetchone()
    assert row is not None
    return store.AgentRef(agent_id, row[0], row[1])


async def test_one_notification_per_batch_at_commit(database_url: str) -> None:
    agent = _agent(database_url)
    ingestor = store.Ingestor()
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(database_url) as conn,
    ):
        await listener.execute("LISTEN cdr_ingest")
        cdrs = [full_cdr(i) for i in range(50)]
        out = await ingestor.ingest(conn, agent, 1, b"d" * 32, _checked(cdrs))
        assert isinstance(out, store.Stored) and out.ack.accepted == 50
        # all duplicates: nothing new to announce
        out = await ingestor.ingest(conn, agent, 2, b"e" * 32, _checked(cdrs))
        assert isinstance(out, store.Stored) and out.ack.duplicates == 50
        notes = []
        async for note in listener.notifies(timeout=0.5):
            notes.append(note)
    assert len(notes) == 1
    assert json.loads(notes[0].payload) == {
        "tenant_id": agent.tenant_id,
        "switch_id": agent.switch_id,
        "agent_id": str(agent.id),
        "accepted": 50,
    }


async def test_duplicates_inside_one_batch(database_url: str) -> None:
    agent = _agent(database_url)
    cdrs = [full_cdr(0), full_cdr(1), full_cdr(0)]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        out = await store.Ingestor().ingest(conn, agent, 1, b"d" * 32, _checked(cdrs))
        assert out == store.Stored(wire.Ack(seq=1, accepted=2, duplicates=1))
        cur = await conn.execute("SELECT count(*) FROM cdr")
        assert await cur.fetchone() == (2,)


async def test_empty_batch_is_recorded(database_url: str) -> None:
    agent = _agent(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        out = await store.Ingestor().ingest(conn, agent, 1, b"d" * 32, [])
        assert out == store.Stored(wire.Ack(seq=1, accepted=0, duplicates=0))
        again = await store.Ingestor().ingest(conn, agent, 1, b"d" * 32, [])
        assert isinstance(again, store.Redelivery)


async def test_bad_row_stores_nothing_and_names_the_field(database_url: str) -> None:
    agent = _agent(database_url)
    rows = _checked([full_cdr(0), full_cdr(1)])
    rows[1][CDR_FIELDS.index("callee")] = "12\x0034"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(store.BadRows, match=r"cdrs\[1\]: callee"):
            await store.Ingestor().ingest(conn, agent, 1, b"d" * 32, rows)
        cur = await conn.execute("SELECT count(*) FROM cdr UNION ALL SELECT last_seq FROM agent")
        assert await cur.fetchall() == [(0,), (0,)]


async def test_partition_created_on_demand_for_an_old_month(database_url: str) -> None:
    agent = _agent(database_url)
    old = NOW.replace(year=2019, month=3, day=31, hour=23, minute=59)
    cdrs = [full_cdr(0, start=old), full_cdr(1, start=old + timedelta(minutes=2))]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        out = await store.Ingestor().ingest(conn, agent, 1, b"d" * 32, _checked(cdrs))
        assert isinstance(out, store.Stored) and out.ack.accepted == 2
        cur = await conn.execute("SELECT tableoid::regclass::text, key FROM cdr ORDER BY key")
        assert await cur.fetchall() == [("cdr_y2019m03", "call-0"), ("cdr_y2019m04", "call-1")]


async def test_stale_partition_cache_is_a_retry_not_a_loss(database_url: str) -> None:
    agent = _agent(database_url)
    ingestor = store.Ingestor()
    old = NOW.replace(year=2020, month=6, day=15)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert isinstance(
            await ingestor.ingest(conn, agent, 1, b"a" * 32, _checked([full_cdr(0, start=old)])),
            store.Stored,
        )
        await conn.execute("DROP TABLE cdr_y2020m06")  # retention dropped it meanwhile
        await conn.commit()
        with pytest.raises(store.StoreUnavailable):
            await ingestor.ingest(conn, agent, 2, b"b" * 32, _checked([full_cdr(1, start=old)]))
        out = await ingestor.ingest(conn, agent, 2, b"b" * 32, _checked([full_cdr(1, start=old)]))
        assert isinstance(out, store.Stored) and out.ack.accepted == 1


def test_concurrent_partition_creation(database_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait()
                conn.execute("SELECT cdr_ensure_partition('2018-07-09')")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(database_url) as conn:
        assert "cdr_y2018m07" in partitions.existing(conn)


async def test_concurrent_batches_of_one_agent_keep_seq_order(database_url: str) -> None:
    """Two sends of the same seq racing: one stores, the other sees a redelivery."""
    agent = _agent(database_url)
    body = _checked([full_cdr(i) for i in range(20)])
    body2 = [list(r) for r in body]

    async def send(rows: list) -> store.Outcome:  # type: ignore[type-arg]
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await store.Ingestor().ingest(conn, agent, 1, b"s" * 32, rows)

    outs = await asyncio.gather(send(body), send(body2))
    kinds = sorted(type(o).__name__ for o in outs)
    assert kinds == ["Redelivery", "Stored"]


def test_month_helpers() -> None:
    assert partitions.add_months(date(2026, 11, 1), 2) == date(2027, 1, 1)
    assert partitions.add_months(date(2026, 1, 1), -1) == date(2025, 12, 1)
    day = wire.to_us(NOW.replace(year=2024, month=2, day=29)) // partitions.DAY_US
    assert partitions.month_of_day(day) == date(2024, 2, 1)
    assert partitions.partition_name(date(2024, 2, 1)) == "cdr_y2024m02"


async def test_maintenance_prunes_old_batch_records(database_url: str) -> None:
    from cdrstats_collector import maintenance

    agent = _agent(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for seq in (1, 2):
            await store.Ingestor().ingest(conn, agent, seq, bytes([seq]) * 32, [])
        await conn.execute(
            "UPDATE ingest_batch SET received_at = now() - interval '40 days' WHERE seq = 1"
        )
        await conn.commit()
        report = await maintenance.run(conn, months_ahead=4, batch_keep_days=30)
        assert report == maintenance.Report(partitions_ensured=5, batches_pruned=1)
        cur = await conn.execute("SELECT seq FROM ingest_batch")
        assert await cur.fetchall() == [(2,)]
        # the pruned seq is now unknown and below last_seq: a replay, refused
        out = await store.Ingestor().ingest(conn, agent, 1, bytes([1]) * 32, [])
        assert out == store.Conflict(2, "seq 1 is not after last_seq 2 (replay)")
