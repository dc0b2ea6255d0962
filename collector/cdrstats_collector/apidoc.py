"""Pieces the routes' OpenAPI fragments share (each module's `openapi_paths()`; openapi.py
assembles the document and defines the `Error` schema they point to)."""

from __future__ import annotations

from typing import Any

ERROR_RESPONSE: dict[str, Any] = {
    "description": "",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
"""An error answer: JSON `{"error": ..., "param"?: ...}`."""


def errors(**codes: str) -> dict[str, Any]:
    """`errors(_404="no such rule")` -> {"404": an error answer with that description}."""
    return {
        code.lstrip("_"): {**ERROR_RESPONSE, "description": text} for code, text in codes.items()
    }
