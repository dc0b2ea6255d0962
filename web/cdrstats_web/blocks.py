"""Blocked IPs: active blocks, expiring soon, history; block and unblock from the console.

    GET  /t/{tenant}/blocks           the page (anyone of the tenant; viewers only read)
    POST /t/{tenant}/blocks           block: switch, ip, ttl, dry_run (tenant admins)
    POST /t/{tenant}/blocks/unblock   unblock: switch, ip (tenant admins)

Commands are made by `cdrstats_collector.commands.create_command`, the function behind
`POST /api/v1/blocks` and `cdrstats block`: the same checks (address, allowlist, maximum
number of blocks), signature, queue and audit entry, issued by the logged-in user. A refused
command (allowlisted address, bad duration, unknown switch) is shown on the page with the
reason and changes nothing. A queued command redirects to the page (`?queued=<command id>`),
which refreshes itself while a command waits for its agent's result (blocks.js).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cdrstats_collector import auth, commands, keys
from cdrstats_collector.state import get_state
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import data
from .console import Console, page

ADMIN_ROLES = auth.ADMIN_ROLES
EXPIRING_WITHIN = timedelta(hours=1)
DURATIONS = [
    ("15m", "15 minutes"),
    ("1h", "1 hour"),
    ("6h", "6 hours"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
]
HISTORY = 100


def span(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _ttl_text(args: dict[str, Any]) -> str:
    ttl = args.get("ttl")
    return span(ttl) if type(ttl) is int else ""


async def _state(request: Request, tenant_id: int) -> dict[str, Any]:
    """Active blocks (done, and pending block commands), expiring soon, the command history."""
    now = datetime.now(UTC)
    async with auth.tenant_connection(get_state(request).pool, tenant_id) as conn:
        blocks = await commands.active_blocks(conn, tenant_id)
        history = [c.to_json() for c in await commands.list_commands(conn, tenant_id, HISTORY)]
    active: list[dict[str, Any]] = []
    for b in blocks:
        expires = datetime.fromisoformat(b["expires_at"])
        active.append(
            {
                **b,
                "status": "active",
                "since": datetime.fromisoformat(b["blocked_at"]),
                "expires": expires,
                "expires_in": span((expires - now).total_seconds()),
                "soon": expires - now <= EXPIRING_WITHIN,
            }
        )
    blocked = {(b["switch"], b["ip"]) for b in blocks}
    for c in history:
        key = (c["switch"], c["args"].get("ip"))
        if c["verb"] == "block_ip" and c["status"] == "pending" and key not in blocked:
            blocked.add(key)
            active.append(
                {
                    "switch": c["switch"],
                    "ip": c["args"].get("ip"),
                    "issued_by": c["issued_by"],
                    "command_id": c["id"],
                    "status": "pending",
                    "since": datetime.fromisoformat(c["issued_at"]),
                    "expires": None,
                    "expires_in": (_ttl_text(c["args"]) + " once done").strip(),
                    "soon": False,
                }
            )
    for c in history:
        c["ip"] = c["args"].get("ip", "")
        c["ttl"] = _ttl_text(c["args"]) if c["verb"] == "block_ip" else ""
        c["dry_run"] = bool(c["args"].get("dry_run"))
        c["issued"] = datetime.fromisoformat(c["issued_at"])
    return {
        "active": active,
        "expiring": [b for b in active if b["soon"]],
        "history": history,
        "pending": any(c["status"] == "pending" for c in history),
    }


async def _render(
    console: Console,
    request: Request,
    extra: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    who, tenant, tenants_ = await console.tenant_context(request)
    state = await _state(request, int(tenant["id"]))
    queued = None
    wanted = request.query_params.get("queued", "")
    for c in state["history"]:
        if c["id"] == wanted:
            queued = c
    context: dict[str, Any] = {
        "who": who,
        "tenant": tenant,
        "tenants": tenants_,
        "switches": await data.switches(get_state(request).pool, int(tenant["id"])),
        "can_act": who.role in ADMIN_ROLES,
        "durations": DURATIONS,
        "queued": queued,
        "form": {},
        "active": "blocks",
        **state,
        **(extra or {}),
    }
    return console.render(request, "blocks.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request)


async def _command(console: Console, request: Request, verb: str) -> Response:
    form, who, tid = await console.admin_form(
        request, "only a tenant admin may block or unblock an address"
    )
    settings = get_state(request).settings
    values: dict[str, Any] = {
        "switch": str(form.get("switch") or "").strip()[:100],
        "ip": str(form.get("ip") or "").strip()[:100],
        "ttl": str(form.get("ttl") or settings.default_block_ttl_s).strip()[:20],
        "dry_run": bool(form.get("dry_run")),
    }
    problem = None
    if not values["switch"]:
        problem = "switch: choose the switch that should block the address"
    elif not values["ip"]:
        problem = "ip: give the address to block (IPv4 or IPv6)"
    if problem:
        return await _render(console, request, {"error": problem, "form": values}, 422)
    args: dict[str, Any] = {"ip": values["ip"], "dry_run": values["dry_run"]}
    if verb == "block_ip":
        args["ttl"] = values["ttl"]
    own = await commands.own_addresses(request)
    try:
        async with get_state(request).pool.connection() as conn:
            row = await commands.create_command(
                conn,
                tenant_id=tid,
                switch=values["switch"],
                verb=verb,
                args=args,
                issued_by=who.username,
                user_id=who.user_id,
                own_addresses=lambda: own,
                **commands.limits(settings),
            )
    except commands.NotFound as exc:
        return await _render(console, request, {"error": str(exc), "form": values}, 404)
    except commands.CommandError as exc:
        return await _render(console, request, {"error": str(exc), "form": values}, 422)
    except keys.NoCollectorKey as exc:
        raise HTTPException(503, str(exc)) from None
    return RedirectResponse(f"/t/{tid}/blocks?queued={uuid.UUID(str(row.id))}", status_code=303)


@page
async def block(console: Console, request: Request) -> Response:
    return await _command(console, request, "block_ip")


@page
async def unblock(console: Console, request: Request) -> Response:
    return await _command(console, request, "unblock_ip")
