"""The read API: reports, CDR search, CDR detail and exports, JSON under /api/v1.

Every route is declared once as an `Endpoint` (path, parameters, handler, result schema);
the same declaration drives parsing (422 naming the parameter), the tenant check and the
OpenAPI document (`openapi.py`, served at /api/v1/openapi.json).

A request goes: authenticate (401) -> parse the query (422) -> choose the tenant
(`auth.tenant_scope`: 404 for another tenant) -> open a connection scoped to that tenant
(row-level security) and read its timezone (404 if the tenant does not exist) -> handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from cdrstats_agent import logs
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from . import export, replies, reports, search
from .auth import READER_ROLE, ParamError, Principal, require, tenant_scope
from .params import TENANT, Param, parse, period
from .state import CollectorState, get_state

log = logs.get_logger("cdrstats.collector.api")

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Ctx:
    request: Request
    who: Principal
    tenant_id: int
    tenant_name: str
    tz: ZoneInfo
    args: dict[str, Any]
    state: CollectorState

    @property
    def today(self) -> date:
        return datetime.now(self.tz).date()


Handler = Callable[[Ctx, Conn], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    path: str
    operation: str
    summary: str
    handler: Handler
    params: tuple[Param, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)
    media_type: str = "application/json"
    tag: str = "reports"
    description: str = ""


async def _tenant(conn: Conn, tenant_id: int) -> tuple[str, ZoneInfo]:
    # Under row-level security the tenant row is visible only to its own tenant scope.
    cur = await conn.execute("SELECT name, timezone FROM tenant WHERE id = %s", (tenant_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no tenant {tenant_id}")
    try:
        return str(row[0]), ZoneInfo(str(row[1]))
    except (ZoneInfoNotFoundError, ValueError):
        return str(row[0]), ZoneInfo("UTC")


@asynccontextmanager
async def _scoped(state: CollectorState, tenant_id: int) -> AsyncIterator[Conn]:
    """`auth.tenant_connection`, in pipeline mode: BEGIN, the role, the tenant setting and
    the tenant's row go to the server in one round trip."""
    async with state.pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {READER_ROLE}")
        await conn.execute("SELECT set_config('cdrstats.tenant_id', %s, true)", (str(tenant_id),))
        yield conn


NO_STORE = {"Cache-Control": "private, no-store"}
"""One tenant's data: never kept by a cache, not even the browser's."""


def _error(exc: HTTPException) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, ParamError):
        extra["param"] = exc.param
    headers = dict(exc.headers) if exc.headers else None
    return replies.error(exc.status_code, str(exc.detail), headers=headers, **extra)


