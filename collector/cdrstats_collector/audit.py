"""The audit log (table `audit_log`, migration 0005): one log for every administrative action.

Written in the same transaction as the action it records (either both happen or neither), by
the console (cdrstats_web/audit.py, for a logged-in user) and by the command queue
(commands.py, for a user, a rule or an agent's report).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_INSERT = (
    "INSERT INTO audit_log (tenant_id, user_id, username, action, target, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


def _values(
    tenant_id: int | None,
    user_id: int | None,
    username: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None,
) -> tuple[Any, ...]:
    return (tenant_id, user_id, username, action, target, Jsonb(detail or {}))


async def record(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int | None,
    user_id: int | None,
    username: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(_INSERT, _values(tenant_id, user_id, username, action, target, detail))


def record_sync(
    conn: psycopg.Connection[Any],
    tenant_id: int | None,
    user_id: int | None,
    username: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(_INSERT, _values(tenant_id, user_id, username, action, target, detail))
