"""Who is calling, and which tenant's data they may read.

    p = await principal(request)            # Principal | None
    p = await require(request, roles=("superadmin", "tenant_admin"))   # 401 / 403
    tid = tenant_scope(p, request.query_params.get("tenant"))          # 404 / 422
    async with tenant_connection(pool, tid) as conn:                   # RLS-scoped reads
        ...

A request is authenticated by `Authorization: Bearer cdrs_api_...` (an API token made by
`cdrstats api-token create --user NAME`; only its sha256 is stored), else by the console's
session (`request.session["user_id"]`, set at login by the web console's SessionMiddleware).
A bearer header that is present but wrong authenticates nobody (no fall back to the session).
Lookups are cached for `CACHE_TTL_S` seconds per application (in `app.state`, no globals).

Tenant isolation is enforced twice: `tenant_scope` decides the tenant in code (a tenant user
can never name another tenant: 404), and `tenant_connection` runs the reads as the database
role `cdrstats_reader` with `cdrstats.tenant_id` set, under row-level security (migration
0003): a query that forgets a `tenant_id = ...` condition still sees one tenant only.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from .state import CollectorState
from .tenants import AdminError, InvalidArgument

ROLES = ("superadmin", "tenant_admin", "tenant_viewer")
ADMIN_ROLES = ("superadmin", "tenant_admin")
"""Roles that may change things (the viewer only reads)."""
TOKEN_PREFIX = "cdrs_api_"
CACHE_TTL_S = 30.0
_CACHE_MAX = 10_000
READER_ROLE = "cdrstats_reader"


@dataclass(frozen=True)
class Principal:
    """An authenticated user: a superadmin (no tenant) or a user of exactly one tenant."""

    user_id: int
    username: str
    role: str  # 'superadmin' | 'tenant_admin' | 'tenant_viewer'
    tenant_id: int | None

    @property
    def is_superadmin(self) -> bool:
        return self.role == "superadmin"


class ParamError(HTTPException):
    """422: a query parameter is wrong; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(422, f"{param}: {message}")
        self.param = param


# --- tokens --------------------------------------------------------------------------------


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(
    conn: psycopg.Connection[Any],
    username: str,
    label: str = "",
    ttl: timedelta | None = None,
) -> str:
    """Create an API token for `username`; returns the token (shown once, stored hashed)."""
    if ttl is not None and ttl <= timedelta(0):
        raise InvalidArgument("the token lifetime must be positive")
    row = conn.execute("SELECT id FROM app_user WHERE username = %s", (username,)).fetchone()
    if row is None:
        raise AdminError(f"no user named {username!r}: create it with `cdrstats user add`")
    token = new_token()
    with conn.transaction():
        conn.execute(
            "INSERT INTO api_token (token_hash, user_id, label, expires_at)"
            " VALUES (%s, %s, %s, now() + %s)",
            (hash_token(token), row[0], label, ttl),
        )
    return token


def revoke_tokens(conn: psycopg.Connection[Any], username: str) -> int:
    """Revoke every live token of `username`; returns how many."""
    if conn.execute("SELECT 1 FROM app_user WHERE username = %s", (username,)).fetchone() is None:
        raise AdminError(f"no user named {username!r}")
    with conn.transaction():
        cur = conn.execute(
            "UPDATE api_token t SET revoked_at = now() FROM app_user u"
            " WHERE u.id = t.user_id AND u.username = %s AND t.revoked_at IS NULL",
            (username,),
        )
    return cur.rowcount


# --- authentication ------------------------------------------------------------------------


