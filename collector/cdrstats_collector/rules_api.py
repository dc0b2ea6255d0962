"""JSON API of rules, alerts and destination lists (docs/rules.md).

    GET    /api/v1/rules                       viewers: the tenant's rules
    POST   /api/v1/rules                       admins: create (201; 400 names the field)
    GET    /api/v1/rules/{id}                  viewers
    PUT    /api/v1/rules/{id}                  admins: change (fields given replace the stored)
    DELETE /api/v1/rules/{id}                  admins
    GET    /api/v1/alerts?state=&limit=        viewers: newest first (state: open,
                                               acknowledged, snoozed, resolved, active)
    GET    /api/v1/alerts/{id}                 viewers
    POST   /api/v1/alerts/{id}/acknowledge     admins
    POST   /api/v1/alerts/{id}/snooze          admins: {"seconds": N} (default: the rule's snooze_s)
    POST   /api/v1/alerts/{id}/resolve         admins
    GET    /api/v1/dest-lists/{list}           viewers: risk | blacklist | whitelist
    PUT    /api/v1/dest-lists/{list}           admins: {"entries": ["+882", {"prefix", "note"}]}
    DELETE /api/v1/dest-lists/{list}           admins: back to the defaults

Tenant-scoped like the other APIs (auth.py): a tenant user acts on its own tenant, a superadmin
names it (`tenant` in the query or the body). Reads run under row-level security. A write
authenticated by the console's session cookie must carry `X-CSRF-Token` (API tokens need none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import alerts, apidoc, auth, replies, rules
from .import_api import check_csrf
from .state import get_state

ADMIN_ROLES = auth.ADMIN_ROLES
VIEW_ROLES = auth.ROLES


async def _body(request: Request) -> dict[str, Any]:
    if not (await request.body()).strip():
        return {}  # acknowledge, resolve: no body needed
    return await replies.json_object(request, "the rule", max_bytes=512 * 1024)


def _id(request: Request) -> int:
    try:
        value = int(request.path_params["id"])
    except ValueError:
        raise HTTPException(404, "no such id") from None
    if not 0 < value < 2**63:
        raise HTTPException(404, "no such id")
    return value


Handler = Callable[[Request, auth.Principal, int, dict[str, Any]], Awaitable[Response]]


def _endpoint(handler: Handler, write: bool) -> Callable[[Request], Awaitable[Response]]:
    """Authentication, tenant scope, JSON body and the error mapping around `handler`."""

    async def endpoint(request: Request) -> Response:
        try:
            who = await auth.require(request, roles=ADMIN_ROLES if write else VIEW_ROLES)
            if write:
                check_csrf(request)  # a console session must send X-CSRF-Token
            doc = await _body(request) if write and request.method in ("POST", "PUT") else {}
            tenant = doc.pop("tenant", None) if write else None
            if tenant is None:
                tenant = request.query_params.get("tenant")
            if tenant is not None and type(tenant) not in (int, str):
                raise HTTPException(422, "tenant: must be a tenant id")
            tenant_id = auth.tenant_scope(who, tenant)
            return await handler(request, who, tenant_id, doc)
        except HTTPException as exc:
            return replies.error(
                exc.status_code,
                str(exc.detail),
                headers=dict(exc.headers) if exc.headers else None,
            )
        except rules.RuleNotFound as exc:
            return replies.error(404, str(exc))
        except rules.RuleError as exc:
            return replies.error(400, str(exc), field=str(exc).split(":", 1)[0])
        except alerts.AlertNotFound as exc:
            return replies.error(404, str(exc))
        except alerts.AlertError as exc:
            return replies.error(409 if "cannot be" in str(exc) else 400, str(exc))
        except (psycopg.OperationalError, PoolTimeout):
            return replies.unavailable("database unavailable, retry later")

    return endpoint


def _json(doc: Any, status: int = 200) -> Response:
    return JSONResponse(doc, status_code=status, headers={"Cache-Control": "private, no-store"})


# --- rules -----------------------------------------------------------------------------------


async def _list_rules(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await rules.list_rules(conn, tid)
    return _json({"tenant_id": tid, "rules": found, "kinds": list(rules.KINDS)})


async def _get_rule(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await rules.get_rule(conn, tid, _id(request))
    if found is None:
        raise HTTPException(404, "no such rule")
    return _json(found)


async def _create_rule(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with get_state(request).pool.connection() as conn:
        made = await rules.create_rule(conn, tid, doc, who.username, user_id=who.user_id)
    return _json(made, 201)


async def _update_rule(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with get_state(request).pool.connection() as conn:
        made = await rules.update_rule(
            conn, tid, _id(request), doc, who.username, user_id=who.user_id
        )
    return _json(made)


async def _delete_rule(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with get_state(request).pool.connection() as conn:
        done = await rules.delete_rule(conn, tid, _id(request), who.username, user_id=who.user_id)
    if not done:
        raise HTTPException(404, "no such rule")
    return _json({"deleted": True})


async def rules_endpoint(request: Request) -> Response:
    if request.method == "POST":
        return await _endpoint(_create_rule, True)(request)
    return await _endpoint(_list_rules, False)(request)


async def rule_endpoint(request: Request) -> Response:
    handlers = {"PUT": _update_rule, "DELETE": _delete_rule}
    handler = handlers.get(request.method)
    if handler is None:
        return await _endpoint(_get_rule, False)(request)
    return await _endpoint(handler, True)(request)


# --- alerts ----------------------------------------------------------------------------------


async def _list_alerts(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    state = request.query_params.get("state") or None
    try:
        limit = int(request.query_params.get("limit", "200"))
    except ValueError:
        raise HTTPException(422, "limit: must be a whole number") from None
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await alerts.list_alerts(conn, tid, state, limit)
    return _json({"tenant_id": tid, "alerts": found})


async def _get_alert(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await alerts.get_alert(conn, tid, _id(request))
    if found is None:
        raise HTTPException(404, "no such alert")
    return _json(found)


async def _alert_action(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    verb = request.path_params["verb"]
    alert_id = _id(request)
    async with get_state(request).pool.connection() as conn:
        if verb == "acknowledge":
            out = await alerts.acknowledge(conn, tid, alert_id, who.username, user_id=who.user_id)
        elif verb == "resolve":
            out = await alerts.resolve(conn, tid, alert_id, who.username, user_id=who.user_id)
        elif verb == "snooze":
            seconds = doc.get("seconds")
            if seconds is None:
                cur = await conn.execute(
                    "SELECT r.snooze_s FROM alert a JOIN rule r ON r.id = a.rule_id"
                    " WHERE a.tenant_id = %s AND a.id = %s",
                    (tid, alert_id),
                )
                row = await cur.fetchone()
                seconds = 3600 if row is None else int(row[0])
            out = await alerts.snooze(
                conn, tid, alert_id, seconds, who.username, user_id=who.user_id
            )
        else:
            raise HTTPException(404, f"no alert action {verb!r} (acknowledge, snooze, resolve)")
    return _json(out)


# --- destination lists -----------------------------------------------------------------------


def _list_name(request: Request) -> str:
    name = str(request.path_params["list"])
    if name not in rules.LISTS:
        raise HTTPException(404, f"no list {name!r} ({', '.join(rules.LISTS)})")
    return name


async def _get_list(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    name = _list_name(request)
    async with auth.tenant_connection(get_state(request).pool, tid) as conn:
        found = await rules.get_dest_list(conn, tid, name)
    return _json({"tenant_id": tid, **found})


async def _put_list(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    name = _list_name(request)
    if set(doc) - {"entries"}:
        raise rules.RuleError(f"{sorted(set(doc) - {'entries'})[0]}: unknown field (entries)")
    async with get_state(request).pool.connection() as conn:
        found = await rules.set_dest_list(
            conn, tid, name, doc.get("entries"), who.username, user_id=who.user_id
        )
    return _json({"tenant_id": tid, **found})


async def _reset_list(request: Request, who: auth.Principal, tid: int, doc: Any) -> Response:
    name = _list_name(request)
    async with get_state(request).pool.connection() as conn:
        found = await rules.reset_dest_list(conn, tid, name, who.username)
    return _json({"tenant_id": tid, **found})


async def list_endpoint(request: Request) -> Response:
    handlers = {"PUT": _put_list, "DELETE": _reset_list}
    handler = handlers.get(request.method)
    if handler is None:
        return await _endpoint(_get_list, False)(request)
    return await _endpoint(handler, True)(request)


def routes() -> list[BaseRoute]:
    """The rules, alerts and lists routes, to mount in the collector app (before the console)."""
    return [
        Route("/api/v1/rules", rules_endpoint, methods=["GET", "POST"]),
        Route("/api/v1/rules/{id}", rule_endpoint, methods=["GET", "PUT", "DELETE"]),
        Route("/api/v1/alerts", _endpoint(_list_alerts, False), methods=["GET"]),
        Route("/api/v1/alerts/{id}", _endpoint(_get_alert, False), methods=["GET"]),
        Route("/api/v1/alerts/{id}/{verb}", _endpoint(_alert_action, True), methods=["POST"]),
        Route("/api/v1/dest-lists/{list}", list_endpoint, methods=["GET", "PUT", "DELETE"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """These routes in the OpenAPI document (`openapi.py` adds them)."""
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
    obj = {"type": "object"}

    def op(
        summary: str,
        operation: str,
        *,
        body: dict[str, Any] | None = None,
        ok: str = "200",
        params: list[dict[str, Any]] | None = None,
        codes: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        tenant = {
            "name": "tenant",
            "in": "query",
            "required": False,
            "schema": {"type": "integer"},
            "description": "superadmins: the tenant id",
        }
        out: dict[str, Any] = {
            "summary": summary,
            "operationId": operation,
            "tags": ["rules"],
            "parameters": [tenant, *(params or [])],
            "responses": {
                ok: {"description": "OK", "content": {"application/json": {"schema": obj}}},
                **apidoc.errors(**{c: c for c in ("401", "403", "404", "503", *codes)}),
            },
            "security": security,
        }
        if body is not None:
            out["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        return out

    def path_id(what: str) -> dict[str, Any]:
        return {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "integer"},
            "description": f"the {what}'s id",
        }

    rule_body = {
        "type": "object",
        "description": "a rule (docs/rules.md): name, kind, scope, params, window_s, severity,"
        " action, block_ttl_s, snooze_s, enabled",
    }
    state = {
        "name": "state",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": [*alerts.STATES, "active"]},
        "description": "only alerts in this state",
    }
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer"},
        "description": "at most this many (200)",
    }
    verb = {
        "name": "verb",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["acknowledge", "snooze", "resolve"]},
        "description": "the transition",
    }
    list_name = {
        "name": "list",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(rules.LISTS)},
        "description": "which list",
    }
    return {
        "/api/v1/rules": {
            "get": op("Rules of the tenant", "list_rules"),
            "post": op(
                "Create a rule", "create_rule", body=rule_body, ok="201", codes=("400", "415")
            ),
        },
        "/api/v1/rules/{id}": {
            "get": op("One rule", "get_rule", params=[path_id("rule")]),
            "put": op(
                "Change a rule",
                "update_rule",
                body=rule_body,
                params=[path_id("rule")],
                codes=("400", "415"),
            ),
            "delete": op("Delete a rule", "delete_rule", params=[path_id("rule")]),
        },
        "/api/v1/alerts": {"get": op("Alerts of the tenant", "list_alerts", params=[state, limit])},
        "/api/v1/alerts/{id}": {"get": op("One alert", "get_alert", params=[path_id("alert")])},
        "/api/v1/alerts/{id}/{verb}": {
            "post": op(
                'Acknowledge, snooze ({"seconds": N}) or resolve an alert',
                "alert_transition",
                body={"type": "object", "properties": {"seconds": {"type": "integer"}}},
                params=[path_id("alert"), verb],
                codes=("400", "409", "415"),
            )
        },
        "/api/v1/dest-lists/{list}": {
            "get": op("A destination prefix list", "get_dest_list", params=[list_name]),
            "put": op(
                "Replace a destination prefix list",
                "set_dest_list",
                body={"type": "object", "properties": {"entries": {"type": "array"}}},
                params=[list_name],
                codes=("400", "415"),
            ),
            "delete": op(
                "Reset a list (risk: the shipped defaults)", "reset_dest_list", params=[list_name]
            ),
        },
    }
