"""Retention: raw CDRs dropped by whole monthly partitions, aggregates kept longer.

Settings (collector.toml, `[retention]`): `cdr_days` (0: keep raw CDRs for ever) and
`aggregate_days` (0: keep aggregates for ever; when both are set it must be at least
`cdr_days`). Per tenant, `tenant.cdr_retention_days` (`cdrstats tenant retention`) replaces
`cdr_days` for that tenant's CDRs.

Partitions hold one month of every tenant's calls, so:

* a partition is dropped (DROP TABLE, no row-by-row delete) once its whole month is older
  than the LONGEST retention in force: the global one and every tenant's;
* a tenant whose retention is shorter than that has its older rows deleted from the
  partitions that are kept (a DELETE bounded by tenant and start_time, so it only touches
  the partitions of that range). Keeping per-tenant retentions at or below the global one
  makes that the exception: the bulk of old data always leaves by partition.

Aggregate rows whose hour, minute or local day ended more than `aggregate_days` ago are
deleted. Aggregates are never recomputed by retention: they stay true for the period they
cover after the raw CDRs are gone (and `aggregates.rebuild` must not be run on such a range).
Run by maintenance (`cdrstats db maintain`, and every hour by `cdrstats serve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from . import aggregates, partitions


@dataclass(frozen=True, slots=True)
class Policy:
    cdr_days: int = 0
    aggregate_days: int = 0

    def __post_init__(self) -> None:
        if self.cdr_days < 0 or self.aggregate_days < 0:
            raise ValueError("retention days must be 0 (keep for ever) or positive")


@dataclass(frozen=True, slots=True)
class Done:
    partitions_dropped: tuple[str, ...] = ()
    cdr_rows_deleted: int = 0
    aggregate_rows_deleted: int = 0


def _month_end(name: str) -> datetime | None:
    """The first instant after the month of partition `cdr_yYYYYmMM` (None: not ours)."""
    if len(name) != 12 or not name.startswith("cdr_y") or name[9] != "m":
        return None
    try:
        first = datetime(int(name[5:9]), int(name[10:12]), 1, tzinfo=UTC)
    except ValueError:
        return None
    nxt = partitions.add_months(first.date(), 1)
    return datetime(nxt.year, nxt.month, 1, tzinfo=UTC)


_BUCKET_END = {
    "hour": "interval '1 hour'",
    "minute": "interval '1 minute'",
}


async def run(
    conn: psycopg.AsyncConnection[Any],
    policy: Policy,
    *,
    now: datetime | None = None,
    cache: partitions.PartitionCache | None = None,
) -> Done:
    """Apply `policy` (and the tenants' own retention) once. Each step commits on its own."""
    now = now or datetime.now(UTC)
    async with conn.transaction():
        cur = await conn.execute("SELECT id, cdr_retention_days FROM tenant ORDER BY id")
        tenants = [(int(t), d) for t, d in await cur.fetchall()]
    keep = {t: (d if d is not None else policy.cdr_days) for t, d in tenants}
    values = list(keep.values()) or [policy.cdr_days]
    longest = 0 if 0 in values else max(values)  # 0: some CDRs are kept for ever

    dropped: list[str] = []
    if longest:
        horizon = now - timedelta(days=longest)
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'cdr'::regclass ORDER BY c.relname"
            )
            names = [str(r[0]) for r in await cur.fetchall()]
        for name in names:
            end = _month_end(name)
            if end is not None and end <= horizon:
                async with conn.transaction():
                    await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                dropped.append(name)
        if dropped and cache is not None:
            cache.clear()

    deleted = 0
    for tenant, days in keep.items():
        if days and (longest == 0 or days < longest):
            async with conn.transaction():
                cur = await conn.execute(
                    "DELETE FROM cdr WHERE tenant_id = %s AND start_time < %s",
                    (tenant, now - timedelta(days=days)),
                )
                deleted += max(cur.rowcount, 0)

    agg_deleted = 0
    if policy.aggregate_days:
        horizon = now - timedelta(days=policy.aggregate_days)
        async with conn.transaction():
            for table in aggregates.ALL_TABLES:
                bucket = aggregates.bucket_column(table)
                if bucket == "day":
                    # a local day ends at most 14 h after the UTC day of the same date
                    cond = "day < (%(horizon)s AT TIME ZONE 'UTC')::date - 1"
                else:
                    cond = f"{bucket} <= %(horizon)s - {_BUCKET_END[bucket]}"
                cur = await conn.execute(
                    f"DELETE FROM {table} WHERE {cond}".encode(), {"horizon": horizon}
                )
                agg_deleted += max(cur.rowcount, 0)
    return Done(tuple(dropped), deleted, agg_deleted)


def set_tenant_retention(conn: psycopg.Connection[Any], tenant: str, days: int | None) -> None:
    """Set (or with None, clear) a tenant's own raw-CDR retention in days."""
    from . import tenants

    if days is not None and days <= 0:
        raise tenants.InvalidArgument(f"--cdr-days must be a positive number of days, got {days}")
    tid = tenants.tenant_id(conn, tenant)
    with conn.transaction():
        conn.execute("UPDATE tenant SET cdr_retention_days = %s WHERE id = %s", (days, tid))
