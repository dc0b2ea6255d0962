"""The console's audit log (table `audit_log`, migration 0005).

Every administrative action is recorded in the same transaction as the action: either both
happen or neither. Superadmins read every entry, tenant admins their tenant's.
"""

from __future__ import annotations

from typing import Any

import psycopg
from cdrstats_collector import auth
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

_INSERT = (
    "INSERT INTO audit_log (tenant_id, user_id, username, action, target, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
_RECENT = """
SELECT a.at, t.name, a.username, a.action, a.target, a.detail
FROM audit_log a LEFT JOIN tenant t ON t.id = a.tenant_id
WHERE %(t)s::bigint IS NULL OR a.tenant_id = %(t)s
ORDER BY a.at DESC, a.id DESC LIMIT %(n)s
"""


def _values(
    who: auth.Principal, action: str, tenant_id: int | None, target: str, detail: dict[str, Any]
) -> tuple[Any, ...]:
    return (tenant_id, who.user_id, who.username, action, target, Jsonb(detail))


def record_sync(
    conn: psycopg.Connection[Any],
    who: auth.Principal,
    action: str,
    tenant_id: int | None,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(_INSERT, _values(who, action, tenant_id, target, detail or {}))


async def record(
    conn: psycopg.AsyncConnection[Any],
    who: auth.Principal,
    action: str,
    tenant_id: int | None,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(_INSERT, _values(who, action, tenant_id, target, detail or {}))


async def recent(
    pool: AsyncConnectionPool[Any], tenant_id: int | None, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest entries first: all of them (`tenant_id` None) or one tenant's."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(_RECENT, {"t": tenant_id, "n": limit})).fetchall()
    return [
        {
            "at": r[0],
            "tenant": r[1],
            "username": r[2],
            "action": r[3],
            "target": r[4],
            "detail": r[5],
        }
        for r in rows
    ]
