"""Reports: KPIs, series, week-over-week comparison, top destinations, breakdowns.

Every report reads the aggregate tables of migration 0002 (docs/analytics.md), never `cdr`,
in a connection scoped to one tenant (auth.tenant_connection, row-level security). Periods
are local dates of the tenant (`from`..`to`, inclusive); daily and monthly figures come from
the `*_day` tables, which are bucketed by the tenant's local day, so DST days have their 23 or
25 hours. Hourly figures come from the UTC `*_hour` tables and are labelled in local time: on
the autumn DST change the local hour 02:00 appears twice, with two different offsets. (In a
zone whose offset is not a whole number of hours, an hourly bucket is a UTC hour, labelled
e.g. 09:30 local.)

KPI definitions (the same everywhere; see docs/reports.md):
  asr   answered / calls, %          ner    network-completed / calls, %
  acd   billsec / answered, s        aloc   duration / calls, s
  minutes  billsec / 60              ring_avg  mean ring time of calls that report one, s
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from cdrstats_agent.normalize import Q850_BY_NAME

from .params import local_midnight

METRICS = (
    "calls",
    "answered",
    "busy",
    "no_answer",
    "failed",
    "cancelled",
    "ner_ok",
    "duration_sum",
    "billsec_sum",
    "ring_time_sum",
    "ring_count",
)
CAUSE_NAMES = {code: name for name, code in Q850_BY_NAME.items()}
CAUSE_NAMES[0] = "UNKNOWN"
HOUR = timedelta(hours=1)

Conn = psycopg.AsyncConnection[Any]


def _sums(cond: str = "", named: bool = False) -> str:
    flt = f" FILTER (WHERE {cond})" if cond else ""
    return ", ".join(
        f"coalesce(sum({m}){flt}, 0)::bigint" + (f" AS {m}" if named else "") for m in METRICS
    )


def _ratio(num: int, den: int, scale: float = 1.0, digits: int = 2) -> float | None:
    return None if den == 0 else round(num * scale / den, digits)


def kpis(values: Sequence[Any]) -> dict[str, Any]:
    """The KPI object from the summed metric columns (in `METRICS` order)."""
    calls, answered, busy, no_answer, failed, cancelled, ner_ok, dur, bill, ring, rings = (
        int(x or 0) for x in values
    )
    return {
        "calls": calls,
        "answered": answered,
        "busy": busy,
        "no_answer": no_answer,
        "failed": failed,
        "cancelled": cancelled,
        "asr": round(answered * 100.0 / calls, 2) if calls else None,
        "ner": round(ner_ok * 100.0 / calls, 2) if calls else None,
        "acd": round(bill / answered, 1) if answered else None,
        "aloc": round(dur / calls, 1) if calls else None,
        "minutes": round(bill / 60.0, 1),
        "duration_minutes": round(dur / 60.0, 1),
        "ring_avg": round(ring / rings, 1) if rings else None,
    }


_ZERO = (0,) * len(METRICS)


def _filters(args: Mapping[str, Any], params: dict[str, Any], *, switch: bool = True) -> str:
    sql = ""
    if switch and args.get("switch") is not None:
        sql += " AND switch_id = %(switch)s"
        params["switch"] = args["switch"]
    if args.get("direction") is not None:
        sql += " AND direction = %(direction)s"
        params["direction"] = args["direction"]
    return sql


def _local(tz: ZoneInfo, moment: datetime) -> str:
    return moment.astimezone(tz).isoformat()


async def _rows(conn: Conn, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def _both(
    conn: Conn, first: str, second: str, params: Mapping[str, Any]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Two queries sent before either result is read: one round trip in pipeline mode."""
    cur1 = conn.cursor()
    cur2 = conn.cursor()
    await cur1.execute(first, params)
    await cur2.execute(second, params)
    return await cur1.fetchall(), await cur2.fetchall()


# --- dashboard -------------------------------------------------------------------------------