def _view(ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def view(request: Request) -> Response:
        state = get_state(request)
        try:
            who = await require(request)
            args = parse(ep.params, request.query_params, request.path_params)
            asked = request.query_params.getlist("tenant")
            if len(asked) > 1:
                raise ParamError("tenant", "given more than once")
            tenant_id = tenant_scope(who, asked[0] if asked else None)
            async with _scoped(state, tenant_id) as conn:
                name, tz = await _tenant(conn, tenant_id)
                ctx = Ctx(request, who, tenant_id, name, tz, args, state)
                result = await ep.handler(ctx, conn)
        except HTTPException as exc:
            return _error(exc)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("api_db_unavailable", path=request.url.path, reason=str(exc)[:200])
            return replies.unavailable("PostgreSQL is unavailable, try again shortly")
        if isinstance(result, Response):
            return result
        return JSONResponse(result, headers=NO_STORE)

    return view


# --- common parameters -------------------------------------------------------------------------

FROM = Param("from", "date", "First local day of the period (default: `to`).")
TO = Param("to", "date", "Last local day of the period, inclusive (default: today).")
SWITCH = Param("switch", "integer", "Only this switch (id).", minimum=1)
DIRECTION = Param("direction", "enum", "Only this direction.", choices=search.DIRECTIONS)
MAX_DAYS = 731


# --- handlers --------------------------------------------------------------------------------


async def h_dashboard(ctx: Ctx, conn: Conn) -> Any:
    start, end = period(ctx.args, ctx.today, max_days=MAX_DAYS)
    return await reports.dashboard(conn, ctx.tenant_id, ctx.tz, start, end, ctx.args)


SERIES_LIMITS = {"hour": 31, "day": 731, "month": 3660}
SERIES_DEFAULT = {"hour": 1, "day": 30, "month": 365}


async def h_series(ctx: Ctx, conn: Conn) -> Any:
    g = ctx.args["granularity"]
    start, end = period(
        ctx.args, ctx.today, max_days=SERIES_LIMITS[g], default_days=SERIES_DEFAULT[g]
    )
    return await reports.series(conn, ctx.tenant_id, ctx.tz, g, start, end, ctx.args)


async def h_compare(ctx: Ctx, conn: Conn) -> Any:
    day = ctx.args["day"] or ctx.today
    return await reports.compare(conn, ctx.tenant_id, ctx.tz, day, ctx.args["weeks"], ctx.args)


async def h_top(ctx: Ctx, conn: Conn) -> Any:
    start, end = period(ctx.args, ctx.today, max_days=MAX_DAYS)
    a = ctx.args
    return await reports.top(
        conn, ctx.tenant_id, a["by"], start, end, a["limit"], a["order"], ctx.args
    )


async def h_breakdown(ctx: Ctx, conn: Conn) -> Any:
    start, end = period(ctx.args, ctx.today, max_days=MAX_DAYS)
    a = ctx.args
    return await reports.breakdown(conn, ctx.tenant_id, a["by"], start, end, a["limit"], a)


async def h_switches(ctx: Ctx, conn: Conn) -> Any:
    names = await search.switch_names(conn, ctx.tenant_id)
    return {
        "tenant": {"id": ctx.tenant_id, "name": ctx.tenant_name, "timezone": ctx.tz.key},
        "switches": [{"id": i, "name": n} for i, n in sorted(names.items())],
    }


async def h_search(ctx: Ctx, conn: Conn) -> Any:
    a = ctx.args
    return await search.search(conn, ctx.tenant_id, ctx.tz, a, a["limit"], a["cursor"])


async def h_detail(ctx: Ctx, conn: Conn) -> Any:
    found = await search.detail(conn, ctx.tenant_id, ctx.tz, ctx.args["id"])
    if found is None:
        raise HTTPException(404, "no such CDR")
    return found


def _export(fmt: str) -> Handler:
    async def handler(ctx: Ctx, conn: Conn) -> Any:
        w = search.where(ctx.tenant_id, ctx.tz, ctx.args)
        names = await search.switch_names(conn, ctx.tenant_id)
        stamp = ctx.today.strftime("%Y%m%d")
        headers = {
            "Content-Disposition": f'attachment; filename="cdrs-{ctx.tenant_id}-{stamp}.{fmt}"',
            **NO_STORE,
        }
        pool = ctx.state.pool
        if fmt == "csv":
            body = export.csv_stream(pool, ctx.tenant_id, ctx.tz, w, names)
            return StreamingResponse(body, media_type="text/csv; charset=utf-8", headers=headers)
        body = export.xlsx_stream(pool, ctx.tenant_id, ctx.tz, w, names)
        return StreamingResponse(body, media_type=XLSX, headers=headers)

    return handler


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


# --- result schemas (OpenAPI) -----------------------------------------------------------------

_NUM = {"type": ["number", "null"]}
KPIS = {
    "type": "object",
    "description": "asr/ner in %, acd/aloc/ring_avg in seconds (null when undefined)",
    "properties": {
        **{
            k: {"type": "integer"}
            for k in ("calls", "answered", "busy", "no_answer", "failed", "cancelled")
        },
        **{k: _NUM for k in ("asr", "ner", "acd", "aloc", "ring_avg")},
        "minutes": {"type": "number"},
        "duration_minutes": {"type": "number"},
        "peak_concurrent": {"type": "integer"},
    },
}
_ITEMS = {"type": "array", "items": {"type": "object"}}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


_STR = {"type": "string"}
CDR: dict[str, Any] = {
    "type": "object",
    "description": "One CDR; times in the tenant's timezone (ISO 8601 with offset)",
    "properties": {
        "id": _STR,
        **{c: {} for c in search.COLUMNS},
        "switch": _STR,
    },
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "/api/v1/reports/dashboard",
        "dashboard",
        "KPIs of a period and of the period of the same length just before it",
        h_dashboard,
        (FROM, TO, SWITCH, DIRECTION),
        _obj(
            **{k: _STR for k in ("from", "to", "previous_from", "previous_to", "timezone")},
            current=KPIS,
            previous=KPIS,
        ),
    ),
    Endpoint(
        "/api/v1/reports/series",
        "series",
        "KPIs per local hour, day or month (empty buckets included)",
        h_series,
        (
            Param(
                "granularity",
                "enum",
                "Bucket size (hour: at most 31 days; day: 731 days).",
                default="day",
                choices=("hour", "day", "month"),
            ),
            FROM,
            TO,
            SWITCH,
            DIRECTION,
        ),
        _obj(
            granularity=_STR,
            timezone=_STR,
            buckets={"type": "array", "items": KPIS},
        ),
    ),
    Endpoint(
        "/api/v1/reports/compare",
        "compare",
        "A day beside the same weekday of the previous weeks (totals and local hours)",
        h_compare,
        (
            Param("day", "date", "The local day (default: today)."),
            Param("weeks", "integer", "How many weeks back.", default=4, minimum=1, maximum=12),
            SWITCH,
            DIRECTION,
        ),
        _obj(day=_STR, weekday=_STR, timezone=_STR, days=_ITEMS),
    ),
    Endpoint(
        "/api/v1/reports/top",
        "top",
        "Top destinations (dial prefixes) or countries",
        h_top,
        (
            Param(
                "by",
                "enum",
                "What to rank.",
                default="country",
                choices=("country", "destination"),
            ),
            FROM,
            TO,
            DIRECTION,
            Param(
                "order",
                "enum",
                "Rank by.",
                default="calls",
                choices=("calls", "answered", "minutes"),
            ),
            Param("limit", "integer", "How many.", default=10, minimum=1, maximum=500),
        ),
        _obj(by=_STR, items=_ITEMS),
    ),
    Endpoint(
        "/api/v1/reports/breakdown",
        "breakdown",
        "Calls by hangup cause, disposition, SIP code, switch, trunk or direction",
        h_breakdown,
        (
            Param(
                "by",
                "enum",
                "Grouping.",
                default="cause",
                choices=("cause", "disposition", "sip_code", "switch", "trunk", "direction"),
            ),
            FROM,
            TO,
            SWITCH,
            DIRECTION,
            Param("limit", "integer", "How many groups.", default=50, minimum=1, maximum=1000),
        ),
        _obj(by=_STR, items=_ITEMS),
    ),
    Endpoint(
        "/api/v1/switches",
        "switches",
        "The tenant and its switches",
        h_switches,
        (),
        _obj(tenant={"type": "object"}, switches=_ITEMS),
        tag="cdrs",
    ),
    Endpoint(
        "/api/v1/cdrs",
        "search_cdrs",
        "Search CDRs, newest first (or by `sort` and `order`), with keyset pagination"
        " (`next_cursor`)",
        h_search,
        (
            *search.FILTERS,
            *search.SORT_PARAMS,
            Param("limit", "integer", "Page size.", default=100, minimum=1, maximum=1000),
            Param("cursor", "cursor", "`next_cursor` of the previous page."),
        ),
        _obj(
            count={"type": "integer"},
            next_cursor={"type": ["string", "null"]},
            items={"type": "array", "items": CDR},
        ),
        tag="cdrs",
    ),
    Endpoint(
        "/api/v1/cdrs/export.csv",
        "export_csv",
        "A search exported as CSV (streamed, chronological order)",
        _export("csv"),
        search.FILTERS,
        {"type": "string"},
        media_type="text/csv",
        tag="cdrs",
    ),
    Endpoint(
        "/api/v1/cdrs/export.xlsx",
        "export_xlsx",
        "A search exported as an Excel workbook (streamed, chronological order)",
        _export("xlsx"),
        search.FILTERS,
        {"type": "string", "format": "binary"},
        media_type=XLSX,
        tag="cdrs",
    ),
    Endpoint(
        "/api/v1/cdrs/{id}",
        "get_cdr",
        "One CDR with every field, the switch's raw fields in `extra`",
        h_detail,
        (Param("id", "cursor", "The CDR's `id` from a search.", location="path"),),
        {
            **CDR,
            "properties": {
                **CDR["properties"],
                **{c: {} for c in search.DETAIL_COLUMNS if c not in search.COLUMNS},
            },
        },
        tag="cdrs",
    ),
)


def all_params(ep: Endpoint) -> tuple[Param, ...]:
    return (*ep.params, TENANT)


def routes() -> list[BaseRoute]:
    """The read API's routes and the OpenAPI document, to mount in the collector app."""
    from .openapi import openapi_endpoint

    out: list[BaseRoute] = [
        Route(ep.path, _view(ep), methods=["GET"], name=ep.operation) for ep in ENDPOINTS
    ]
    out.append(Route("/api/v1/openapi.json", openapi_endpoint, methods=["GET"]))
    return out
