"""Periodic upkeep: cdr partitions ahead of time, old `ingest_batch` rows pruned, expired live
sources (and their calls) deleted, retention applied (retention.py: old partitions dropped,
old aggregates deleted).

Run by every `cdrstats serve` (at start, then every hour) and by `cdrstats db maintain`.
Safe to run from several collectors at once (partition creation takes an advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import live, partitions, retention


@dataclass(frozen=True, slots=True)
class Report:
    partitions_ensured: int
    batches_pruned: int
    live_sources_pruned: int = 0
    retention_done: retention.Done = field(default_factory=retention.Done)


async def run(
    conn: psycopg.AsyncConnection[Any],
    *,
    months_ahead: int = 2,
    batch_keep_days: int = 30,
    cache: partitions.PartitionCache | None = None,
    keep: retention.Policy | None = None,
) -> Report:
    first = partitions.current_month()
    months = [partitions.add_months(first, n) for n in range(months_ahead + 1)]
    await partitions.ensure(conn, months, cache or partitions.PartitionCache())
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM ingest_batch WHERE received_at < now() - make_interval(days => %s)",
            (batch_keep_days,),
        )
        pruned = max(cur.rowcount, 0)
    live_pruned = await live.prune(conn)
    done = await retention.run(conn, keep or retention.Policy(), cache=cache)
    return Report(len(months), pruned, live_pruned, done)
