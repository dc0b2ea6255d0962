"""The console as the collector mounts it.

    console = Console(settings)
    routes.append(console.mount())                 # last: it serves "/" and below
    Starlette(..., middleware=[console.session_middleware()])

The console is a `Router` (not a separate Starlette app), so its handlers see the collector's
application and its state (`state.get_state(request).pool`). Per-process objects (templates,
the login limiter, the realtime broker) live on the `Console` instance; nothing is global.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from cdrstats_agent import logs
from cdrstats_collector import auth
from cdrstats_collector.realtime import Broker
from cdrstats_collector.settings import Settings
from cdrstats_collector.state import get_state
from psycopg_pool import PoolTimeout
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import security
from .sessions import ConsoleSessions

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
VENDOR = STATIC / "vendor"

log = logs.get_logger("cdrstats.web.console")

Handler = Callable[["Console", Request], Awaitable[Response]]


class Console:
    def __init__(self, settings: Settings, *, broker: Broker | None = None) -> None:
        self.settings = settings
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["csrf_field"] = security.CSRF_FIELD
        self.limiter = security.LoginLimiter()
        self.broker = broker or Broker(settings.database_url)
        self.https = bool(settings.public_url and settings.public_url.startswith("https://"))
        if not (VENDOR / ".built").exists():
            # The API works without them; the pages would load without styles and charts.
            log.warning(
                "console_assets_missing",
                dir=str(VENDOR),
                hint="run `make` (or `cd web && npm ci && npm run build`)",
            )

    # -- wiring ------------------------------------------------------------------------------

    def session_middleware(self) -> Middleware:
        return Middleware(ConsoleSessions, https_only=self.https)

    def mount(self) -> Mount:
        from . import (
            accounts,
            admin,
            alerts_pages,
            blocks,
            imports,
            notifications,
            pages,
            rules_pages,
            stream,
            switches,
            tokens,
        )

        def r(path: str, handler: Handler, methods: list[str] | None = None) -> Route:
            return Route(path, functools.partial(handler, self), methods=methods or ["GET"])

        routes: list[BaseRoute] = [
            Mount("/static", app=StaticFiles(directory=str(STATIC), check_dir=False)),
            r("/", pages.home),
            r("/login", accounts.login_page),
            r("/login", accounts.login, ["POST"]),
            r("/logout", accounts.logout, ["POST"]),
            r("/t/{tenant:int}/", pages.dashboard),
            r("/t/{tenant:int}/live", pages.live),
            r("/t/{tenant:int}/cdrs", pages.cdrs),
            r("/t/{tenant:int}/reports", pages.reports),
            r("/t/{tenant:int}/events", stream.events),
            r("/t/{tenant:int}/switches", switches.view),
            r("/t/{tenant:int}/switches/token", switches.create_token, ["POST"]),
            r("/t/{tenant:int}/switches/revoke", switches.revoke, ["POST"]),
            r("/t/{tenant:int}/blocks", blocks.view),
            r("/t/{tenant:int}/blocks", blocks.block, ["POST"]),
            r("/t/{tenant:int}/blocks/unblock", blocks.unblock, ["POST"]),
            r("/t/{tenant:int}/import", imports.view),
            r("/t/{tenant:int}/import/{job}", imports.job),
            r("/t/{tenant:int}/alerts", alerts_pages.view),
            r("/t/{tenant:int}/alerts/count", alerts_pages.count),
            r("/t/{tenant:int}/alerts/{alert:int}/acknowledge", alerts_pages.acknowledge, ["POST"]),
            r("/t/{tenant:int}/alerts/{alert:int}/snooze", alerts_pages.snooze, ["POST"]),
            r("/t/{tenant:int}/alerts/{alert:int}/resolve", alerts_pages.resolve, ["POST"]),
            r("/t/{tenant:int}/rules", rules_pages.view),
            r("/t/{tenant:int}/rules", rules_pages.create, ["POST"]),
            r("/t/{tenant:int}/rules/{rule:int}", rules_pages.update, ["POST"]),
            r("/t/{tenant:int}/rules/{rule:int}/enabled", rules_pages.set_enabled, ["POST"]),
            r("/t/{tenant:int}/rules/{rule:int}/delete", rules_pages.delete, ["POST"]),
            r("/t/{tenant:int}/notifications", notifications.view),
            r("/t/{tenant:int}/notifications", notifications.add, ["POST"]),
            r(
                "/t/{tenant:int}/notifications/{channel:int}/enabled",
                notifications.set_enabled,
                ["POST"],
            ),
            r(
                "/t/{tenant:int}/notifications/{channel:int}/severity",
                notifications.set_severity,
                ["POST"],
            ),
            r("/t/{tenant:int}/notifications/{channel:int}/test", notifications.test, ["POST"]),
            r("/t/{tenant:int}/notifications/{channel:int}/delete", notifications.delete, ["POST"]),
            r("/account", tokens.view),
            r("/account/tokens", tokens.create, ["POST"]),
            r("/account/tokens/revoke", tokens.revoke, ["POST"]),
            r("/admin", admin.view),
            r("/admin/tenants", admin.add_tenant, ["POST"]),
            r("/admin/users", admin.add_user, ["POST"]),
            r("/admin/accountcodes", admin.add_accountcode, ["POST"]),
            r("/admin/accountcodes/remove", admin.remove_accountcode, ["POST"]),
        ]
        return Mount("", routes=routes)

    # -- helpers for handlers ----------------------------------------------------------------

    def render(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        context.setdefault("who", None)
        context.setdefault("tenant", None)
        context.setdefault("tenants", [])
        context["csrf_token"] = security.csrf_token(request)
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    async def tenants_of(self, request: Request, who: auth.Principal) -> list[dict[str, Any]]:
        """Tenants `who` may look at (all for a superadmin), as {id, name, timezone}."""
        pool = get_state(request).pool
        async with pool.connection() as conn:
            if who.is_superadmin:
                cur = await conn.execute("SELECT id, name, timezone FROM tenant ORDER BY name")
            else:
                cur = await conn.execute(
                    "SELECT id, name, timezone FROM tenant WHERE id = %s", (who.tenant_id,)
                )
            return [{"id": r[0], "name": r[1], "timezone": r[2]} for r in await cur.fetchall()]

    async def tenant_context(
        self, request: Request
    ) -> tuple[auth.Principal, dict[str, Any], list[dict[str, Any]]]:
        """The user and the tenant named in the path; 401 / 404 (another tenant's or none)."""
        who = await auth.principal(request)
        if who is None:
            raise HTTPException(401, "log in first")
        tid = auth.tenant_scope(who, request.path_params["tenant"])
        tenants = await self.tenants_of(request, who)
        for tenant in tenants:
            if tenant["id"] == tid:
                return who, tenant, tenants
        raise HTTPException(404, f"no tenant {tid}")

    async def admin_form(
        self, request: Request, forbidden: str
    ) -> tuple[FormData, auth.Principal, int]:
        """A tenant page's POST: the CSRF-checked form, the user and the tenant id; 403 with
        `forbidden` for a viewer (only tenant admins and superadmins change things)."""
        form = await security.checked_form(request)
        who, tenant, _ = await self.tenant_context(request)
        if who.role not in auth.ADMIN_ROLES:
            raise HTTPException(403, forbidden)
        return form, who, int(tenant["id"])


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def page(
    handler: Callable[[Console, Request], Awaitable[Response]],
) -> Callable[[Console, Request], Awaitable[Response]]:
    """HTML pages: 401 becomes a redirect to the login page, other errors an error page."""

    @functools.wraps(handler)
    async def wrapped(console: Console, request: Request) -> Response:
        try:
            return await handler(console, request)
        except (psycopg.OperationalError, PoolTimeout):
            response = console.render(
                request,
                "error.html",
                {"status": 503, "detail": "The database is unreachable; try again shortly."},
                status_code=503,
            )
            response.headers["Retry-After"] = "5"
            return response
        except HTTPException as exc:
            if exc.status_code == 401:
                return login_redirect(request)
            who = await auth.principal(request)
            return console.render(
                request,
                "error.html",
                {"status": exc.status_code, "detail": exc.detail, "who": who},
                status_code=exc.status_code,
            )

    return wrapped
