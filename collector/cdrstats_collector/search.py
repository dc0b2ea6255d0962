"""CDR search and detail: filters to SQL, keyset pagination, one CDR with its raw fields.

Search is newest first by default, ordered by (start_time, key, switch_id) descending, and
pages with an opaque cursor holding the last row's sort key: page N costs the same as page 1
(no OFFSET). It reads `cdr` in a tenant-scoped connection (row-level security) and names
`tenant_id` explicitly as well, so that the index `cdr_tenant_start_idx (tenant_id,
start_time, key, switch_id)` serves the order (either direction).

`sort` (one of `SORTS`) and `order` (`desc`, `asc`) choose another order: the column first,
then (start_time, key, switch_id) in the same direction as a tiebreak, so that the order is
total and the keyset cursor (which then also holds the column's value, the sort and the
order) pages without gaps or repeats. Text is compared byte by byte (COLLATE "C"), a missing
Q.850 cause or country sorts as -1 / "". Sorting by another column than start_time sorts
every CDR the filters select: give it a date range.

Number filters (`caller`, `callee`) take a match mode:
  exact    `callee = v`                      index cdr_tenant_callee_idx / _caller_idx
  prefix   `callee ~>=~ v AND callee ~<~ v'` same indexes (a byte range: no LIKE, which is
                                            not leakproof and so not usable as an index
                                            condition under row-level security)
  contains / suffix   LIKE '%v%' / '%v'     evaluated on the rows of the time range, newest
                                            first, until the page is full
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from .auth import ParamError
from .params import Param, instant

MATCHES = ("exact", "prefix", "contains", "suffix")
DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
DISPOSITIONS = ("ANSWERED", "NO_ANSWER", "BUSY", "FAILED", "CANCELLED")

FILTERS: tuple[Param, ...] = (
    Param("from", "instant", "Calls that started at or after this (a local date: its start)."),
    Param("to", "instant", "Calls that started before this (a local date: inclusive)."),
    Param("caller", "string", "Caller number, compared as written by the switch."),
    Param("caller_match", "enum", "How `caller` matches.", default="exact", choices=MATCHES),
    Param("callee", "string", "Called number, compared as written by the switch."),
    Param("callee_match", "enum", "How `callee` matches.", default="exact", choices=MATCHES),
    Param("accountcode", "string", "Account code (exact)."),
    Param("switch", "integer", "Switch id.", minimum=1),
    Param("direction", "enum", "Call direction.", choices=DIRECTIONS),
    Param("disposition", "enum", "Disposition.", choices=DISPOSITIONS),
    Param("cause", "integer", "Q.850 hangup cause.", minimum=0, maximum=999),
    Param("country", "string", "Destination country, ISO 3166 alpha-2 (e.g. FR)."),
    Param("min_duration", "integer", "Duration at least this many seconds.", minimum=0),
    Param("max_duration", "integer", "Duration at most this many seconds.", minimum=0),
)

COLUMNS = (
    "switch_id",
    "key",
    "start_time",
    "answer_time",
    "end_time",
    "duration",
    "billsec",
    "ring_time",
    "disposition",
    "direction",
    "caller",
    "caller_name",
    "callee",
    "caller_e164",
    "callee_e164",
    "dest_country",
    "dest_kind",
    "dest_prefix",
    "accountcode",
    "hangup_cause",
    "sip_code",
    "trunk",
)
DETAIL_COLUMNS = (
    *COLUMNS,
    "src_ip",
    "read_codec",
    "write_codec",
    "user_agent",
    "call_group",
    "agent_id",
    "received_at",
    "extra",
)
_TIMES = ("start_time", "answer_time", "end_time", "received_at")

SORTS: dict[str, str] = {
    "start_time": "c.start_time",
    "duration": "c.duration",
    "billsec": "c.billsec",
    "caller": 'c.caller COLLATE "C"',
    "callee": 'c.callee COLLATE "C"',
    "direction": "c.direction",
    "disposition": "c.disposition",
    "hangup_cause": "coalesce(c.hangup_cause, -1)",
    "dest_country": "coalesce(c.dest_country, '') COLLATE \"C\"",
    "accountcode": 'c.accountcode COLLATE "C"',
}
"""Sort keys of the search and the SQL expression each sorts by."""
_SORT_INT = frozenset({"duration", "billsec", "hangup_cause"})
ORDERS = ("desc", "asc")
SORT_PARAMS: tuple[Param, ...] = (
    Param(
        "sort",
        "enum",
        "Sort by this column (then by start time, newest first unless `order=asc`).",
        default="start_time",
        choices=tuple(SORTS),
    ),
    Param("order", "enum", "Sort direction.", default="desc", choices=ORDERS),
)


@dataclass(frozen=True)
class Where:
    sql: str
    params: dict[str, Any]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _number(column: str, value: str, mode: str, params: dict[str, Any]) -> str:
    params[column] = value
    if mode == "exact":
        return f" AND c.{column} = %({column})s"
    if mode == "prefix":
        last = value[-1]
        if ord(last) < 0x10FFFF:
            params[column + "_hi"] = value[:-1] + chr(ord(last) + 1)
            return f" AND c.{column} ~>=~ %({column})s AND c.{column} ~<~ %({column}_hi)s"
        return f" AND c.{column} ~>=~ %({column})s"
    params[column] = ("%" if mode in ("contains", "suffix") else "") + _escape_like(value)
    if mode == "contains":
        params[column] += "%"
    return f" AND c.{column} LIKE %({column})s"


def where(tenant: int, tz: ZoneInfo, args: Mapping[str, Any]) -> Where:
    """The WHERE clause (after `FROM cdr c`) for the search filters in `args`."""
    p: dict[str, Any] = {"tenant": tenant}
    sql = "c.tenant_id = %(tenant)s"
    if args.get("from") is not None:
        p["lo"] = instant(tz, args["from"], end=False)
        sql += " AND c.start_time >= %(lo)s"
    if args.get("to") is not None:
        p["hi"] = instant(tz, args["to"], end=True)
        sql += " AND c.start_time < %(hi)s"
    if "lo" in p and "hi" in p and p["lo"] >= p["hi"]:
        raise ParamError("to", "must be after from")
    for column in ("caller", "callee"):
        if args.get(column):
            sql += _number(column, args[column], args.get(column + "_match") or "exact", p)
    for column, name in (
        ("accountcode", "accountcode"),
        ("switch_id", "switch"),
        ("direction", "direction"),
        ("disposition", "disposition"),
        ("hangup_cause", "cause"),
    ):
        if args.get(name) is not None:
            p[name] = args[name]
            sql += f" AND c.{column} = %({name})s"
    if args.get("country") is not None:
        country = str(args["country"]).upper()
        if len(country) != 2 or not country.isalpha():
            raise ParamError("country", f"not an ISO 3166 alpha-2 code: {args['country']!r}")
        p["country"] = country
        sql += " AND c.dest_country = %(country)s"
    lo, hi = args.get("min_duration"), args.get("max_duration")
    if lo is not None and hi is not None and lo > hi:
        raise ParamError("max_duration", f"{hi} is less than min_duration ({lo})")
    if lo is not None:
        p["min_duration"] = lo
        sql += " AND c.duration >= %(min_duration)s"
    if hi is not None:
        p["max_duration"] = hi
        sql += " AND c.duration <= %(max_duration)s"
    return Where(sql, p)


# --- opaque ids and cursors ------------------------------------------------------------------


def _encode(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(name: str, text: str) -> tuple[int, datetime, str]:
    switch, moment, key, _ = _decode_cursor(name, text)
    return switch, moment, key


def _decode_cursor(name: str, text: str) -> tuple[int, datetime, str, list[Any] | None]:
    """(switch, start, key, extra): extra is None for the default order (newest first),
    [sort, order] for start_time ascending, [sort, order, value] for a column sort."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list) or len(parts) not in (3, 5, 6):
            raise ValueError
        switch, us, key = parts[:3]
        if not (isinstance(switch, int) and isinstance(us, int) and isinstance(key, str)):
            raise ValueError
        moment = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=us)
        extra = parts[3:] or None
        if extra is not None:
            sort, order = extra[:2]
            if (
                sort not in SORTS
                or order not in ORDERS
                or (len(extra) == 3) == (sort == "start_time")
            ):
                raise ValueError
            kind = int if sort in _SORT_INT else str
            if len(extra) == 3 and type(extra[2]) is not kind:
                raise ValueError
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError):
        raise ParamError(name, "not a value this API gave out") from None
    return switch, moment, key, extra


