"""Switches & agents: enrolled agents with their status, enrollment tokens, revocation.

The spool figures (batches and CDRs waiting, delivery lag) are what the agent sent with its
last stored batch (docs/protocol.md, payload `spool`); an agent that never sent them shows a dash.

Tokens are made by `cdrstats_collector.enroll.create_token`, the same function as
`cdrstats agent-token create`, and the page shows the same command to run on the switch.
Creating tokens and revoking agents needs a tenant admin (or a superadmin).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from cdrstats_collector import auth, enroll, live, tenants
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import audit, data, security
from .console import Console, page

ADMIN_ROLES = auth.ADMIN_ROLES
ONLINE_WITHIN = timedelta(minutes=2)
MAX_TTL_HOURS = 24 * 30

_AGENTS = """
SELECT a.id, s.name, a.hostname, a.version, a.enrolled_at, a.revoked_at, a.last_seen_at,
       a.last_seq, a.switch_id, a.spool_batches, a.spool_cdrs, a.spool_lag_s, a.status_at
FROM agent a JOIN switch s ON s.id = a.switch_id
WHERE a.tenant_id = %s ORDER BY a.revoked_at IS NOT NULL, s.name, a.enrolled_at
"""
_REVOKE = (
    "UPDATE agent SET revoked_at = now()"
    " WHERE id = %s AND tenant_id = %s AND revoked_at IS NULL RETURNING id"
)


def _status(revoked: datetime | None, seen: datetime | None, now: datetime) -> str:
    if revoked is not None:
        return "revoked"
    if seen is None:
        return "never seen"
    return "online" if now - seen <= ONLINE_WITHIN else "offline"


def _duration(seconds: float) -> str:
    """A lag as people read it: 0.4 s, 12 s, 5 min 3 s, 2 h 10 min, 3 d 4 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86_400, "h", 3600), ("h", 3600, "min", 60)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // sub_size} {sub}"
    if whole >= 60:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole} s"


async def _agents(request: Request, tenant_id: int) -> list[dict[str, Any]]:
    pool = get_state(request).pool
    async with pool.connection() as conn:
        rows = await (await conn.execute(_AGENTS, (tenant_id,))).fetchall()
    async with auth.tenant_connection(pool, tenant_id) as conn:
        counts = await live.live_counts(conn, tenant_id)
    now = datetime.now(UTC)
    return [
        {
            "id": str(r[0]),
            "switch": r[1],
            "hostname": r[2],
            "version": r[3],
            "enrolled": r[4],
            "revoked": r[5],
            "last_seen": r[6],
            "last_seq": r[7],
            "live_calls": counts.get(int(r[8])),
            "status": _status(r[5], r[6], now),
            "spool_batches": r[9],
            "spool_cdrs": r[10],
            "lag": None if r[11] is None else _duration(float(r[11])),
            "status_at": r[12],
        }
        for r in rows
    ]


async def _render(
    console: Console, request: Request, extra: dict[str, Any] | None = None, status: int = 200
) -> Response:
    who, tenant, tenants_ = await console.tenant_context(request)
    context = {
        "who": who,
        "tenant": tenant,
        "tenants": tenants_,
        "agents": await _agents(request, tenant["id"]),
        "switches": await data.switches(get_state(request).pool, tenant["id"]),
        "can_admin": who.role in ADMIN_ROLES,
        "active": "switches",
        **(extra or {}),
    }
    return console.render(request, "switches.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request)


async def _admin_context(
    console: Console, request: Request
) -> tuple[auth.Principal, dict[str, Any]]:
    who, tenant, _ = await console.tenant_context(request)
    if who.role not in ADMIN_ROLES:
        raise HTTPException(403, "only a tenant admin may do this")
    return who, tenant


def _make_token(
    database_url: str, who: auth.Principal, tenant_id: int, switch: str, hours: int
) -> str:
    """The token, the switch (created when new) and the audit entry in one transaction."""
    with psycopg.connect(database_url, connect_timeout=5) as conn, conn.transaction():
        switch_id = tenants.ensure_switch(conn, tenant_id, switch)
        token = enroll.create_token(conn, tenant_id, switch_id, timedelta(hours=hours))
        audit.record_sync(conn, who, "agent_token.create", tenant_id, switch, {"ttl_hours": hours})
        return str(token)


@page
async def create_token(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who, tenant = await _admin_context(console, request)
    switch = str(form.get("switch") or "").strip()
    ttl_text = str(form.get("ttl_hours") or "24").strip()
    problem = None
    if not switch or len(switch) > 100:
        problem = "switch: give the switch a name (at most 100 characters)"
    elif not ttl_text.isdigit() or not 1 <= int(ttl_text) <= MAX_TTL_HOURS:
        problem = f"ttl_hours: a whole number of hours from 1 to {MAX_TTL_HOURS}"
    if problem:
        return await _render(console, request, {"error": problem}, status=422)
    token = await asyncio.to_thread(
        _make_token, console.settings.database_url, who, int(tenant["id"]), switch, int(ttl_text)
    )
    command = f"cdrstats-agent enroll {console.settings.url} {token}"
    notice = {"switch": switch, "command": command, "hours": int(ttl_text)}
    return await _render(console, request, {"token": notice}, status=201)


@page
async def revoke(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who, tenant = await _admin_context(console, request)
    try:
        agent_id = UUID(str(form.get("agent_id") or ""))
    except ValueError:
        return await _render(console, request, {"error": "agent_id: not an agent id"}, 422)
    state = get_state(request)
    async with state.pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(_REVOKE, (agent_id, tenant["id"]))).fetchone()
        if row is not None:
            await audit.record(conn, who, "agent.revoke", int(tenant["id"]), str(agent_id))
    if row is None:
        return await _render(
            console, request, {"error": f"no active agent {agent_id} in this tenant"}, 404
        )
    state.agents.forget(agent_id)
    return await _render(console, request, {"message": f"agent {agent_id} revoked"})
