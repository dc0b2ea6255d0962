"""What the pages need server-side, read under row-level security.

The figures themselves (KPIs, series, top countries, causes, CDR search, exports, live calls)
come from the collector's JSON API (`/api/v1/reports/*`, `/api/v1/cdrs`, `/api/v1/live/calls`),
which the pages call from the browser with the session cookie; this module only gives the
templates what they render before that: the tenant's switches and its local date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cdrstats_collector import auth, search
from psycopg_pool import AsyncConnectionPool

PERIODS = {
    "today": "Today",
    "yesterday": "Yesterday",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
}


async def switches(pool: AsyncConnectionPool[Any], tenant_id: int) -> list[dict[str, Any]]:
    async with auth.tenant_connection(pool, tenant_id) as conn:
        names = await search.switch_names(conn, tenant_id)
    return [{"id": i, "name": n} for i, n in sorted(names.items(), key=lambda kv: kv[1])]


def local_today(timezone: str, now: datetime | None = None) -> date:
    """The tenant's current date (its timezone; UTC when the name is unknown)."""
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return (now or datetime.now(UTC)).astimezone(tz).date()
