"""Measure the ingest transaction against raw binary COPY into the same table.

    .venv/bin/python bench/store_copy.py [--database-url URL] [--batches 30]

Creates a scratch database (dropped at the end) on the given server (default: the embedded
one under var/test-pg) and prints rows/s for:
  raw     binary COPY of ready rows into cdr (the ceiling)
  store   Ingestor.store of prepared rows: COPY straight into cdr under a savepoint
  staging the same rows forced through the staging table + INSERT ... ON CONFLICT
  ingest  parse_body + check_rows + Ingestor.ingest (all the collector's work but HTTP)
  dups    Ingestor.ingest of a batch whose rows are all already stored (fallback path)
  check   wire.parse_body + wire.check_rows (CPU only)
  prepare Ingestor.prepare (CPU only)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import embedded, migrate, partitions, store
from psycopg import conninfo


def make_cdrs(n: int, base: datetime, offset: int) -> list[CDR]:
    return [
        CDR(
            key=str(uuid.uuid4()),
            start=base + timedelta(seconds=(offset + i) * 0.01),
            answer=base + timedelta(seconds=(offset + i) * 0.01 + 3),
            end=base + timedelta(seconds=(offset + i) * 0.01 + 63),
            duration=63,
            billsec=60,
            disposition=Disposition.ANSWERED,
            direction=Direction.OUTBOUND,
            caller="1001",
            caller_name="Alice",
            callee="+33123456789",
            caller_e164="+15551001",
            callee_e164="+33123456789",
            accountcode="acme",
            hangup_cause=16,
            sip_code=200,
            ring_time=3,
            src_ip=f"10.0.{i % 4}.{i % 200}",
            read_codec="PCMA",
            write_codec="PCMA",
            trunk="gw1",
            user_agent="FreeSWITCH-mod_sofia/1.10",
            extra={"uuid": str(uuid.uuid4()), "sip_hangup_disposition": "send_bye", "n": i},
        )
        for i in range(n)
    ]


def checked(body: bytes) -> list[list[Any]]:
    parsed = wire.parse_body(body)
    return wire.check_rows(parsed.fields, parsed.rows)


async def run(url: str, batches: int, size: int) -> None:
    ingestor = store.Ingestor()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    bodies = [
        wire.build_body([wire.pack_cdr(c) for c in make_cdrs(size, base, b * size)])
        for b in range(batches * 4)
    ]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        agent_id = uuid.uuid4()
        cur = await conn.execute(
            "WITH t AS (INSERT INTO tenant (name) VALUES ('bench') RETURNING id),"
            " s AS (INSERT INTO switch (tenant_id, name) SELECT id, 'sw' FROM t RETURNING"
            " id, tenant_id) INSERT INTO agent (id, tenant_id, switch_id, public_key)"
            " SELECT %s, tenant_id, id, %s FROM s RETURNING tenant_id, switch_id",
            (agent_id, b"k" * 32),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.commit()
        agent = store.AgentRef(agent_id, row[0], row[1])
        now = wire.now_us()

        t0 = time.perf_counter()
        rows_sets = [checked(b) for b in bodies]
        t_check = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepared = [ingestor.prepare(agent, r, now) for r in rows_sets]
        t_prep = time.perf_counter() - t0
        total = len(bodies) * size
        print(f"check    {total / t_check:10.0f} rows/s  (parse_body + check_rows, CPU)")
        print(f"prepare  {total / t_prep:10.0f} rows/s  (Ingestor.prepare, CPU)")

        # raw: the ceiling, ready rows straight into cdr, one COPY per batch, one commit each.
        await partitions.ensure(conn, prepared[0].months, ingestor.partitions)
        t0 = time.perf_counter()
        for p in prepared[:batches]:
            async with conn.transaction():
                await ingestor._copy(conn, store._COPY_CDR, p.rows)
        t_raw = time.perf_counter() - t0
        print(f"raw      {batches * size / t_raw:10.0f} rows/s  (binary COPY of ready rows)")

        # store: the ingest transaction (direct COPY path) for rows already prepared.
        t0 = time.perf_counter()
        for seq, p in enumerate(prepared[3 * batches :], start=1):
            out = await ingestor.store(conn, agent, seq, b"%d" % seq, p)
            assert isinstance(out, store.Stored) and out.ack.accepted == size, out
        t_store = time.perf_counter() - t0
        print(f"store    {batches * size / t_store:10.0f} rows/s  (transaction, direct COPY)")

        # direct: the full transaction from checked rows (includes prepare).
        t0 = time.perf_counter()
        for seq, body in enumerate(bodies[batches : 2 * batches], start=batches + 1):
            out = await ingestor.ingest(conn, agent, seq, wire.body_digest(body), checked(body))
            assert isinstance(out, store.Stored) and out.ack.accepted == size, out
        t_direct = time.perf_counter() - t0
        print(f"ingest   {batches * size / t_direct:10.0f} rows/s  (parse+check+prepare+store)")

        # staging: same work but forced through staging + ON CONFLICT.
        t0 = time.perf_counter()
        for p in prepared[2 * batches : 3 * batches]:
            async with conn.transaction():
                await conn.execute(store._CREATE_STAGING)
                await ingestor._copy(conn, store._COPY_STAGING, p.rows)
                await conn.execute(store._MERGE_STAGING)
        t_staging = time.perf_counter() - t0
        print(f"staging  {batches * size / t_staging:10.0f} rows/s  (staging + ON CONFLICT)")

        # dups: redeliver already stored bodies under new seqs (all duplicates).
        t0 = time.perf_counter()
        for seq, body in enumerate(bodies[batches : 2 * batches], start=2 * batches + 1):
            out = await ingestor.ingest(conn, agent, seq, wire.body_digest(body), checked(body))
            assert isinstance(out, store.Stored) and out.ack.duplicates == size, out
        t_dups = time.perf_counter() - t0
        print(f"dups     {batches * size / t_dups:10.0f} rows/s  (ingest, every row a duplicate)")
        print(
            f"ratios to raw: store {t_raw / t_store:.2f}, staging {t_raw / t_staging:.2f},"
            f" ingest {t_raw / t_direct:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        url = conninfo.make_conninfo(admin, dbname=name)
        migrate.upgrade(url)
        asyncio.run(run(url, args.batches, args.size))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