async def dashboard(
    conn: Conn, tenant: int, tz: ZoneInfo, start: date, end: date, args: Mapping[str, Any]
) -> dict[str, Any]:
    """KPIs of `start`..`end` and of the period of the same length just before it."""
    days = (end - start).days + 1
    prev_start, prev_end = start - timedelta(days=days), start - timedelta(days=1)
    p: dict[str, Any] = {
        "t": tenant,
        "from": start,
        "to": end,
        "pfrom": prev_start,
        "pto": prev_end,
        "conc_switch": args.get("switch") or 0,
    }
    flt = _filters(args, p)
    query = f"""
        SELECT {_sums("day >= %(from)s")}, {_sums("day < %(from)s")},
          (SELECT max(peak) FROM agg_conc_day WHERE tenant_id = %(t)s
             AND switch_id = %(conc_switch)s AND day BETWEEN %(from)s AND %(to)s),
          (SELECT max(peak) FROM agg_conc_day WHERE tenant_id = %(t)s
             AND switch_id = %(conc_switch)s AND day BETWEEN %(pfrom)s AND %(pto)s)
        FROM agg_kpi_day
        WHERE tenant_id = %(t)s AND day BETWEEN %(pfrom)s AND %(to)s{flt}"""
    row = (await _rows(conn, query, p))[0]
    n = len(METRICS)
    current, previous = kpis(row[:n]), kpis(row[n : 2 * n])
    current["peak_concurrent"] = int(row[2 * n] or 0)
    previous["peak_concurrent"] = int(row[2 * n + 1] or 0)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "previous_from": prev_start.isoformat(),
        "previous_to": prev_end.isoformat(),
        "timezone": tz.key,
        "current": current,
        "previous": previous,
    }


# --- series ----------------------------------------------------------------------------------


