"""Periodic upkeep: cdr partitions ahead of time, old `ingest_batch` rows pruned, expired live
sources (and their calls) deleted, retention applied (retention.py: old partitions dropped,
old aggregates deleted), and the history tables pruned (`Keep`, `[maintenance] *_keep_days`):

* commands finished (or expired undelivered) longer ago than `commands_days`, once no
  `ip_block` row points at them; `ip_block` rows whose block ended that long ago;
* `live_count_minute` rows older than `live_counts_days`;
* CSV import jobs finished longer ago than `imports_days`, with their rejected rows;
* alerts resolved longer ago than `alerts_days` (with their notification deliveries), when
  the `alert` table exists;
* failed registrations per minute (`auth_failure_minute`) older than `auth_failures_days`.

Active blocks, pending commands, running imports and open alerts are never touched.
Run by every `cdrstats serve` (at start, then every hour) and by `cdrstats db maintain`.
Safe to run from several collectors at once (partition creation takes an advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import live, partitions, retention
from .settings import Settings


@dataclass(frozen=True, slots=True)
class Keep:
    """How many days the history tables keep their finished rows (each at least 1)."""

    commands_days: int = 90
    live_counts_days: int = 90
    imports_days: int = 90
    alerts_days: int = 180
    auth_failures_days: int = 7

    @classmethod
    def from_settings(cls, s: Settings) -> Keep:
        return cls(s.commands_keep_days, s.live_counts_keep_days, s.imports_keep_days,
                   s.alerts_keep_days, s.auth_failures_keep_days)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows deleted by one run, per table."""

    commands: int = 0
    ip_blocks: int = 0
    live_counts: int = 0
    import_jobs: int = 0
    import_rejects: int = 0
    alerts: int = 0
    auth_failures: int = 0

    def log_fields(self) -> dict[str, int]:
        return {f"{name}_pruned": getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Report:
    partitions_ensured: int
    batches_pruned: int
    live_sources_pruned: int = 0
    retention_done: retention.Done = field(default_factory=retention.Done)
    pruned: Pruned = field(default_factory=Pruned)


_PRUNE = {
    # ip_block first: a command stays while a block row points at it.
    "ip_blocks": "DELETE FROM ip_block WHERE expires_at < now() - make_interval(days => %(d)s)",
    "commands": (
        "DELETE FROM command c WHERE ("
        "   (c.status <> 'pending' AND coalesce(c.finished_at, c.issued_at)"
        "      < now() - make_interval(days => %(d)s))"
        "   OR (c.status = 'pending' AND c.expires_at < now() - make_interval(days => %(d)s)))"
        " AND NOT EXISTS (SELECT 1 FROM ip_block b WHERE b.command_id = c.id)"
    ),
    "live_counts": (
        "DELETE FROM live_count_minute WHERE minute < now() - make_interval(days => %(d)s)"
    ),
    "import_rejects": (
        "DELETE FROM import_reject r USING import_job j"
        " WHERE r.tenant_id = j.tenant_id AND r.job_id = j.id AND j.status <> 'running'"
        " AND coalesce(j.finished_at, j.updated_at) < now() - make_interval(days => %(d)s)"
    ),
    "import_jobs": (
        "DELETE FROM import_job WHERE status <> 'running'"
        " AND coalesce(finished_at, updated_at) < now() - make_interval(days => %(d)s)"
    ),
    "alerts": (
        "DELETE FROM alert WHERE state = 'resolved'"
        " AND resolved_at < now() - make_interval(days => %(d)s)"
    ),
    "auth_failures": (
        "DELETE FROM auth_failure_minute WHERE minute < now() - make_interval(days => %(d)s)"
    ),
}


async def prune(conn: psycopg.AsyncConnection[Any], keep: Keep) -> Pruned:
    """Delete the finished history older than `keep` says, one transaction per table."""
    days = {
        "ip_blocks": keep.commands_days,
        "commands": keep.commands_days,
        "live_counts": keep.live_counts_days,
        "import_rejects": keep.imports_days,
        "import_jobs": keep.imports_days,
        "alerts": keep.alerts_days,
        "auth_failures": keep.auth_failures_days,
    }
    # Tables of later migrations may not exist yet in a database being upgraded.
    cur = await conn.execute(
        "SELECT to_regclass('alert') IS NULL, to_regclass('auth_failure_minute') IS NULL"
    )
    row = await cur.fetchone()
    missing = {n for n, gone in zip(("alerts", "auth_failures"), row or (), strict=False) if gone}
    counts: dict[str, int] = {}
    for name, sql in _PRUNE.items():
        if name in missing:
            counts[name] = 0
            continue
        async with conn.transaction():
            cur = await conn.execute(sql, {"d": max(1, days[name])})
            counts[name] = max(cur.rowcount, 0)
    return Pruned(**counts)


async def run(
    conn: psycopg.AsyncConnection[Any],
    *,
    months_ahead: int = 2,
    batch_keep_days: int = 30,
    cache: partitions.PartitionCache | None = None,
    keep: retention.Policy | None = None,
    history: Keep | None = None,
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
    history_pruned = await prune(conn, history or Keep())
    return Report(len(months), pruned, live_pruned, done, history_pruned)
