"""JSON answers of the HTTP API (every error is `{"error": "<one line>"}`), and the JSON
object a request sends."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    first_line = message.strip().splitlines()[0] if message.strip() else "error"
    return JSONResponse({"error": first_line[:500], **extra}, status_code=status, headers=headers)


def unavailable(message: str, retry_after: int = 5) -> JSONResponse:
    return error(503, message, headers={"Retry-After": str(retry_after)})


async def json_object(
    request: Request, what: str, *, max_bytes: int = 16 * 1024, bad_status: int = 400
) -> dict[str, Any]:
    """The request's body as a JSON object; 415 (not application/json), 413 (larger than
    `max_bytes`), `bad_status` (not JSON, or not an object) otherwise. `what` names the
    thing sent ("the command") in the 415 message."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, f"send {what} as Content-Type: application/json")
    body = await request.body()
    if len(body) > max_bytes:
        raise HTTPException(413, f"body larger than {max_bytes // 1024} KiB")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise HTTPException(bad_status, f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HTTPException(bad_status, "body must be a JSON object")
    return doc