class _Cache:
    """Short-lived lookups: key -> (Principal | None, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, Any], tuple[Principal | None, float]] = {}

    def get(self, key: tuple[str, Any]) -> tuple[bool, Principal | None]:
        hit = self.entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, key: tuple[str, Any], value: Principal | None) -> None:
        if len(self.entries) >= _CACHE_MAX:
            self.entries.clear()
        self.entries[key] = (value, time.monotonic() + CACHE_TTL_S)


def _cache(conn: HTTPConnection) -> _Cache:
    cache: _Cache | None = getattr(conn.app.state, "cdrstats_auth_cache", None)
    if cache is None:
        cache = _Cache()
        conn.app.state.cdrstats_auth_cache = cache
    return cache


def forget_cached(conn: HTTPConnection) -> None:
    """Drop cached lookups (after a logout, a revocation or a role change)."""
    _cache(conn).entries.clear()


_BY_TOKEN = """
UPDATE api_token t SET last_used_at = now()
FROM app_user u
WHERE t.token_hash = %s AND u.id = t.user_id AND t.revoked_at IS NULL
  AND (t.expires_at IS NULL OR t.expires_at > now())
RETURNING u.id, u.username, u.role, u.tenant_id
"""
_BY_ID = "SELECT id, username, role, tenant_id FROM app_user WHERE id = %s"


async def _lookup(pool: AsyncConnectionPool[Any], query: str, arg: Any) -> Principal | None:
    async with pool.connection() as conn:
        row = await (await conn.execute(query, (arg,))).fetchone()
    if row is None:
        return None
    return Principal(int(row[0]), str(row[1]), str(row[2]), None if row[3] is None else int(row[3]))


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


async def principal(request: HTTPConnection) -> Principal | None:
    """The authenticated user of `request` (bearer API token, else console session), or None."""
    cache = _cache(request)
    token = _bearer(request)
    if token is not None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        key: tuple[str, Any] = ("token", hash_token(token))
    elif "session" in request.scope and request.session.get("user_id") is not None:
        try:
            key = ("user", int(request.session["user_id"]))
        except (TypeError, ValueError):
            return None
    else:
        return None
    found, who = cache.get(key)
    if found:
        return who
    state: CollectorState = request.app.state.collector
    pool = state.pool
    who = await _lookup(pool, _BY_TOKEN if key[0] == "token" else _BY_ID, key[1])
    cache.put(key, who)
    return who


async def require(request: HTTPConnection, roles: Iterable[str] | None = None) -> Principal:
    """The caller, or HTTPException 401 (nobody) / 403 (role not among `roles`)."""
    who = await principal(request)
    if who is None:
        raise HTTPException(
            401,
            "authentication required: send Authorization: Bearer <API token>",
            headers={"WWW-Authenticate": 'Bearer realm="cdrstats"'},
        )
    if roles is not None and who.role not in tuple(roles):
        raise HTTPException(403, f"role {who.role} may not do this")
    return who


def tenant_scope(who: Principal, requested_tenant: int | str | None) -> int:
    """The tenant whose data `who` reads.

    A superadmin names it (`?tenant=ID`, required). A tenant user gets its own tenant; naming
    another one is 404 (the same answer as a tenant that does not exist), never ignored.
    """
    requested: int | None
    if requested_tenant is None or requested_tenant == "":
        requested = None
    elif isinstance(requested_tenant, int):
        requested = requested_tenant
    else:
        try:
            requested = int(requested_tenant)
        except ValueError:
            raise ParamError("tenant", f"not a tenant id: {requested_tenant!r}") from None
    if requested is not None and requested <= 0:
        raise ParamError("tenant", f"not a tenant id: {requested_tenant!r}")
    if who.is_superadmin:
        if requested is None:
            raise ParamError("tenant", "a superadmin must choose a tenant with ?tenant=ID")
        return requested
    if who.tenant_id is None:  # cannot happen (CHECK constraint on app_user), refuse anyway
        raise HTTPException(403, "this user belongs to no tenant")
    if requested is not None and requested != who.tenant_id:
        raise HTTPException(404, f"no tenant {requested}")
    return who.tenant_id


@asynccontextmanager
async def tenant_connection(
    pool: AsyncConnectionPool[Any], tenant_id: int
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection in a transaction that sees only `tenant_id`'s rows (RLS).

    The role switch and the setting are transaction-local: the connection goes back to the
    pool as it came.
    """
    tid = int(tenant_id)  # an int: safe to write into the statement (one round trip)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            f"SET LOCAL ROLE {READER_ROLE};"
            f" SELECT set_config('cdrstats.tenant_id', '{tid}', true)".encode()
        )
        yield conn
