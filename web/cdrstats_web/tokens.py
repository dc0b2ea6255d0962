"""`/account`: the logged-in user's API tokens for the JSON API.

A token is made by `cdrstats_collector.auth.create_token` (the function behind `cdrstats
api-token create`), shown once, and acts as its user (same role, same tenant). Users list and
revoke their own tokens; each creation and revocation is audited.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
from cdrstats_collector import auth
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import audit, security
from .console import Console, page

MAX_TTL_DAYS = 3650
_MINE = """
SELECT encode(token_hash, 'hex'), label, created_at, expires_at, revoked_at, last_used_at
FROM api_token WHERE user_id = %s ORDER BY created_at DESC
"""
_REVOKE = (
    "UPDATE api_token SET revoked_at = now()"
    " WHERE token_hash = decode(%s, 'hex') AND user_id = %s AND revoked_at IS NULL"
    " RETURNING label"
)


async def _who(request: Request) -> auth.Principal:
    who = await auth.principal(request)
    if who is None:
        raise HTTPException(401, "log in first")
    return who


async def _render(
    console: Console,
    request: Request,
    who: auth.Principal,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    async with get_state(request).pool.connection() as conn:
        rows = await (await conn.execute(_MINE, (who.user_id,))).fetchall()
    tenants = await console.tenants_of(request, who)
    context = {
        "who": who,
        "tenants": tenants,
        "tenant": tenants[0] if who.tenant_id is not None and tenants else None,
        "tokens": [
            {
                "id": r[0],
                "label": r[1],
                "created": r[2],
                "expires": r[3],
                "revoked": r[4],
                "last_used": r[5],
            }
            for r in rows
        ],
        "active": "account",
        **(extra or {}),
    }
    return console.render(request, "account.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request, await _who(request))


def _create(database_url: str, who: auth.Principal, label: str, days: int | None) -> str:
    with psycopg.connect(database_url, connect_timeout=5) as conn, conn.transaction():
        ttl = None if days is None else timedelta(days=days)
        token = auth.create_token(conn, who.username, label, ttl)
        detail = {"label": label, "ttl_days": days}
        audit.record_sync(conn, who, "api_token.create", who.tenant_id, who.username, detail)
        return str(token)


@page
async def create(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _who(request)
    label = str(form.get("label") or "").strip()[:100]
    days_text = str(form.get("ttl_days") or "").strip()
    days: int | None = None
    if days_text:
        if not days_text.isdigit() or not 1 <= int(days_text) <= MAX_TTL_DAYS:
            return await _render(
                console,
                request,
                who,
                {"error": f"ttl_days: a whole number of days from 1 to {MAX_TTL_DAYS}, or empty"},
                422,
            )
        days = int(days_text)
    token = await asyncio.to_thread(_create, console.settings.database_url, who, label, days)
    return await _render(console, request, who, {"new_token": token}, 201)


@page
async def revoke(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    who = await _who(request)
    ident = str(form.get("token_id") or "")
    if len(ident) != 64 or any(c not in "0123456789abcdef" for c in ident):
        return await _render(console, request, who, {"error": "token_id: not a token id"}, 422)
    async with get_state(request).pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(_REVOKE, (ident, who.user_id))).fetchone()
        if row is not None:
            await audit.record(
                conn, who, "api_token.revoke", who.tenant_id, who.username, {"label": row[0]}
            )
    if row is None:
        return await _render(console, request, who, {"error": "no such active token"}, 404)
    auth.forget_cached(request)
    return await _render(console, request, who, {"message": "token revoked"})
