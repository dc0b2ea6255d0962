"""What the dashboard and live pages show, read under row-level security.

Every read goes through `auth.tenant_connection` (role `cdrstats_reader`, one tenant visible).
Interim: until the Analytics reports module lands, the KPIs and series are computed here from
`cdr`; the page's JSON shape (`dashboard`) stays when they are switched to `reports`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cdrstats_collector import auth
from psycopg_pool import AsyncConnectionPool

PERIODS = {"today": "Today", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}


class BadParam(ValueError):
    """A query parameter that cannot be used; the text names it."""


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime
    bucket: str  # 'hour' | 'day'

    @property
    def previous(self) -> Window:
        span = self.end - self.start
        return Window(self.start - span, self.start, self.bucket)


def window(period: str, timezone: str, now: datetime | None = None) -> Window:
    now = now or datetime.now(UTC)
    if period not in PERIODS:
        raise BadParam(f"period: must be one of {', '.join(PERIODS)}, got {period[:40]!r}")
    if period == "today":
        local = now.astimezone(ZoneInfo(timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(midnight.astimezone(UTC), now, "hour")
    days = {"24h": 1, "7d": 7, "30d": 30}[period]
    return Window(now - timedelta(days=days), now, "hour" if days == 1 else "day")


def parse_switch(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise BadParam(f"switch: not a switch id: {text[:40]!r}")
    return int(text)


_KPI = """
SELECT count(*), count(*) FILTER (WHERE disposition = 'ANSWERED'),
       coalesce(sum(billsec), 0)
FROM cdr WHERE tenant_id = %(t)s AND start_time >= %(a)s AND start_time < %(b)s
  AND (%(s)s::bigint IS NULL OR switch_id = %(s)s)
"""
_SERIES = """
SELECT date_trunc(%(unit)s, start_time AT TIME ZONE %(tz)s) AS bucket, count(*),
       count(*) FILTER (WHERE disposition = 'ANSWERED')
FROM cdr WHERE tenant_id = %(t)s AND start_time >= %(a)s AND start_time < %(b)s
  AND (%(s)s::bigint IS NULL OR switch_id = %(s)s)
GROUP BY 1 ORDER BY 1
"""
_CAUSES = """
SELECT disposition, hangup_cause, count(*)
FROM cdr WHERE tenant_id = %(t)s AND start_time >= %(a)s AND start_time < %(b)s
  AND (%(s)s::bigint IS NULL OR switch_id = %(s)s)
GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 8
"""
_SWITCHES = "SELECT id, name FROM switch WHERE tenant_id = %s ORDER BY name"
_RECENT = """
SELECT c.start_time, s.name, c.direction, c.caller, c.callee, c.disposition, c.billsec,
       c.hangup_cause, c.key
FROM cdr c JOIN switch s ON s.id = c.switch_id
WHERE c.tenant_id = %(t)s AND (%(s)s::bigint IS NULL OR c.switch_id = %(s)s)
ORDER BY c.start_time DESC LIMIT %(n)s
"""


def _kpis(row: Any) -> dict[str, Any]:
    calls, answered, billsec = int(row[0]), int(row[1]), int(row[2])
    return {
        "calls": calls,
        "answered": answered,
        "asr": round(100.0 * answered / calls, 1) if calls else None,
        "acd_s": round(billsec / answered, 1) if answered else None,
        "minutes": round(billsec / 60.0, 1),
    }


def _change(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or before == 0:
        return None
    return round(100.0 * (now - before) / before, 1)


async def switches(pool: AsyncConnectionPool[Any], tenant_id: int) -> list[dict[str, Any]]:
    async with auth.tenant_connection(pool, tenant_id) as conn:
        rows = await (await conn.execute(_SWITCHES, (tenant_id,))).fetchall()
    return [{"id": int(r[0]), "name": r[1]} for r in rows]


async def dashboard(
    pool: AsyncConnectionPool[Any],
    tenant_id: int,
    timezone: str,
    period: str,
    switch_id: int | None,
) -> dict[str, Any]:
    """KPIs with the previous period, the calls series and the top hangup causes."""
    win = window(period, timezone)
    prev = win.previous
    base = {"t": tenant_id, "s": switch_id}
    async with auth.tenant_connection(pool, tenant_id) as conn:
        cur = await conn.execute(_KPI, {**base, "a": win.start, "b": win.end})
        now_k = _kpis(await cur.fetchone())
        cur = await conn.execute(_KPI, {**base, "a": prev.start, "b": prev.end})
        prev_k = _kpis(await cur.fetchone())
        cur = await conn.execute(
            _SERIES, {**base, "a": win.start, "b": win.end, "unit": win.bucket, "tz": timezone}
        )
        series = await cur.fetchall()
        cur = await conn.execute(_CAUSES, {**base, "a": win.start, "b": win.end})
        causes = await cur.fetchall()
    kpis = {
        name: {
            "value": now_k[name],
            "previous": prev_k[name],
            "change_pct": _change(now_k[name], prev_k[name]),
        }
        for name in now_k
    }
    fmt = "%H:00" if win.bucket == "hour" else "%d %b"
    return {
        "period": period,
        "switch": switch_id,
        "from": win.start.isoformat(),
        "to": win.end.isoformat(),
        "kpis": kpis,
        "series": {
            "labels": [row[0].strftime(fmt) for row in series],
            "calls": [int(row[1]) for row in series],
            "answered": [int(row[2]) for row in series],
        },
        "causes": [{"disposition": r[0], "cause": r[1], "calls": int(r[2])} for r in causes],
    }


async def recent(
    pool: AsyncConnectionPool[Any], tenant_id: int, switch_id: int | None, limit: int = 25
) -> list[dict[str, Any]]:
    async with auth.tenant_connection(pool, tenant_id) as conn:
        cur = await conn.execute(_RECENT, {"t": tenant_id, "s": switch_id, "n": limit})
        rows = await cur.fetchall()
    return [
        {
            "start": r[0].isoformat(),
            "switch": r[1],
            "direction": r[2],
            "caller": r[3],
            "callee": r[4],
            "disposition": r[5],
            "billsec": r[6],
            "cause": r[7],
            "key": r[8],
        }
        for r in rows
    ]
