"""The OpenAPI 3.1 document of the read API, generated from `api.ENDPOINTS`.

Served without authentication at GET /api/v1/openapi.json; a test checks that every route
of the read API is in it with all its parameters.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import api, commands, import_api, notify, rules_api

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "one line saying what was wrong"},
        "param": {"type": "string", "description": "the query parameter at fault (422)"},
    },
}

_RESPONSES = {
    "401": "No or invalid credentials (`Authorization: Bearer <API token>` or a console session)",
    "404": "Not found, or a tenant the caller may not see",
    "422": "A parameter is wrong: `param` names it",
    "503": "PostgreSQL is unavailable",
}


def _operation(ep: api.Endpoint) -> dict[str, Any]:
    params = []
    for p in api.all_params(ep):
        params.append(
            {
                "name": p.name,
                "in": p.location,
                "required": p.required or p.location == "path",
                "description": p.description,
                "schema": p.schema(),
            }
        )
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {ep.media_type: {"schema": ep.result}}}
    }
    for code, text in _RESPONSES.items():
        responses[code] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return {
        "operationId": ep.operation,
        "summary": ep.summary,
        "tags": [ep.tag],
        "parameters": params,
        "responses": responses,
        "security": [{"bearer": []}, {"session": []}],
    }


@cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ep in api.ENDPOINTS:
        paths[ep.path] = {"get": _operation(ep)}
    paths.update(commands.openapi_paths())  # block / unblock (docs/actions.md)
    paths.update(notify.openapi_paths())  # notification channels (docs/notifications.md)
    paths.update(rules_api.openapi_paths())  # rules, alerts, lists (docs/rules.md)
    paths.update(import_api.openapi_paths())  # CSV imports (docs/csv-import.md)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CDR-Stats read API",
            "version": "1",
            "description": (
                "Reports, CDR search and exports of one tenant. Times are in the tenant's"
                " timezone; periods are local dates. See docs/http-api.md and docs/reports.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from `cdrstats api-token create --user NAME`",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "session"},
            },
        },
    }


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(document())
