"""Aggregates maintained in the ingest transaction, and their rebuild from the `cdr` table.

The tables (migration 0002, docs/analytics.md) hold counters per tenant and bucket: UTC hours
(`agg_*_hour`), the tenant's local days (`agg_*_day`), and concurrent calls per UTC minute
with the peak per hour and local day (`agg_conc_*`).

At ingest (`store.Ingestor`), only the CDRs a batch really inserted are counted (the direct
COPY inserted them all; the dedup path counts the rows `INSERT ... ON CONFLICT DO NOTHING`
returned), so a duplicate or a redelivery never counts twice. In Python the batch is grouped
once by the finest key (hour, local day, direction, disposition, cause, SIP code, trunk,
destination) and into per-minute call counts (`group`); then ONE statement (`UPSERT_SQL`)
projects those groups onto every table with `INSERT ... ON CONFLICT DO UPDATE` adding to the
counters, keys sorted so that concurrent collectors take row locks in the same order.
Concurrency peaks are raised with `GREATEST` from the minute rows the statement returns
(minute counts only grow, so the running maximum is the maximum).

`rebuild` recomputes every aggregate of one tenant over a time range from the `cdr` table
with set-based SQL (one scan of the range into a temporary table of fine groups, then the
same projections): for backfills, after loading CDRs with plain COPY (bench/queries.py), and
as the reference the property test compares the ingest path with. Only rebuild ranges whose
raw CDRs are still kept: a range emptied by retention would be rebuilt empty.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

MINUTE_US = 60_000_000
QUARTER_US = 15 * MINUTE_US
HOUR_US = 60 * MINUTE_US
MAX_SPAN_MINUTES = 1440
"""A call counts in at most this many minutes of concurrency (a stuck or garbage CDR)."""
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

FACT_COLUMNS: tuple[str, ...] = (
    "start_time",
    "end_time",
    "duration",
    "billsec",
    "disposition",
    "direction",
    "hangup_cause",
    "sip_code",
    "ring_time",
    "trunk",
    "dest_country",
    "dest_kind",
    "dest_prefix",
)
"""What aggregation reads of a CDR, in this order (timestamps as µs since the Unix epoch)."""

RETURNING_FACTS = (
    "(extract(epoch FROM start_time) * 1000000)::int8,"
    " (extract(epoch FROM end_time) * 1000000)::int8, " + ", ".join(FACT_COLUMNS[2:])
)
"""A RETURNING/SELECT list giving `FACT_COLUMNS` as `group` wants them."""

Fact = Sequence[Any]

# --- the metric set and the tables ------------------------------------------------------------

_ANSWERED = "sum(CASE WHEN disposition = 'ANSWERED' THEN calls ELSE 0 END)"
_METRICS: tuple[tuple[str, str], ...] = (
    ("calls", "sum(calls)"),
    ("answered", _ANSWERED),
    ("busy", "sum(CASE WHEN disposition = 'BUSY' THEN calls ELSE 0 END)"),
    ("no_answer", "sum(CASE WHEN disposition = 'NO_ANSWER' THEN calls ELSE 0 END)"),
    ("failed", "sum(CASE WHEN disposition = 'FAILED' THEN calls ELSE 0 END)"),
    ("cancelled", "sum(CASE WHEN disposition = 'CANCELLED' THEN calls ELSE 0 END)"),
    (
        "ner_ok",
        "sum(CASE WHEN disposition IN ('ANSWERED', 'BUSY', 'NO_ANSWER', 'CANCELLED')"
        " OR hangup_cause BETWEEN 17 AND 21 THEN calls ELSE 0 END)",
    ),
    ("duration_sum", "sum(duration_sum)"),
    ("billsec_sum", "sum(billsec_sum)"),
    ("ring_time_sum", "sum(ring_time_sum)"),
    ("ring_count", "sum(ring_count)"),
)
_CAUSE_METRICS: tuple[tuple[str, str], ...] = (
    ("calls", "sum(calls)"),
    ("billsec_sum", "sum(billsec_sum)"),
)


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    bucket: str  # "hour" or "day"
    keys: tuple[str, ...]  # after tenant_id and the bucket
    metrics: tuple[tuple[str, str], ...]


def _pair(base: str, keys: tuple[str, ...], metrics: tuple[tuple[str, str], ...]) -> list[Table]:
    return [Table(f"agg_{base}_{b}", b, keys, metrics) for b in ("hour", "day")]


TABLES: tuple[Table, ...] = (
    *_pair("kpi", ("switch_id", "direction"), _METRICS),
    *_pair("dest", ("direction", "dest_country", "dest_kind", "dest_prefix"), _METRICS),
    *_pair(
        "cause",
        ("switch_id", "direction", "disposition", "hangup_cause", "sip_code"),
        _CAUSE_METRICS,
    ),
    *_pair("trunk", ("switch_id", "direction", "trunk"), _METRICS),
)
"""Every counter table (the concurrency tables are handled apart)."""

CONCURRENCY_TABLES = ("agg_conc_minute", "agg_conc_hour", "agg_conc_day")
ALL_TABLES: tuple[str, ...] = (*(t.name for t in TABLES), *CONCURRENCY_TABLES)


def primary_key(table: str) -> tuple[str, ...]:
    for t in TABLES:
        if t.name == table:
            return ("tenant_id", t.bucket, *t.keys)
    bucket = {"agg_conc_minute": "minute", "agg_conc_hour": "hour", "agg_conc_day": "day"}[table]
    return ("tenant_id", "switch_id", bucket)


def bucket_column(table: str) -> str:
    """`hour`, `day` or `minute`: the time bucket of an aggregate table."""
    return next(c for c in primary_key(table) if c in ("hour", "day", "minute"))


def _projection(table: Table, source: str, where: str) -> str:
    """INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE adding, from fine groups."""
    key = ("tenant_id", table.bucket, *table.keys)
    cols = ", ".join((*key, *(m for m, _ in table.metrics)))
    exprs = ", ".join((*key, *(e for _, e in table.metrics)))
    keys = ", ".join(key)
    sets = ", ".join(f"{m} = {table.name}.{m} + EXCLUDED.{m}" for m, _ in table.metrics)
    return (
        f"INSERT INTO {table.name} ({cols}) SELECT {exprs} FROM {source} {where}"
        f" GROUP BY {keys} ORDER BY {keys}"
        f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    )


_FINE_COLUMNS = (
    "tenant_id, switch_id, hour, day, direction, disposition, hangup_cause, sip_code, trunk,"
    " dest_country, dest_kind, dest_prefix, calls, duration_sum, billsec_sum, ring_time_sum,"
    " ring_count"
)


def _upsert_sql() -> str:
    parts = [
        # one JSON document of [key..., counters...] lists: encoded by the json module in C,
        # much cheaper than 15 parameter arrays dumped element by element
        "g AS (SELECT (e->>0)::int8 AS h, (e->>1)::int4 AS d, e->>2 AS direction,"
        " e->>3 AS disposition, (e->>4)::int4 AS hangup_cause, (e->>5)::int4 AS sip_code,"
        " e->>6 AS trunk, e->>7 AS dest_country, e->>8 AS dest_kind, e->>9 AS dest_prefix,"
        " (e->>10)::int4 AS calls, (e->>11)::int8 AS duration_sum,"
        " (e->>12)::int8 AS billsec_sum, (e->>13)::int8 AS ring_time_sum,"
        " (e->>14)::int4 AS ring_count FROM json_array_elements(%(groups)s::json) AS e)",
        "f AS (SELECT %(tenant)s::int8 AS tenant_id, %(switch)s::int8 AS switch_id,"
        " to_timestamp(h * 3600) AS hour, DATE '1970-01-01' + d AS day, direction, disposition,"
        " hangup_cause, sip_code, trunk, dest_country, dest_kind, dest_prefix, calls,"
        " duration_sum, billsec_sum, ring_time_sum, ring_count FROM g)",
    ]
    for i, table in enumerate(TABLES):
        parts.append(f"t{i} AS ({_projection(table, 'f', '')})")
    parts.append(
        "cm AS (INSERT INTO agg_conc_minute (tenant_id, switch_id, minute, calls)"
        " SELECT %(tenant)s::int8, s.sw, to_timestamp(u.m * 60), u.c"
        " FROM unnest(%(cmin)s::text::int8[], %(ccnt)s::text::int4[]) AS u(m, c)"
        " CROSS JOIN (VALUES (0::int8), (%(switch)s::int8)) AS s(sw)"
        " ORDER BY s.sw, u.m"
        " ON CONFLICT (tenant_id, switch_id, minute)"
        " DO UPDATE SET calls = agg_conc_minute.calls + EXCLUDED.calls"
        " RETURNING switch_id, minute, calls)"
    )
    parts.append(
        "ch AS (INSERT INTO agg_conc_hour (tenant_id, switch_id, hour, peak)"
        " SELECT %(tenant)s::int8, switch_id, date_trunc('hour', minute, 'UTC'), max(calls)"
        " FROM cm GROUP BY 2, 3 ORDER BY 2, 3"
        " ON CONFLICT (tenant_id, switch_id, hour)"
        " DO UPDATE SET peak = GREATEST(agg_conc_hour.peak, EXCLUDED.peak))"
    )
    parts.append(
        "cd AS (INSERT INTO agg_conc_day (tenant_id, switch_id, day, peak)"
        " SELECT %(tenant)s::int8, switch_id, (minute AT TIME ZONE %(tz)s)::date, max(calls)"
        " FROM cm GROUP BY 2, 3 ORDER BY 2, 3"
        " ON CONFLICT (tenant_id, switch_id, day)"
        " DO UPDATE SET peak = GREATEST(agg_conc_day.peak, EXCLUDED.peak))"
    )
    return "WITH " + ",\n".join(parts) + "\nSELECT 1"


UPSERT_SQL = _upsert_sql()


# --- grouping a batch in Python ---------------------------------------------------------------


class LocalDays:
    """UTC µs → the tenant's local day (days since 1970-01-01), cached per quarter hour.

    Every UTC offset in use is a whole number of quarter hours, so a quarter hour never
    straddles a local midnight.
    """

    def __init__(self, timezone: str) -> None:
        self.timezone = timezone
        self._tz = ZoneInfo(timezone)
        self.cache: dict[int, int] = {}
        """quarter hour (UTC µs // QUARTER_US) → local day, filled by `day`."""

    def day(self, start_us: int) -> int:
        q = start_us // QUARTER_US
        d = self.cache.get(q)
        if d is None:
            if len(self.cache) > 100_000:
                self.cache.clear()
            local = datetime.fromtimestamp(q * 900, self._tz).date()
            d = self.cache[q] = local.toordinal() - _EPOCH_ORDINAL
        return d


@dataclass(slots=True)
class Grouped:
    """A batch reduced to fine groups and per-minute call counts (ready for `UPSERT_SQL`)."""

    groups: dict[tuple[Any, ...], list[int]]
    minutes: dict[int, int]

    def __bool__(self) -> bool:
        return bool(self.groups)


def group(facts: Iterable[Fact], days: LocalDays) -> Grouped:
    """Reduce the inserted CDRs of one batch (`FACT_COLUMNS` tuples)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    minutes: Counter[int] = Counter()
    count_minutes = minutes.update
    day_cache = days.cache
    day_of = days.day
    for (
        start,
        end,
        duration,
        billsec,
        disposition,
        direction,
        cause,
        sip,
        ring,
        trunk,
        country,
        kind,
        prefix,
    ) in facts:
        day = day_cache.get(start // QUARTER_US)
        key = (
            start // HOUR_US,
            day_of(start) if day is None else day,
            direction,
            disposition,
            cause or 0,
            sip or 0,
            trunk or "",
            country or "",
            kind or "",
            prefix or "",
        )
        acc = groups.get(key)
        if acc is None:
            groups[key] = [1, duration, billsec, ring or 0, 0 if ring is None else 1]
        else:
            acc[0] += 1
            acc[1] += duration
            acc[2] += billsec
            if ring is not None:
                acc[3] += ring
                acc[4] += 1
        first = start // MINUTE_US
        last = ((start + duration * 1_000_000 if end is None else end) - 1) // MINUTE_US
        if last <= first:
            minutes[first] += 1
        else:
            if last >= first + MAX_SPAN_MINUTES:
                last = first + MAX_SPAN_MINUTES - 1
            count_minutes(range(first, last + 1))
    return Grouped(groups, dict(minutes))


def upsert_params(
    grouped: Grouped, tenant_id: int, switch_id: int, timezone: str
) -> dict[str, Any]:
    minutes = sorted(grouped.minutes)
    counts = grouped.minutes
    return {
        "tenant": tenant_id,
        "switch": switch_id,
        "tz": timezone,
        "groups": _json_encode([[*k, *v] for k, v in grouped.groups.items()]),
        "cmin": "{" + ",".join(map(str, minutes)) + "}",
        "ccnt": "{" + ",".join([str(counts[m]) for m in minutes]) + "}",
    }


async def apply(
    conn: psycopg.AsyncConnection[Any],
    grouped: Grouped,
    tenant_id: int,
    switch_id: int,
    timezone: str,
) -> None:
    """Add a grouped batch to every aggregate table (inside the caller's transaction)."""
    if grouped:
        await conn.execute(UPSERT_SQL, upsert_params(grouped, tenant_id, switch_id, timezone))


# --- rebuild from the cdr table ----------------------------------------------------------------

_RANGES = """
SELECT h0, h1, d0, d1, f0, f1,
       least(h0, date_trunc('hour', lo, 'UTC')) AS m0,
       greatest(h1, date_trunc('hour', hi - interval '1 microsecond', 'UTC')
                    + interval '1 hour') AS m1,
       lo, hi
FROM (
    SELECT h0, h1, d0, d1, lo, hi,
           least(h0, lo) - interval '3 hours' AS f0,
           greatest(h1, hi) + interval '3 hours' AS f1
    FROM (
        SELECT h0, h1, d0, d1,
               (d0::timestamp AT TIME ZONE %(tz)s) AS lo,
               ((d1 + 1)::timestamp AT TIME ZONE %(tz)s) AS hi
        FROM (
            SELECT date_trunc('hour', %(since)s::timestamptz, 'UTC') AS h0,
                   date_trunc('hour', %(until)s::timestamptz - interval '1 microsecond', 'UTC')
                       + interval '1 hour' AS h1,
                   (%(since)s::timestamptz AT TIME ZONE %(tz)s)::date AS d0,
                   ((%(until)s::timestamptz - interval '1 microsecond')
                       AT TIME ZONE %(tz)s)::date AS d1
        ) a
    ) b
) c
"""

_FINE = f"""
CREATE TEMP TABLE agg_fine ON COMMIT DROP AS
SELECT tenant_id, switch_id,
       date_trunc('hour', start_time, 'UTC') AS hour,
       (start_time AT TIME ZONE %(tz)s)::date AS day,
       direction, disposition,
       coalesce(hangup_cause, 0) AS hangup_cause, coalesce(sip_code, 0) AS sip_code,
       coalesce(trunk, '') AS trunk, coalesce(dest_country, '') AS dest_country,
       coalesce(dest_kind, '') AS dest_kind, coalesce(dest_prefix, '') AS dest_prefix,
       count(*)::int4 AS calls, sum(duration)::int8 AS duration_sum,
       sum(billsec)::int8 AS billsec_sum, coalesce(sum(ring_time), 0)::int8 AS ring_time_sum,
       count(ring_time)::int4 AS ring_count
FROM cdr
WHERE tenant_id = %(tenant)s AND start_time >= %(f0)s AND start_time < %(f1)s
GROUP BY {", ".join(f"{i}" for i in range(1, 13))}
"""

_MINUTE_NO = "floor(extract(epoch FROM {}) / 60)::int8"
# Calls in progress per minute by a sweep: +1 at a call's first minute, -1 after its last,
# a running sum per switch (and per tenant, as switch 0), each value spread over the minutes
# until the next change. Costs O(calls) plus the minutes that had calls, however long the
# calls are (generating every minute of every call would cost calls x minutes).
_CONC_MINUTES = f"""
INSERT INTO agg_conc_minute (tenant_id, switch_id, minute, calls)
SELECT %(tenant)s, sw, to_timestamp(g * 60), c
FROM (
    SELECT sw, m, sum(d) OVER w AS c, lead(m) OVER w AS next_m
    FROM (
        SELECT sw, m, sum(d) AS d
        FROM (
            SELECT s.sw, e.m, e.d
            FROM (
                SELECT switch_id, first,
                       least(greatest(first, floor(
                           (extract(epoch FROM coalesce(end_time,
                                start_time + duration * interval '1 second')) * 1000000 - 1)
                           / 60000000)::int8), first + {MAX_SPAN_MINUTES - 1}) AS last
                FROM (
                    SELECT switch_id, end_time, start_time, duration,
                           {_MINUTE_NO.format("start_time")} AS first
                    FROM cdr
                    WHERE tenant_id = %(tenant)s
                      AND start_time >= %(m0)s - interval '{MAX_SPAN_MINUTES} minutes'
                      AND start_time < %(m1)s
                ) a
            ) calls
            CROSS JOIN LATERAL (VALUES (calls.first, 1), (calls.last + 1, -1)) AS e(m, d)
            CROSS JOIN LATERAL (VALUES (calls.switch_id), (0::int8)) AS s(sw)
        ) events
        GROUP BY sw, m
    ) changes
    WINDOW w AS (PARTITION BY sw ORDER BY m)
) runs
CROSS JOIN LATERAL generate_series(greatest(m, %(m0n)s), least(next_m, %(m1n)s) - 1) AS g
WHERE c > 0
"""

_CONC_HOURS = """
INSERT INTO agg_conc_hour (tenant_id, switch_id, hour, peak)
SELECT tenant_id, switch_id, date_trunc('hour', minute, 'UTC'), max(calls)
FROM agg_conc_minute
WHERE tenant_id = %(tenant)s AND minute >= %(m0)s AND minute < %(m1)s
GROUP BY 1, 2, 3
"""

_CONC_DAYS = """
INSERT INTO agg_conc_day (tenant_id, switch_id, day, peak)
SELECT tenant_id, switch_id, (minute AT TIME ZONE %(tz)s)::date AS day, max(calls)
FROM agg_conc_minute
WHERE tenant_id = %(tenant)s AND minute >= %(f0)s AND minute < %(f1)s
GROUP BY 1, 2, 3
HAVING (minute AT TIME ZONE %(tz)s)::date BETWEEN %(d0)s AND %(d1)s
"""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    tenant_id: int
    hours: tuple[datetime, datetime]
    days: tuple[date, date]
    fine_groups: int


def _statements(tenant_id: int, timezone: str, ranges: Sequence[Any]) -> list[tuple[str, Any]]:
    h0, h1, d0, d1, f0, f1, m0, m1, _lo, _hi = ranges
    p = {
        "tenant": tenant_id,
        "tz": timezone,
        "h0": h0,
        "h1": h1,
        "d0": d0,
        "d1": d1,
        "f0": f0,
        "f1": f1,
        "m0": m0,
        "m1": m1,
        "m0n": int(m0.timestamp()) // 60,
        "m1n": int(m1.timestamp()) // 60,
    }
    out: list[tuple[str, Any]] = [("DROP TABLE IF EXISTS agg_fine", None), (_FINE, p)]
    for t in TABLES:
        if t.bucket == "hour":
            cond = "hour >= %(h0)s AND hour < %(h1)s"
        else:
            cond = "day BETWEEN %(d0)s AND %(d1)s"
        out.append((f"DELETE FROM {t.name} WHERE tenant_id = %(tenant)s AND {cond}", p))
        out.append((_projection(t, "agg_fine", "WHERE " + cond), p))
    minute_cond = "minute >= %(m0)s AND minute < %(m1)s"
    out += [
        (f"DELETE FROM agg_conc_minute WHERE tenant_id = %(tenant)s AND {minute_cond}", p),
        (_CONC_MINUTES, p),
        (
            "DELETE FROM agg_conc_hour WHERE tenant_id = %(tenant)s AND hour >= %(m0)s"
            " AND hour < %(m1)s",
            p,
        ),
        (_CONC_HOURS, p),
        (
            "DELETE FROM agg_conc_day WHERE tenant_id = %(tenant)s"
            " AND day BETWEEN %(d0)s AND %(d1)s",
            p,
        ),
        (_CONC_DAYS, p),
        ("DROP TABLE agg_fine", None),
    ]
    return out


def _check_range(since: datetime, until: datetime) -> None:
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("rebuild: since and until must be timezone-aware datetimes")
    if until <= since:
        raise ValueError(f"rebuild: until ({until}) must be after since ({since})")


def rebuild(
    conn: psycopg.Connection[Any], tenant_id: int, since: datetime, until: datetime
) -> Rebuilt:
    """Recompute every aggregate of `tenant_id` for the CDRs that start in [since, until).

    Widened to whole UTC hours (hourly tables, minutes of concurrency) and whole local days of
    the tenant (daily tables). Runs in one transaction of its own (or the caller's).
    """
    _check_range(since, until)
    with conn.transaction():
        row = conn.execute("SELECT timezone FROM tenant WHERE id = %s", (tenant_id,)).fetchone()
        if row is None:
            raise ValueError(f"rebuild: no tenant with id {tenant_id}")
        timezone = str(row[0])
        params = {"since": since, "until": until, "tz": timezone}
        ranges = conn.execute(_RANGES, params).fetchone()
        assert ranges is not None
        fine = 0
        for sql, p in _statements(tenant_id, timezone, ranges):
            cur = conn.execute(sql.encode(), p)
            if sql is _FINE:
                fine = max(cur.rowcount, 0)
    return Rebuilt(tenant_id, (ranges[0], ranges[1]), (ranges[2], ranges[3]), fine)


async def rebuild_async(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, since: datetime, until: datetime
) -> Rebuilt:
    """`rebuild` on an asyncio connection."""
    _check_range(since, until)
    async with conn.transaction():
        cur = await conn.execute("SELECT timezone FROM tenant WHERE id = %s", (tenant_id,))
        row = await cur.fetchone()
        if row is None:
            raise ValueError(f"rebuild: no tenant with id {tenant_id}")
        timezone = str(row[0])
        cur = await conn.execute(_RANGES, {"since": since, "until": until, "tz": timezone})
        ranges = await cur.fetchone()
        assert ranges is not None
        fine = 0
        for sql, p in _statements(tenant_id, timezone, ranges):
            cur = await conn.execute(sql.encode(), p)
            if sql is _FINE:
                fine = max(cur.rowcount, 0)
    return Rebuilt(tenant_id, (ranges[0], ranges[1]), (ranges[2], ranges[3]), fine)


def rebuild_all(conn: psycopg.Connection[Any], tenant_id: int | None = None) -> list[Rebuilt]:
    """Rebuild everything the `cdr` table holds, for one tenant or every tenant."""
    if tenant_id is None:
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM tenant ORDER BY id").fetchall()]
    else:
        ids = [tenant_id]
    done: list[Rebuilt] = []
    for tid in ids:
        row = conn.execute(
            "SELECT min(start_time), max(start_time) FROM cdr WHERE tenant_id = %s", (tid,)
        ).fetchone()
        if row is None or row[0] is None:
            continue
        # calls go on after their start: cover the minutes the last ones may reach
        until = row[1] + timedelta(minutes=MAX_SPAN_MINUTES, microseconds=1)
        done.append(rebuild(conn, tid, row[0], until))
    return done


def utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)
