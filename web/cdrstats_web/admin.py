"""Admin: tenants and users.

A superadmin sees and creates tenants and users of any role; a tenant admin sees the users
of its own tenant and creates tenant users there; a tenant viewer may not open the page.
Creation goes through `cdrstats_collector.tenants.add_tenant` and `users.add_user`, the
functions behind `cdrstats tenant add` and `cdrstats user add`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from cdrstats_collector import auth, tenants, users
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import audit, security
from .console import Console, page

_USERS = """
SELECT u.id, u.username, u.role, t.name, u.created_at
FROM app_user u LEFT JOIN tenant t ON t.id = u.tenant_id
WHERE %(t)s::bigint IS NULL OR u.tenant_id = %(t)s
ORDER BY t.name NULLS FIRST, u.username
"""


async def _admin(request: Request) -> auth.Principal:
    who = await auth.principal(request)
    if who is None:
        raise HTTPException(401, "log in first")
    if who.role not in ("superadmin", "tenant_admin"):
        raise HTTPException(403, "only administrators may open the admin page")
    return who


async def _render(
    console: Console,
    request: Request,
    who: auth.Principal,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    tenants_ = await console.tenants_of(request, who)
    scope = None if who.is_superadmin else who.tenant_id
    async with get_state(request).pool.connection() as conn:
        rows = await (await conn.execute(_USERS, {"t": scope})).fetchall()
    context = {
        "who": who,
        "tenants": tenants_,
        "tenant": tenants_[0] if scope is not None and tenants_ else None,
        "users": [
            {"id": r[0], "username": r[1], "role": r[2], "tenant": r[3], "created": r[4]}
            for r in rows
        ],
        "roles": users.ROLES if who.is_superadmin else users.ROLES[1:],
        "audit": await audit.recent(get_state(request).pool, scope),
        "active": "admin",
        **(extra or {}),
    }
    return console.render(request, "admin.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request, await _admin(request))


def _sync(
    database_url: str,
    who: auth.Principal,
    action: str,
    target: str,
    detail: dict[str, Any],
    fn: Any,
    *args: Any,
) -> Any:
    """`fn(conn, *args)` and its audit entry in one transaction."""
    with psycopg.connect(database_url, connect_timeout=5) as conn, conn.transaction():
        result = fn(conn, *args)
        tenant_name = detail.get("tenant")
        tenant_id = tenants.tenant_id(conn, tenant_name) if tenant_name else None
        if action == "tenant.create":
            tenant_id = int(result)
        audit.record_sync(conn, who, action, tenant_id, target, detail)
        return result


@page
async def add_tenant(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _admin(request)
    if not who.is_superadmin:
        raise HTTPException(403, "only a superadmin may create tenants")
    name = str(form.get("name") or "").strip()[:100]
    timezone = str(form.get("timezone") or "UTC").strip()[:64]
    try:
        await asyncio.to_thread(
            _sync,
            console.settings.database_url,
            who,
            "tenant.create",
            name,
            {"timezone": timezone},
            tenants.add_tenant,
            name,
            timezone,
        )
    except tenants.AdminError as exc:
        return await _render(console, request, who, {"error": str(exc)}, 422)
    return await _render(console, request, who, {"message": f"tenant {name!r} created"}, 201)


@page
async def add_user(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _admin(request)
    username = str(form.get("username") or "").strip()[:100]
    role = str(form.get("role") or "")
    password = str(form.get("password") or "")[:1024]
    tenant_name: str | None = str(form.get("tenant") or "").strip() or None
    if not who.is_superadmin:
        if role == "superadmin":
            raise HTTPException(403, "only a superadmin may create superadmins")
        own = await console.tenants_of(request, who)
        tenant_name = own[0]["name"] if own else None
    if role == "superadmin":
        tenant_name = None
    try:
        await asyncio.to_thread(
            _sync,
            console.settings.database_url,
            who,
            "user.create",
            username,
            {"role": role, "tenant": tenant_name},
            users.add_user,
            username,
            role,
            password,
            tenant_name,
        )
    except tenants.AdminError as exc:
        return await _render(console, request, who, {"error": str(exc)}, 422)
    return await _render(console, request, who, {"message": f"user {username!r} created"}, 201)