def _us(moment: datetime) -> int:
    delta = moment - datetime.fromtimestamp(0, UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def cdr_id(switch: int, start: datetime, key: str) -> str:
    """The opaque id of one CDR (switch, start, natural key) used in URLs."""
    return _encode([switch, _us(start), key])


def parse_cdr_id(text: str) -> tuple[int, datetime, str]:
    return _decode("id", text)


# --- queries ---------------------------------------------------------------------------------


def _row_json(row: dict[str, Any], tz: ZoneInfo, switches: Mapping[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": cdr_id(row["switch_id"], row["start_time"], row["key"])}
    for name, value in row.items():
        if name in _TIMES:
            out[name] = None if value is None else value.astimezone(tz).isoformat()
        elif name in ("src_ip", "agent_id"):
            out[name] = None if value is None else str(value)
        else:
            out[name] = value
    out["switch"] = switches.get(row["switch_id"])
    return out


async def switch_names(conn: psycopg.AsyncConnection[Any], tenant: int) -> dict[int, str]:
    """The tenant's switches, and the switches another tenant's account codes are mapped
    from (`cdrstats_visible_switches()`, migration 0010: needs `auth.tenant_connection`)."""
    cur = await conn.execute(
        "SELECT id, name FROM switch WHERE tenant_id = %s"
        " UNION SELECT id, name FROM cdrstats_visible_switches()",
        (tenant,),
    )
    return {int(i): str(n) for i, n in await cur.fetchall()}


async def search(
    conn: psycopg.AsyncConnection[Any],
    tenant: int,
    tz: ZoneInfo,
    args: Mapping[str, Any],
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    w = where(tenant, tz, args)
    sql = w.sql
    p = dict(w.params)
    sort = args.get("sort") or "start_time"
    order = args.get("order") or "desc"
    if sort not in SORTS:
        raise ParamError("sort", f"one of {', '.join(SORTS)}")
    if order not in ORDERS:
        raise ParamError("order", "desc or asc")
    by_column = sort != "start_time"
    direction, op = ("DESC", "<") if order == "desc" else ("ASC", ">")
    keys = ["c.start_time", "c.key", "c.switch_id"]
    marks = ["%(c_start)s", "%(c_key)s", "%(c_switch)s"]
    if by_column:
        keys.insert(0, SORTS[sort])
        marks.insert(0, "%(c_value)s")
    if cursor:
        switch, moment, key, extra = _decode_cursor("cursor", cursor)
        if (extra[:2] if extra else ["start_time", "desc"]) != [sort, order]:
            raise ParamError("cursor", "belongs to another sort or order: start again without it")
        p.update(c_start=moment, c_key=key, c_switch=switch)
        if by_column:
            p["c_value"] = extra[2] if extra else None
        sql += f" AND ({', '.join(keys)}) {op} ({', '.join(marks)})"
    p["limit"] = limit + 1
    select = ", ".join("c." + c for c in COLUMNS)
    if by_column:
        select += f", {SORTS[sort]} AS sort_value"
    query = (
        f"SELECT {select} FROM cdr c WHERE {sql}"
        f" ORDER BY {', '.join(k + ' ' + direction for k in keys)} LIMIT %(limit)s"
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        # never prepared: the best plan depends on the values (a rare number, a long range)
        await cur.execute(query, p, prepare=False)
        rows = await cur.fetchall()
    names = await switch_names(conn, tenant)
    more = len(rows) > limit
    rows = rows[:limit]
    values = [r.pop("sort_value", None) for r in rows]
    nxt = None
    if more and rows:
        last = rows[-1]
        parts = [last["switch_id"], _us(last["start_time"]), last["key"]]
        if by_column:
            parts += [sort, order, values[-1]]
        elif order != "desc":
            parts += [sort, order]
        nxt = _encode(parts)
    return {
        "timezone": tz.key,
        "sort": sort,
        "order": order,
        "count": len(rows),
        "next_cursor": nxt,
        "items": [_row_json(r, tz, names) for r in rows],
    }


async def detail(
    conn: psycopg.AsyncConnection[Any], tenant: int, tz: ZoneInfo, ident: str
) -> dict[str, Any] | None:
    switch, start, key = parse_cdr_id(ident)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {', '.join(DETAIL_COLUMNS)} FROM cdr WHERE tenant_id = %s"
            " AND switch_id = %s AND start_time = %s AND key = %s",
            (tenant, switch, start, key),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return _row_json(row, tz, await switch_names(conn, tenant))
