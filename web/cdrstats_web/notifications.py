"""Notifications: the tenant's alert notification channels (email, signed webhooks).

    GET  /t/{tenant}/notifications                       channels, last delivery, last test
    POST /t/{tenant}/notifications                       add (kind=email|webhook, target, ...)
    POST /t/{tenant}/notifications/{id}/enabled          enabled=1|0
    POST /t/{tenant}/notifications/{id}/severity         min_severity=info|warning|critical
    POST /t/{tenant}/notifications/{id}/test             send a test notification now
    POST /t/{tenant}/notifications/{id}/delete

Checks, storage, sending and the audit entries are `cdrstats_collector.notify` (the functions
behind the notification API and `cdrstats notify`): a `ChannelError` is shown on the page as
is, naming the field at fault, and changes nothing. A webhook's secret is shown once, in the
page that answers its creation. Every role reads; tenant admins and superadmins change.
Another tenant's channel id is 404, as for a channel that does not exist.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cdrstats_collector import auth, notify
from cdrstats_collector.state import get_state
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .console import Console, page

FORBIDDEN = "only a tenant admin may change notification channels"
ADMIN_ROLES = notify.ADMIN_ROLES

# The newest attempt to deliver an alert through each channel (the notifier's rows).
_LAST_DELIVERY = (
    "SELECT DISTINCT ON (channel_id) channel_id, at, ok, error, alert_id, attempt"
    " FROM notify_delivery WHERE tenant_id = %s AND channel_id IS NOT NULL"
    " ORDER BY channel_id, at DESC, id DESC"
)
# The newest test of each channel (tests are audited, not delivered alerts).
_LAST_TEST = (
    "SELECT DISTINCT ON (target) target, at, username, detail FROM audit_log"
    " WHERE tenant_id = %s AND action = 'notify.channel_test'"
    " ORDER BY target, at DESC, id DESC"
)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


async def _render(
    console: Console, request: Request, extra: dict[str, Any] | None = None, status: int = 200
) -> Response:
    who, tenant, tenants_ = await console.tenant_context(request)
    tid = int(tenant["id"])
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        channels = await notify.list_channels(conn, tid)
        cur = await conn.execute(_LAST_DELIVERY, (tid,))
        delivered = {int(r[0]): r[1:] for r in await cur.fetchall()}
        cur = await conn.execute(_LAST_TEST, (tid,))
        tested = {str(r[0]): r[1:] for r in await cur.fetchall()}
    rows = []
    for ch in channels:
        row: dict[str, Any] = {**ch.to_json(), "created_text": _when(ch.created_at)}
        last = delivered.get(ch.id)
        if last is not None:
            at, ok, error, alert_id, attempt = last
            row["delivery"] = {
                "at": _when(at),
                "ok": bool(ok),
                "error": error or "",
                "alert_id": alert_id,
                "attempt": attempt,
            }
        test = tested.get(f"{ch.kind}:{ch.id}")
        if test is not None:
            at, by, detail = test
            detail = detail if isinstance(detail, dict) else {}
            row["test"] = {
                "at": _when(at),
                "by": by,
                "ok": bool(detail.get("ok")),
                "error": str(detail.get("error") or ""),
            }
        rows.append(row)
    context: dict[str, Any] = {
        "who": who,
        "tenant": tenant,
        "tenants": tenants_,
        "channels": rows,
        "can_act": who.role in ADMIN_ROLES,
        "severities": notify.SEVERITIES,
        "max_addresses": notify.MAX_ADDRESSES,
        "email_ready": bool(console.settings.smtp_host),
        "saved": request.query_params.get("saved", "")[:200],
        "form": {},
        "active": "notifications",
        **(extra or {}),
    }
    return console.render(request, "notifications.html", context, status_code=status)


@page
async def view(console: Console, request: Request) -> Response:
    return await _render(console, request)


def _done(tenant_id: int, message: str) -> Response:
    return RedirectResponse(f"/t/{tenant_id}/notifications?saved={quote(message)}", status_code=303)


def _text(form: FormData, name: str, limit: int = 2100) -> str:
    return str(form.get(name) or "").strip()[:limit]


def doc_from_form(form: FormData) -> dict[str, Any]:
    """The channel document of the add form (what `notify.check_channel` takes)."""
    return {
        "kind": _text(form, "kind", 20),
        "target": _text(form, "target"),
        "min_severity": _text(form, "min_severity", 20) or "warning",
        "name": _text(form, "name", 200),
    }


def _channel_id(request: Request) -> int:
    return int(request.path_params["channel"])


@page
async def add(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    doc = doc_from_form(form)
    try:
        async with get_state(request).pool.connection() as conn:
            channel = await notify.add_channel(conn, tid, doc, by=who.username, user_id=who.user_id)
    except notify.ChannelError as exc:
        extra = {"error": str(exc), "error_field": exc.field, "form": doc}
        return await _render(console, request, extra, 422)
    if channel.kind == "webhook":
        # The secret is shown here and never again (like an API token): no redirect.
        created = {"id": channel.id, "target": channel.target, "secret": channel.secret}
        extra = {"saved": f"webhook {channel.id} added", "new_webhook": created}
        return await _render(console, request, extra, 201)
    return _done(tid, f"email channel {channel.id} added ({channel.target})")


async def _update(
    console: Console, request: Request, who: auth.Principal, tid: int, doc: dict[str, Any]
) -> Response:
    channel_id = _channel_id(request)
    try:
        async with get_state(request).pool.connection() as conn:
            channel = await notify.update_channel(
                conn, tid, channel_id, doc, by=who.username, user_id=who.user_id
            )
    except notify.ChannelError as exc:
        return await _render(console, request, {"error": str(exc), "error_field": exc.field}, 422)
    if channel is None:
        raise HTTPException(404, f"no notification channel {channel_id} in this tenant")
    changed = ", ".join(f"{k} {v}" for k, v in doc.items())
    return _done(tid, f"{channel.kind} channel {channel.id}: {changed}")


@page
async def set_enabled(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    doc = {"enabled": _text(form, "enabled", 5) == "1"}
    return await _update(console, request, who, tid, doc)


@page
async def set_severity(console: Console, request: Request) -> Response:
    form, who, tid = await console.admin_form(request, FORBIDDEN)
    doc = {"min_severity": _text(form, "min_severity", 40)}
    return await _update(console, request, who, tid, doc)


@page
async def test(console: Console, request: Request) -> Response:
    _form, who, tid = await console.admin_form(request, FORBIDDEN)
    channel_id = _channel_id(request)
    try:
        async with get_state(request).pool.connection() as conn:
            error = await notify.test_channel(
                conn, console.settings, tid, channel_id, by=who.username, user_id=who.user_id
            )
    except LookupError:
        raise HTTPException(404, f"no notification channel {channel_id} in this tenant") from None
    result = {"id": channel_id, "ok": error is None, "error": error or ""}
    return await _render(console, request, {"tested": result}, 200 if error is None else 502)


@page
async def delete(console: Console, request: Request) -> Response:
    _form, who, tid = await console.admin_form(request, FORBIDDEN)
    channel_id = _channel_id(request)
    async with get_state(request).pool.connection() as conn:
        gone = await notify.delete_channel(
            conn, tid, channel_id, by=who.username, user_id=who.user_id
        )
    if not gone:
        raise HTTPException(404, f"no notification channel {channel_id} in this tenant")
    return _done(tid, f"channel {channel_id} deleted")
