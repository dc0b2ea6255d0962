"""Home, dashboard, live, CDR and report pages (their figures come from the JSON API)."""

from __future__ import annotations

from typing import Any

from cdrstats_collector import auth, search
from cdrstats_collector.state import get_state
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import data
from .accounts import home_of
from .console import Console, page


@page
async def home(console: Console, request: Request) -> Response:
    who = await auth.principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(await home_of(console, request, who), status_code=303)


async def _context(console: Console, request: Request, active: str) -> dict[str, Any]:
    who, tenant, tenants = await console.tenant_context(request)
    return {
        "who": who,
        "tenant": tenant,
        "tenants": tenants,
        "switches": await data.switches(get_state(request).pool, tenant["id"]),
        "today": data.local_today(tenant["timezone"]).isoformat(),
        "active": active,
    }


@page
async def dashboard(console: Console, request: Request) -> Response:
    context = await _context(console, request, "dashboard")
    context["periods"] = data.PERIODS
    return console.render(request, "dashboard.html", context)


@page
async def live(console: Console, request: Request) -> Response:
    return console.render(request, "live.html", await _context(console, request, "live"))


@page
async def cdrs(console: Console, request: Request) -> Response:
    context = await _context(console, request, "cdrs")
    context.update(
        matches=search.MATCHES,
        directions=search.DIRECTIONS,
        dispositions=search.DISPOSITIONS,
        sorts=search.SORTS,
    )
    return console.render(request, "cdrs.html", context)


@page
async def reports(console: Console, request: Request) -> Response:
    return console.render(request, "reports.html", await _context(console, request, "reports"))