def _hour_floor(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


async def series(
    conn: Conn,
    tenant: int,
    tz: ZoneInfo,
    granularity: str,
    start: date,
    end: date,
    args: Mapping[str, Any],
) -> dict[str, Any]:
    """Buckets (hour, day or month) covering `start`..`end`, empty ones included."""
    p: dict[str, Any] = {"t": tenant, "conc_switch": args.get("switch") or 0}
    flt = _filters(args, p)
    buckets: list[dict[str, Any]] = []
    if granularity == "hour":
        lo = _hour_floor(local_midnight(tz, start))
        hi = local_midnight(tz, end + timedelta(days=1))
        p.update(lo=lo, hi=hi)
        rows, peaks = await _both(
            conn,
            f"SELECT hour, {_sums()} FROM agg_kpi_hour WHERE tenant_id = %(t)s"
            f" AND hour >= %(lo)s AND hour < %(hi)s{flt} GROUP BY hour",
            "SELECT hour, peak FROM agg_conc_hour WHERE tenant_id = %(t)s"
            " AND switch_id = %(conc_switch)s AND hour >= %(lo)s AND hour < %(hi)s",
            p,
        )
        by_hour = {r[0]: r[1:] for r in rows}
        peak = {r[0]: int(r[1]) for r in peaks}
        moment = lo
        while moment < hi:
            iso = moment.astimezone(tz).isoformat()
            buckets.append(
                {
                    "start": iso,
                    "label": f"{iso[:10]} {iso[11:16]}",
                    **kpis(by_hour.get(moment, _ZERO)),
                    "peak_concurrent": peak.get(moment, 0),
                }
            )
            moment += HOUR
    else:
        p.update(lo=start, hi=end)
        unit = "day" if granularity == "day" else "date_trunc('month', day)::date"
        rows, peaks = await _both(
            conn,
            f"SELECT {unit}, {_sums()} FROM agg_kpi_day WHERE tenant_id = %(t)s"
            f" AND day BETWEEN %(lo)s AND %(hi)s{flt} GROUP BY 1",
            f"SELECT {unit}, max(peak) FROM agg_conc_day WHERE tenant_id = %(t)s"
            " AND switch_id = %(conc_switch)s AND day BETWEEN %(lo)s AND %(hi)s GROUP BY 1",
            p,
        )
        by_key = {r[0]: r[1:] for r in rows}
        peak = {r[0]: int(r[1] or 0) for r in peaks}
        for key, label in _calendar(granularity, start, end):
            buckets.append(
                {
                    "start": local_midnight(tz, max(key, start)).isoformat(),
                    "label": label,
                    **kpis(by_key.get(key, (0,) * len(METRICS))),
                    "peak_concurrent": peak.get(key, 0),
                }
            )
    return {
        "granularity": granularity,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "timezone": tz.key,
        "buckets": buckets,
    }


def _calendar(granularity: str, start: date, end: date) -> list[tuple[date, str]]:
    out: list[tuple[date, str]] = []
    if granularity == "day":
        day = start
        while day <= end:
            out.append((day, day.isoformat()))
            day += timedelta(days=1)
        return out
    month = start.replace(day=1)
    while month <= end:
        out.append((month, month.strftime("%Y-%m")))
        month = (month + timedelta(days=32)).replace(day=1)
    return out


# --- same weekday of previous weeks --------------------------------------------------------


async def compare(
    conn: Conn, tenant: int, tz: ZoneInfo, day: date, weeks: int, args: Mapping[str, Any]
) -> dict[str, Any]:
    """`day` and the same weekday of the `weeks` weeks before: totals and local hours."""
    days = [day - timedelta(weeks=k) for k in range(weeks + 1)]
    p: dict[str, Any] = {"t": tenant, "days": days}
    flt = _filters(args, p)
    ranges = []
    for i, d in enumerate(days):
        p[f"lo{i}"] = _hour_floor(local_midnight(tz, d))
        p[f"hi{i}"] = local_midnight(tz, d + timedelta(days=1))
        ranges.append(f"(hour >= %(lo{i})s AND hour < %(hi{i})s)")
    totals, hours = await _both(
        conn,
        f"SELECT day, {_sums()} FROM agg_kpi_day WHERE tenant_id = %(t)s"
        f" AND day = ANY(%(days)s){flt} GROUP BY day",
        f"SELECT hour, {_sums()} FROM agg_kpi_hour WHERE tenant_id = %(t)s"
        f" AND ({' OR '.join(ranges)}){flt} GROUP BY hour",
        p,
    )
    by_day = {r[0]: r[1:] for r in totals}
    by_hour = {r[0]: r[1:] for r in hours}
    out = []
    for i, d in enumerate(days):
        moment, hi = p[f"lo{i}"], p[f"hi{i}"]
        slots = []
        while moment < hi:
            local = moment.astimezone(tz)
            k = kpis(by_hour.get(moment, (0,) * len(METRICS)))
            slots.append(
                {
                    "start": local.isoformat(),
                    "hour": local.strftime("%H:%M"),
                    "calls": k["calls"],
                    "answered": k["answered"],
                    "minutes": k["minutes"],
                    "asr": k["asr"],
                }
            )
            moment += HOUR
        out.append(
            {
                "day": d.isoformat(),
                "weeks_before": i,
                "totals": kpis(by_day.get(d, (0,) * len(METRICS))),
                "hours": slots,
            }
        )
    return {"day": day.isoformat(), "weekday": day.strftime("%A"), "timezone": tz.key, "days": out}


# --- top destinations and countries ------------------------------------------------------------

ORDER_BY = {"calls": "sum(calls)", "answered": "sum(answered)", "minutes": "sum(billsec_sum)"}


async def top(
    conn: Conn,
    tenant: int,
    by: str,
    start: date,
    end: date,
    limit: int,
    order: str,
    args: Mapping[str, Any],
) -> dict[str, Any]:
    p: dict[str, Any] = {"t": tenant, "from": start, "to": end, "limit": limit}
    flt = _filters(args, p, switch=False)
    keys = "dest_country" if by == "country" else "dest_prefix, dest_country, dest_kind"
    rank = ORDER_BY[order]
    rows = await _rows(
        conn,
        f"""SELECT g.*, {"NULL" if by == "country" else "dp.name"} FROM (
              SELECT {keys}, {_sums(named=True)}, sum(sum(calls)) OVER () AS total_calls
              FROM agg_dest_day WHERE tenant_id = %(t)s AND day BETWEEN %(from)s AND %(to)s{flt}
              GROUP BY {keys} ORDER BY {rank} DESC, {keys} LIMIT %(limit)s) g
            {"" if by == "country" else "LEFT JOIN dial_prefix dp ON dp.prefix = g.dest_prefix"}
            ORDER BY {order if order != "minutes" else "billsec_sum"} DESC, {keys}""",
        p,
    )
    nk = 1 if by == "country" else 3
    items = []
    total = 0
    for r in rows:
        k = kpis(r[nk : nk + len(METRICS)])
        total = int(r[nk + len(METRICS)] or 0)
        item: dict[str, Any] = (
            {"country": r[0] or None}
            if by == "country"
            else {
                "prefix": r[0] or None,
                "country": r[1] or None,
                "kind": r[2] or None,
                "name": r[-1],
            }
        )
        item.update(k)
        item["share"] = _ratio(k["calls"], total, 100.0)
        items.append(item)
    return {"by": by, "from": start.isoformat(), "to": end.isoformat(), "items": items}


# --- breakdowns ----------------------------------------------------------------------------


async def breakdown(
    conn: Conn,
    tenant: int,
    by: str,
    start: date,
    end: date,
    limit: int,
    args: Mapping[str, Any],
) -> dict[str, Any]:
    """Calls grouped by hangup cause, disposition, SIP code, switch, trunk or direction."""
    p: dict[str, Any] = {"t": tenant, "from": start, "to": end, "limit": limit}
    flt = _filters(args, p)
    where = f"tenant_id = %(t)s AND day BETWEEN %(from)s AND %(to)s{flt}"
    items: list[dict[str, Any]] = []
    if by in ("cause", "disposition", "sip_code"):
        col = {"cause": "hangup_cause", "disposition": "disposition", "sip_code": "sip_code"}[by]
        rows = await _rows(
            conn,
            f"SELECT {col}, sum(calls)::bigint, sum(billsec_sum)::bigint,"
            f" sum(sum(calls)) OVER () FROM agg_cause_day WHERE {where}"
            f" GROUP BY {col} ORDER BY 2 DESC, 1 LIMIT %(limit)s",
            p,
        )
        for value, calls, billsec, total in rows:
            item: dict[str, Any] = {by: value}
            if by == "cause":
                item["name"] = CAUSE_NAMES.get(int(value), f"CAUSE_{value}")
            item.update(
                calls=int(calls),
                minutes=round(int(billsec) / 60.0, 1),
                share=_ratio(int(calls), int(total), 100.0),
            )
            items.append(item)
    else:
        table, keys = {
            "switch": ("agg_kpi_day", "switch_id"),
            "direction": ("agg_kpi_day", "direction"),
            "trunk": ("agg_trunk_day", "switch_id, trunk"),
        }[by]
        rows, switch_rows = await _both(
            conn,
            f"SELECT {keys}, {_sums()} FROM {table} WHERE {where}"
            f" GROUP BY {keys} ORDER BY sum(calls) DESC, {keys} LIMIT %(limit)s",
            # with the switches account codes are mapped from (migration 0010)
            "SELECT id, name FROM switch WHERE tenant_id = %(t)s"
            " UNION SELECT id, name FROM cdrstats_visible_switches()",
            p,
        )
        names = dict(switch_rows)
        nk = 2 if by == "trunk" else 1
        for r in rows:
            if by == "direction":
                item = {"direction": r[0]}
            else:
                item = {"switch_id": int(r[0]), "switch": names.get(r[0])}
                if by == "trunk":
                    item["trunk"] = r[1] or None
            item.update(kpis(r[nk:]))
            items.append(item)
    return {"by": by, "from": start.isoformat(), "to": end.isoformat(), "items": items}
