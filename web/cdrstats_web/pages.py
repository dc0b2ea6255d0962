"""Home, dashboard, live and CDR pages, and the JSON they fetch."""

from __future__ import annotations

from cdrstats_collector import auth
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from . import data
from .accounts import home_of
from .console import Console, page


async def _json_context(console: Console, request: Request) -> tuple[int, str]:
    """(tenant id, timezone) for a JSON route; errors as JSON."""
    try:
        _who, tenant, _ = await console.tenant_context(request)
    except HTTPException as exc:
        raise HTTPException(exc.status_code, str(exc.detail)) from None
    return int(tenant["id"]), str(tenant["timezone"])


@page
async def home(console: Console, request: Request) -> Response:
    who = await auth.principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(await home_of(console, request, who), status_code=303)


@page
async def dashboard(console: Console, request: Request) -> Response:
    who, tenant, tenants = await console.tenant_context(request)
    switches = await data.switches(get_state(request).pool, tenant["id"])
    return console.render(
        request,
        "dashboard.html",
        {
            "who": who,
            "tenant": tenant,
            "tenants": tenants,
            "switches": switches,
            "periods": data.PERIODS,
            "active": "dashboard",
        },
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def dashboard_json(console: Console, request: Request) -> Response:
    try:
        tid, tz = await _json_context(console, request)
        switch_id = data.parse_switch(request.query_params.get("switch"))
        body = await data.dashboard(
            get_state(request).pool, tid, tz, request.query_params.get("period", "today"), switch_id
        )
    except HTTPException as exc:
        return _error(exc.status_code, str(exc.detail))
    except data.BadParam as exc:
        return _error(422, str(exc))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def recent_json(console: Console, request: Request) -> Response:
    try:
        tid, _tz = await _json_context(console, request)
        switch_id = data.parse_switch(request.query_params.get("switch"))
        rows = await data.recent(get_state(request).pool, tid, switch_id)
    except HTTPException as exc:
        return _error(exc.status_code, str(exc.detail))
    except data.BadParam as exc:
        return _error(422, str(exc))
    return JSONResponse({"cdrs": rows}, headers={"Cache-Control": "no-store"})


@page
async def live(console: Console, request: Request) -> Response:
    who, tenant, tenants = await console.tenant_context(request)
    switches = await data.switches(get_state(request).pool, tenant["id"])
    return console.render(
        request,
        "live.html",
        {"who": who, "tenant": tenant, "tenants": tenants, "switches": switches, "active": "live"},
    )


@page
async def cdrs(console: Console, request: Request) -> Response:
    who, tenant, tenants = await console.tenant_context(request)
    pool = get_state(request).pool
    try:
        switch_id = data.parse_switch(request.query_params.get("switch"))
    except data.BadParam as exc:
        raise HTTPException(422, str(exc)) from None
    rows = await data.recent(pool, tenant["id"], switch_id, limit=100)
    return console.render(
        request,
        "cdrs.html",
        {
            "who": who,
            "tenant": tenant,
            "tenants": tenants,
            "switches": await data.switches(pool, tenant["id"]),
            "switch": switch_id,
            "rows": rows,
            "active": "cdrs",
        },
    )
