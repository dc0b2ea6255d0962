"""JSON answers of the HTTP API: every error is `{"error": "<one line>"}`."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    first_line = message.strip().splitlines()[0] if message.strip() else "error"
    return JSONResponse({"error": first_line[:500], **extra}, status_code=status, headers=headers)


def unavailable(message: str, retry_after: int = 5) -> JSONResponse:
    return error(503, message, headers={"Retry-After": str(retry_after)})
