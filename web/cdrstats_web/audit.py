"""The console's side of the audit log (cdrstats_collector/audit.py): entries by a user.

Every administrative action is recorded in the same transaction as the action: either both
happen or neither. Superadmins read every entry, tenant admins their tenant's.
"""

from __future__ import annotations

from typing import Any

import psycopg
from cdrstats_collector import audit, auth
from psycopg_pool import AsyncConnectionPool

_RECENT = """
SELECT a.at, t.name, a.username, a.action, a.target, a.detail
FROM audit_log a LEFT JOIN tenant t ON t.id = a.tenant_id
WHERE %(t)s::bigint IS NULL OR a.tenant_id = %(t)s
ORDER BY a.at DESC, a.id DESC LIMIT %(n)s
"""


def record_sync(
    conn: psycopg.Connection[Any],
    who: auth.Principal,
    action: str,
    tenant_id: int | None,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    audit.record_sync(conn, tenant_id, who.user_id, who.username, action, target, detail)


async def record(
    conn: psycopg.AsyncConnection[Any],
    who: auth.Principal,
    action: str,
    tenant_id: int | None,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    await audit.record(conn, tenant_id, who.user_id, who.username, action, target, detail)


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
