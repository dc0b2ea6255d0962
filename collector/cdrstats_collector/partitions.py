"""Monthly partitions of the `cdr` table.

A partition holds the calls that started in one calendar month (UTC) and is named
`cdr_yYYYYmMM`. Partitions are created ahead (current month and the next ones) by
`cdrstats db upgrade` and by maintenance, and on demand at ingest for any month a batch
touches. Creation goes through the SQL function `cdr_ensure_partition`, which takes an
advisory lock so concurrent collectors never race, and is SECURITY DEFINER so that a
non-owner application role can call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import psycopg

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
DAY_US = 86_400_000_000


def month_of_day(day: int) -> date:
    """First day of the month containing `day` (days since the Unix epoch)."""
    return date.fromordinal(_EPOCH_ORDINAL + day).replace(day=1)


def months_of(starts_us: Iterable[int]) -> set[date]:
    """The months touched by a set of start times in µs (cheap: one division per row)."""
    return {month_of_day(d) for d in {us // DAY_US for us in starts_us}}


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def current_month(now: datetime | None = None) -> date:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).date().replace(day=1)


def partition_name(month: date) -> str:
    return f"cdr_y{month.year:04d}m{month.month:02d}"


class PartitionCache:
    """Months known to have a partition, per collector process (no module state)."""

    def __init__(self) -> None:
        self._known: set[date] = set()

    def missing(self, months: Iterable[date]) -> list[date]:
        return sorted(m for m in months if m not in self._known)

    def add(self, months: Iterable[date]) -> None:
        self._known.update(months)

    def clear(self) -> None:
        """Forget everything (after a partition was dropped or an insert found none)."""
        self._known.clear()


async def ensure(
    conn: psycopg.AsyncConnection[Any], months: Iterable[date], cache: PartitionCache
) -> None:
    """Create the partitions for `months` that the cache does not know, in a short
    transaction of their own (CREATE ... PARTITION OF locks the parent table until commit, so
    it must not stay inside a long ingest transaction)."""
    missing = cache.missing(months)
    if not missing:
        return
    async with conn.transaction():
        for month in missing:
            await conn.execute("SELECT cdr_ensure_partition(%s)", (month,))
    cache.add(missing)


def create_ahead(conn: psycopg.Connection[Any], months_ahead: int) -> list[str]:
    """Create the current month's partition and `months_ahead` after it (synchronous)."""
    first = current_month()
    names: list[str] = []
    for n in range(months_ahead + 1):
        with conn.transaction():
            row = conn.execute(
                "SELECT cdr_ensure_partition(%s)", (add_months(first, n),)
            ).fetchone()
        names.append(str(row[0]) if row else partition_name(add_months(first, n)))
    return names


def existing(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of the cdr partitions that exist, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'cdr'::regclass ORDER BY c.relname"
    ).fetchall()
    return [str(r[0]) for r in rows]
