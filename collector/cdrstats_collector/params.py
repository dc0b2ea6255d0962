"""Query parameters of the read API: declared once, parsed strictly, described in OpenAPI.

A route lists its `Param`s; `parse` turns the query string into typed values or raises
`auth.ParamError` (422) naming the parameter. Unknown parameters and repeated ones are errors
too: a typo never silently widens a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from starlette.datastructures import QueryParams

from .auth import ParamError

Kind = Literal["integer", "string", "date", "instant", "enum", "cursor"]

MAX_TEXT = 200
MAX_CURSOR = 8192  # a cursor or CDR id holds a natural key (1,024 characters, UTF-8)


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    description: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    location: Literal["query", "path"] = "query"

    def schema(self) -> dict[str, Any]:
        """The JSON schema of this parameter (OpenAPI 3.1)."""
        out: dict[str, Any]
        if self.kind == "integer":
            out = {"type": "integer"}
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        elif self.kind == "date":
            out = {"type": "string", "format": "date"}
        elif self.kind == "instant":
            out = {
                "type": "string",
                "description": "YYYY-MM-DD (a local date of the tenant) or an ISO 8601 date-time"
                " with its UTC offset",
            }
        elif self.kind == "enum":
            out = {"type": "string", "enum": list(self.choices)}
        else:
            out = {"type": "string", "maxLength": MAX_TEXT if self.kind == "string" else MAX_CURSOR}
        if self.default is not None:
            out["default"] = self.default
        return out


TENANT = Param(
    "tenant",
    "integer",
    "Tenant id. Required for a superadmin; a tenant user may omit it or give its own"
    " (any other id answers 404).",
    minimum=1,
)


def _one(raw: Sequence[str], name: str) -> str:
    if len(raw) > 1:
        raise ParamError(name, "given more than once")
    return raw[0]


def parse_date(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ParamError(name, f"not a date (YYYY-MM-DD): {text[:40]!r}") from None


def parse_value(p: Param, text: str) -> Any:
    name = p.name
    if p.kind == "integer":
        try:
            value = int(text)
        except ValueError:
            raise ParamError(name, f"not an integer: {text[:40]!r}") from None
        if p.minimum is not None and value < p.minimum:
            raise ParamError(name, f"must be at least {p.minimum}, got {value}")
        if p.maximum is not None and value > p.maximum:
            raise ParamError(name, f"must be at most {p.maximum}, got {value}")
        return value
    if p.kind == "date":
        return parse_date(name, text)
    if p.kind == "instant":
        if len(text) == 10:
            return parse_date(name, text)
        if "T" in text:  # a '+' of the offset that was not %-encoded arrives as a space
            text = text.replace(" ", "+")
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ParamError(name, f"not a date or an ISO 8601 date-time: {text[:40]!r}") from None
        if moment.tzinfo is None:
            raise ParamError(name, f"a date-time needs its UTC offset: {text[:40]!r}")
        return moment
    if p.kind == "enum":
        if text not in p.choices:
            raise ParamError(name, f"must be one of {', '.join(p.choices)}; got {text[:40]!r}")
        return text
    limit = MAX_TEXT if p.kind == "string" else MAX_CURSOR
    if len(text) > limit:
        raise ParamError(name, f"longer than {limit} characters")
    if "\x00" in text:
        raise ParamError(name, "contains a NUL character")
    return text


def parse(
    params: Sequence[Param], query: QueryParams, path: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Typed values of `params` (defaults filled in); ParamError on anything wrong."""
    known = {p.name for p in params} | {TENANT.name}
    for name in query:
        if name not in known:
            raise ParamError(name, "unknown parameter")
    out: dict[str, Any] = {}
    for p in params:
        raw = [str((path or {})[p.name])] if p.location == "path" else query.getlist(p.name)
        if not raw or raw == [""]:
            if p.required:
                raise ParamError(p.name, "required")
            out[p.name] = p.default
            continue
        out[p.name] = parse_value(p, _one(raw, p.name))
    return out


# --- time: the tenant's local calendar ---------------------------------------------------------


def local_midnight(tz: ZoneInfo, day: date) -> datetime:
    """The instant local `day` starts in `tz` (DST-correct; a skipped midnight moves forward)."""
    return datetime.combine(day, time(0), tz)


def instant(tz: ZoneInfo, value: date | datetime, *, end: bool) -> datetime:
    """A date is a whole local day: its start, or (end=True) the start of the next day."""
    if isinstance(value, datetime):
        return value
    return local_midnight(tz, value + timedelta(days=1) if end else value)


def period(
    args: Mapping[str, Any], today: date, *, max_days: int, default_days: int = 1
) -> tuple[date, date]:
    """`from`/`to` local dates (inclusive) checked: from <= to, at most `max_days` days."""
    to: date = args.get("to") or today
    start: date = args.get("from") or (to - timedelta(days=default_days - 1))
    if start > to:
        raise ParamError("from", f"{start} is after to ({to})")
    days = (to - start).days + 1
    if days > max_days:
        raise ParamError("to", f"the period has {days} days; at most {max_days} here")
    return start, to
