"""Login and logout.

Passwords are checked with `cdrstats_collector.users.verify_password` (argon2id) in a worker
thread. A successful login starts a new session (no session fixation: the old one is
cleared) holding `user_id`, which `cdrstats_collector.auth.principal` reads, and a new CSRF
token. Failures are counted by `security.LoginLimiter`.
"""

from __future__ import annotations

import asyncio

from cdrstats_collector import auth, users
from cdrstats_collector.state import get_state
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import security
from .console import Console, page

_LOOKUP = "SELECT id, password_hash, role, tenant_id FROM app_user WHERE username = %s"
# Verified against when the username is unknown, so that the answer takes as long.
_DUMMY_HASH = users.hash_password("cdrstats-dummy-password")
MAX_FIELD = 200


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def home_of(console: Console, request: Request, who: auth.Principal) -> str:
    if who.tenant_id is not None:
        return f"/t/{who.tenant_id}/"
    tenants = await console.tenants_of(request, who)
    return f"/t/{tenants[0]['id']}/" if tenants else "/admin"


@page
async def login_page(console: Console, request: Request) -> Response:
    who = await auth.principal(request)
    if who is not None:
        return RedirectResponse(await home_of(console, request, who), status_code=303)
    return console.render(
        request, "login.html", {"next": safe_next(request.query_params.get("next"))}
    )


def _failed(
    console: Console,
    request: Request,
    status: int,
    message: str,
    username: str,
    target: str,
    headers: dict[str, str] | None = None,
) -> Response:
    response = console.render(
        request,
        "login.html",
        {"error": message, "username": username, "next": target},
        status_code=status,
    )
    if headers:
        response.headers.update(headers)
    return response


@page
async def login(console: Console, request: Request) -> Response:
    form = await security.checked_form(request)
    username = str(form.get("username") or "").strip()[:MAX_FIELD]
    password = str(form.get("password") or "")[:1024]
    target = safe_next(str(form.get("next") or ""))
    address = request.client.host if request.client else "?"
    wait = console.limiter.retry_after(address, username)
    if wait:
        return _failed(
            console,
            request,
            429,
            f"Too many failed logins. Try again in {wait} seconds.",
            username,
            target,
            {"Retry-After": str(wait)},
        )
    if not username or not password:
        return _failed(console, request, 400, "Enter your username and password.", username, target)
    async with get_state(request).pool.connection() as conn:
        row = await (await conn.execute(_LOOKUP, (username,))).fetchone()
    stored = str(row[1]) if row else _DUMMY_HASH
    ok = await asyncio.to_thread(users.verify_password, stored, password)
    if row is None or not ok:
        console.limiter.failed(address, username)
        return _failed(console, request, 401, "Wrong username or password.", username, target)
    console.limiter.succeeded(address, username)
    request.session.clear()
    request.session["user_id"] = int(row[0])
    security.new_csrf_token(request)
    auth.forget_cached(request)
    who = auth.Principal(
        int(row[0]), username, str(row[2]), None if row[3] is None else int(row[3])
    )
    if target == "/":
        target = await home_of(console, request, who)
    return RedirectResponse(target, status_code=303)


@page
async def logout(console: Console, request: Request) -> Response:
    await security.checked_form(request)
    request.session.clear()
    auth.forget_cached(request)
    return RedirectResponse("/login", status_code=303)
