"""Alerts: the tenant's alerts, filtered by state; tenant admins acknowledge, snooze, resolve.

    GET  /t/{tenant}/alerts?state=active|open|acknowledged|snoozed|resolved|all
    GET  /t/{tenant}/alerts/count            {"open": n, "active": n} (the menu's badge)
    POST /t/{tenant}/alerts/{id}/acknowledge
    POST /t/{tenant}/alerts/{id}/snooze      seconds
    POST /t/{tenant}/alerts/{id}/resolve

The transitions are `cdrstats_collector.alerts` (audited, NOTIFY cdrstats_alert); the page
gets new and changed alerts live from the tab's event stream (`alert` events, alerts.js).
An alert whose detail names a source IP has a block button (the block dialog, blocks.py).
Each alert shows its notification state (`notify_state`, the reason of a failure on hover;
the channels are on the Notifications page, notifications.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cdrstats_collector import alerts, auth
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .console import Console, page

ADMIN_ROLES = auth.ADMIN_ROLES
FILTERS = [
    ("active", "Active"),
    ("open", "Open"),
    ("acknowledged", "Acknowledged"),
    ("snoozed", "Snoozed"),
    ("resolved", "Resolved"),
    ("all", "All"),
]
SNOOZES = [(900, "15 minutes"), (3600, "1 hour"), (14400, "4 hours"), (86400, "24 hours")]
_TIMES = (
    "opened_at",
    "last_seen_at",
    "acknowledged_at",
    "snoozed_until",
    "resolved_at",
    "notified_at",
)


def _utc(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state_filter(request: Request) -> str:
    wanted = request.query_params.get("state", "active")
    return wanted if wanted in dict(FILTERS) else "active"


async def _render(
    console: Console, request: Request, extra: dict[str, Any] | None = None, status: int = 200
) -> Response:
    who, tenant, tenants_ = await console.tenant_context(request)
    tid = int(tenant["id"])
    state = _state_filter(request)
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        rows = await alerts.list_alerts(conn, tid, None if state == "all" else state)
    for a in rows:
        for key in _TIMES:
            a[key + "_text"] = _utc(a.get(key))
        detail: dict[str, Any] = a["detail"] if isinstance(a.get("detail"), dict) else {}
        a["source_ip"] = detail.get("source_ip") or ""
        a["switch"] = detail.get("switch") or ""
        a["detail_items"] = [
            (k, v if isinstance(v, str | int | float) else str(v)) for k, v in detail.items()
        ]
    context: dict[str, Any] = {
        "who": who,
        "tenant": tenant,
        "tenants": tenants_,
        "alerts": rows,
        "state": state,
        "filters": FILTERS,
        "snoozes": SNOOZES,
        "can_act": who.role in ADMIN_ROLES,
        "message": request.query_params.get("done", "")[:200],
        "active": "alerts",
        **(extra or {}),
    }
    return console.render(request, "alerts.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request)


async def count(console: Console, request: Request) -> Response:
    """Open and active alerts of the tenant, for the menu's badge (JSON)."""
    try:
        _who, tenant, _ = await console.tenant_context(request)
    except HTTPException as exc:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
    tid = int(tenant["id"])
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'open'), count(*) FROM alert"
            " WHERE tenant_id = %s AND state <> 'resolved'",
            (tid,),
        )
        row = await cur.fetchone()
    opened, active = (int(row[0]), int(row[1])) if row else (0, 0)
    return JSONResponse({"open": opened, "active": active}, headers={"Cache-Control": "no-store"})


async def _transition(console: Console, request: Request, verb: str) -> Response:
    form, who, tid = await console.admin_form(request, "only a tenant admin may change an alert")
    alert_id = int(request.path_params["alert"])
    back = str(form.get("state") or "active")
    back = back if back in dict(FILTERS) else "active"
    try:
        async with get_state(request).pool.connection() as conn:
            if verb == "acknowledge":
                alert = await alerts.acknowledge(
                    conn, tid, alert_id, who.username, user_id=who.user_id
                )
            elif verb == "snooze":
                text = str(form.get("seconds") or "")
                seconds = int(text) if text.isdigit() else -1
                alert = await alerts.snooze(
                    conn, tid, alert_id, seconds, who.username, user_id=who.user_id
                )
            else:
                alert = await alerts.resolve(conn, tid, alert_id, who.username, user_id=who.user_id)
    except alerts.AlertNotFound:
        raise HTTPException(404, f"no alert {alert_id} in this tenant") from None
    except alerts.AlertError as exc:
        return await _render(console, request, {"error": str(exc)}, 422)
    from urllib.parse import quote

    done = quote(f"alert {alert_id} {alert['state']}")
    return RedirectResponse(f"/t/{tid}/alerts?state={back}&done={done}", status_code=303)


@page
async def acknowledge(console: Console, request: Request) -> Response:
    return await _transition(console, request, "acknowledge")


@page
async def snooze(console: Console, request: Request) -> Response:
    return await _transition(console, request, "snooze")


@page
async def resolve(console: Console, request: Request) -> Response:
    return await _transition(console, request, "resolve")
