"""Admin: tenants, users and account codes mapped to tenants.

A superadmin sees and creates tenants and users of any role, and maps account codes to
tenants (one switch shared by several customers: docs/console.md); a tenant admin sees the
users of its own tenant and creates tenant users there, and sees the account codes mapped to
its tenant; a tenant viewer may not open the page. Changes go through
`cdrstats_collector.tenants` and `users` (the functions behind `cdrstats tenant add` and
`cdrstats user add`), each with its audit entry in the same transaction.
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
_SWITCHES = """
SELECT s.id, t.name || ' / ' || s.name FROM switch s JOIN tenant t ON t.id = s.tenant_id
ORDER BY t.name, s.name
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
        switches = await (await conn.execute(_SWITCHES)).fetchall() if scope is None else []
    codes = await asyncio.to_thread(_accountcodes, console.settings.database_url)
    if scope is not None:
        own = {t["name"] for t in tenants_}
        codes = [c for c in codes if c["tenant"] in own]
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
        "accountcodes": codes,
        "all_switches": [{"id": r[0], "name": r[1]} for r in switches],
        "active": "admin",
        **(extra or {}),
    }
    return console.render(request, "admin.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request, await _admin(request))


def _accountcodes(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return tenants.accountcodes(conn)


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
        elif action == "accountcode.unmap":
            tenant_id = int(result["tenant_id"])
            detail = {**detail, "accountcode": result["accountcode"], "tenant": result["tenant"]}
            detail["switch_id"] = result["switch_id"]
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


def _superadmin(who: auth.Principal) -> None:
    if not who.is_superadmin:
        raise HTTPException(403, "only a superadmin may map account codes to tenants")


@page
async def add_accountcode(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _admin(request)
    _superadmin(who)
    code = str(form.get("accountcode") or "").strip()
    tenant_name = str(form.get("tenant") or "").strip()
    switch_text = str(form.get("switch_id") or "").strip()
    if switch_text and not switch_text.isdigit():
        return await _render(console, request, who, {"error": "switch: not a switch id"}, 422)
    switch_id = int(switch_text) if switch_text else None
    try:
        await asyncio.to_thread(
            _sync,
            console.settings.database_url,
            who,
            "accountcode.map",
            code,
            {"tenant": tenant_name, "switch_id": switch_id},
            tenants.add_accountcode,
            code,
            tenant_name,
            switch_id,
        )
    except tenants.AdminError as exc:
        return await _render(console, request, who, {"error": str(exc)}, 422)
    message = f"account code {code!r} mapped to tenant {tenant_name!r}"
    return await _render(console, request, who, {"message": message}, 201)


@page
async def remove_accountcode(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _admin(request)
    _superadmin(who)
    text = str(form.get("mapping_id") or "").strip()
    if not text.isdigit():
        return await _render(console, request, who, {"error": "mapping_id: not a mapping"}, 422)
    try:
        removed = await asyncio.to_thread(
            _sync,
            console.settings.database_url,
            who,
            "accountcode.unmap",
            text,
            {},
            tenants.remove_accountcode,
            int(text),
        )
    except tenants.AdminError as exc:
        return await _render(console, request, who, {"error": str(exc)}, 404)
    message = f"account code {removed['accountcode']!r} no longer mapped to {removed['tenant']!r}"
    return await _render(console, request, who, {"message": message})
