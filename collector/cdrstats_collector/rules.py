"""Alert rules of a tenant: validation (`parse_rule`), storage, and the destination lists.

    doc = parse_rule({"name": "low ASR", "kind": "asr", "window_s": 3600,
                      "params": {"op": "below", "threshold": 40, "min_calls": 20}})
    rule = await create_rule(conn, tenant_id, doc, actor="alice")

A rule says what to measure (`kind`), on which calls (`scope`: switch, trunk, destination
prefix or country, direction; empty = the whole tenant), over which sliding window
(`window_s`), with which parameters (`params`), and what to do when it fires (`action`:
`notify`, or `block_source_ip` for rules that group by source IP). The evaluator
(evaluator.py) runs the rules; alerts.py keeps one alert per episode. See docs/rules.md.

Every change is written to the audit log in the same transaction. Errors are `RuleError`
whose text starts with the field at fault ("params.threshold: ..."), shown as is by the API
(400).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.types.json import Jsonb

from . import alerts, audit, riskprefix

METRIC_KINDS: tuple[str, ...] = ("asr", "ner", "acd", "aloc", "calls", "concurrent")
"""Measured values compared with a threshold or with the same window of previous weeks."""
EVENT_KINDS: tuple[str, ...] = (
    "risk_destination",
    "blacklist",
    "new_country",
    "short_calls",
    "scanner",
)
"""Counts of suspicious calls in the window."""
KINDS: tuple[str, ...] = METRIC_KINDS + EVENT_KINDS
OPS: tuple[str, ...] = ("above", "below", "rises_by_pct", "drops_by_pct")
PER: tuple[str, ...] = ("tenant", "switch", "trunk", "source_ip", "dest_country")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
ACTIONS: tuple[str, ...] = ("notify", "block_source_ip")
DIRECTIONS: tuple[str, ...] = ("inbound", "outbound", "internal", "unknown")
LISTS: tuple[str, ...] = ("risk", "blacklist", "whitelist")
RATIO_KINDS = ("asr", "ner", "acd", "aloc")
MIN_WINDOW_S = 60
MAX_WINDOW_S = 86400
MAX_TTL_S = 30 * 86400
MAX_LIST_ENTRIES = 5000

_EDITABLE = (
    "name",
    "enabled",
    "kind",
    "scope",
    "params",
    "window_s",
    "severity",
    "action",
    "block_ttl_s",
    "snooze_s",
)
_IGNORED = {"id", "tenant_id", "created_at", "created_by", "updated_at", "updated_by"}
_PREFIX = re.compile(r"^[1-9][0-9]{0,14}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

# Parameters per kind: name -> (type, default, minimum, maximum); a default of None = required.
_Spec = tuple[type, Any, float, float]
_METRIC_PARAMS: dict[str, _Spec] = {
    "threshold": (float, None, 0, 1e9),
    "clear": (float, None, 0, 1e9),
    "min_calls": (int, 0, 0, 1_000_000),
    "weeks": (int, 4, 1, 8),
}
_EVENT_PARAMS: dict[str, dict[str, _Spec]] = {
    "risk_destination": {"count": (int, 1, 1, 1_000_000)},
    "blacklist": {"count": (int, 1, 1, 1_000_000)},
    "new_country": {"lookback_days": (int, 365, 1, 3650)},
    "short_calls": {"count": (int, 10, 1, 1_000_000), "max_billsec": (int, 6, 1, 3600)},
    "scanner": {"count": (int, 20, 1, 1_000_000), "registrations": (bool, True, 0, 1)},
}
_DEFAULT_PER = {
    "risk_destination": "source_ip",
    "blacklist": "source_ip",
    "new_country": "dest_country",
    "short_calls": "source_ip",
    "scanner": "source_ip",
}
_DEFAULT_MIN_CALLS = {"asr": 20, "ner": 20, "acd": 20, "aloc": 20}


class RuleError(ValueError):
    """A rule document (or list) is wrong; the text starts with the field at fault."""


class RuleNotFound(RuleError):
    """No such rule in this tenant (API 404)."""


def _number(field: str, value: Any, kind: type, low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{field}: must be a number, not {value!r:.40}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise RuleError(f"{field}: must be a whole number")
        value = int(value)
    else:
        value = float(value)
    if not low <= value <= high:
        raise RuleError(f"{field}: must be from {low:g} to {high:g}")
    return value


def _text(field: str, value: Any, max_len: int = 100) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RuleError(f"{field}: must be a non-empty text")
    if len(value) > max_len:
        raise RuleError(f"{field}: longer than {max_len} characters")
    return value.strip()


def normalize_prefix(field: str, value: Any) -> str:
    """E.164 digits without '+' ('+882 16' -> '88216'); RuleError otherwise."""
    if not isinstance(value, str):
        raise RuleError(f"{field}: must be a text of digits (E.164 prefix)")
    digits = re.sub(r"[\s.\-]", "", value).removeprefix("+")
    if not _PREFIX.match(digits):
        raise RuleError(
            f"{field}: {value!r:.30} is not an E.164 prefix (digits, country code first)"
        )
    return digits


def _scope(kind: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RuleError("scope: must be an object (switch, trunk, dest_prefix, dest_country)")
    out: dict[str, Any] = {}
    for key, item in value.items():
        field = f"scope.{key}"
        if item is None or item == "":
            continue
        if key in ("switch", "trunk"):
            out[key] = _text(field, item)
        elif key == "dest_prefix":
            out[key] = normalize_prefix(field, item)
        elif key == "dest_country":
            if not isinstance(item, str) or not _COUNTRY.match(item.upper()):
                raise RuleError(f"{field}: must be an ISO 3166 alpha-2 code such as FR")
            out[key] = item.upper()
        elif key == "direction":
            if item not in DIRECTIONS:
                raise RuleError(f"{field}: must be one of {', '.join(DIRECTIONS)}")
            out[key] = item
        else:
            raise RuleError(
                f"{field}: unknown (switch, trunk, dest_prefix, dest_country, direction)"
            )
    if kind == "concurrent" and set(out) - {"switch"}:
        raise RuleError("scope: concurrent calls are counted per switch only (scope.switch)")
    return out


def _params(kind: str, value: Any) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise RuleError("params: must be an object")
    specs = _METRIC_PARAMS if kind in METRIC_KINDS else _EVENT_PARAMS[kind]
    allowed = set(specs) | {"per"} | ({"op"} if kind in METRIC_KINDS else set())
    for key in value:
        if key not in allowed:
            raise RuleError(f"params.{key}: unknown for kind {kind} ({', '.join(sorted(allowed))})")
    out: dict[str, Any] = {}
    if kind in METRIC_KINDS:
        op = value.get("op")
        if op not in OPS:
            raise RuleError(f"params.op: must be one of {', '.join(OPS)}")
        out["op"] = op
    for key, (typ, default, low, high) in specs.items():
        if key == "min_calls":
            default = _DEFAULT_MIN_CALLS.get(kind, default)
        item = value.get(key)
        if item is None:
            if default is None and key != "clear":
                raise RuleError(f"params.{key}: required for kind {kind}")
            if default is not None:
                out[key] = default
            continue
        if typ is bool:
            if not isinstance(item, bool):
                raise RuleError(f"params.{key}: must be true or false")
            out[key] = item
            continue
        out[key] = _number(f"params.{key}", item, typ, low, high)
    per_default = _DEFAULT_PER.get(kind, "tenant")
    per = value.get("per", per_default)
    if kind == "new_country" and per != "dest_country":
        raise RuleError("params.per: new_country rules are per dest_country")
    if kind == "scanner" and per != "source_ip":
        raise RuleError("params.per: scanner rules are per source_ip")
    if kind == "concurrent" and per not in ("tenant", "switch"):
        raise RuleError("params.per: concurrent calls are per tenant or per switch")
    if per not in PER:
        raise RuleError(f"params.per: must be one of {', '.join(PER)}")
    out["per"] = per
    if kind in METRIC_KINDS:
        op = out["op"]
        threshold = out["threshold"]
        pct = op in ("rises_by_pct", "drops_by_pct")
        if kind in ("asr", "ner") and not pct and threshold > 100:
            raise RuleError("params.threshold: ASR and NER are percentages (0 to 100)")
        if pct and threshold <= 0:
            raise RuleError("params.threshold: a change in percent must be above 0")
        if op == "drops_by_pct" and threshold > 100:
            raise RuleError("params.threshold: a drop cannot be more than 100 %")
        clear = out.get("clear")
        if clear is not None:
            # The clear level sits on the normal side of the threshold (hysteresis band).
            if op == "below" and clear < threshold:
                raise RuleError("params.clear: for 'below' it must be at or above the threshold")
            if op != "below" and clear > threshold:
                raise RuleError(f"params.clear: for '{op}' it must be at or below the threshold")
    return out


def parse_rule(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A validated, normalized rule document (the editable fields only)."""
    if not isinstance(doc, Mapping):
        raise RuleError("rule: must be a JSON object")
    for key in doc:
        if key not in _EDITABLE and key not in _IGNORED:
            raise RuleError(f"{key}: unknown field ({', '.join(_EDITABLE)})")
    name = _text("name", doc.get("name"))
    kind = doc.get("kind")
    if kind not in KINDS:
        raise RuleError(f"kind: must be one of {', '.join(KINDS)}")
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled: must be true or false")
    if doc.get("window_s") is None:
        raise RuleError("window_s: required (seconds: 300, 3600, 86400...)")
    window_s = _number("window_s", doc["window_s"], int, MIN_WINDOW_S, MAX_WINDOW_S)
    severity = doc.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RuleError(f"severity: must be one of {', '.join(SEVERITIES)}")
    action = doc.get("action", "notify")
    if action not in ACTIONS:
        raise RuleError(f"action: must be one of {', '.join(ACTIONS)}")
    scope = _scope(kind, doc.get("scope"))
    params = _params(kind, doc.get("params"))
    if action == "block_source_ip" and params["per"] != "source_ip":
        raise RuleError("action: block_source_ip needs a rule per source_ip (params.per)")
    block_ttl_s = _number("block_ttl_s", doc.get("block_ttl_s", 3600), int, 1, MAX_TTL_S)
    snooze_s = _number("snooze_s", doc.get("snooze_s", 3600), int, 1, MAX_TTL_S)
    return {
        "name": name,
        "enabled": enabled,
        "kind": kind,
        "scope": scope,
        "params": params,
        "window_s": window_s,
        "severity": severity,
        "action": action,
        "block_ttl_s": block_ttl_s,
        "snooze_s": snooze_s,
    }


# --- storage ---------------------------------------------------------------------------------

_COLUMNS = (
    "id, tenant_id, name, enabled, kind, scope, params, window_s, severity, action,"
    " block_ttl_s, snooze_s, created_at, created_by, updated_at, updated_by"
)


def _row(row: Sequence[Any]) -> dict[str, Any]:
    names = [c.strip() for c in _COLUMNS.split(",")]
    out = dict(zip(names, row, strict=True))
    for key in ("created_at", "updated_at"):
        value = out[key]
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    out["id"] = int(out["id"])
    out["tenant_id"] = int(out["tenant_id"])
    return out


async def list_rules(conn: psycopg.AsyncConnection[Any], tenant_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM rule WHERE tenant_id = %s ORDER BY name", (tenant_id,)
    )
    return [_row(r) for r in await cur.fetchall()]


async def get_rule(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, rule_id: int
) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM rule WHERE tenant_id = %s AND id = %s", (tenant_id, rule_id)
    )
    row = await cur.fetchone()
    return None if row is None else _row(row)


def _values(rule: dict[str, Any]) -> list[Any]:
    return [
        rule["name"],
        rule["enabled"],
        rule["kind"],
        Jsonb(rule["scope"]),
        Jsonb(rule["params"]),
        rule["window_s"],
        rule["severity"],
        rule["action"],
        rule["block_ttl_s"],
        rule["snooze_s"],
    ]


async def create_rule(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    doc: Mapping[str, Any],
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """Validate and store a new rule (audited); RuleError for a bad document or a taken name."""
    rule = parse_rule(doc)
    try:
        async with conn.transaction():
            cur = await conn.execute(
                f"INSERT INTO rule (tenant_id, {', '.join(_EDITABLE)}, created_by, updated_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                [tenant_id, *_values(rule), actor, actor],
            )
            row = await cur.fetchone()
            assert row is not None
            out = _row(row)
            await audit.record(
                conn, tenant_id, user_id, actor, "rule.create", rule["name"], {"rule": rule}
            )
    except pgerrors.UniqueViolation:
        raise RuleError(f"name: a rule named {rule['name']!r} already exists") from None
    return out


async def update_rule(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    rule_id: int,
    doc: Mapping[str, Any],
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """Change a rule: the fields of `doc` replace the stored ones (absent fields are kept).

    Disabling a rule resolves its open alerts. RuleNotFound when there is no such rule.
    """
    if not isinstance(doc, Mapping):
        raise RuleError("rule: must be a JSON object")
    try:
        async with conn.transaction():
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM rule WHERE tenant_id = %s AND id = %s FOR UPDATE",
                (tenant_id, rule_id),
            )
            found = await cur.fetchone()
            if found is None:
                raise RuleNotFound(f"id: no rule {rule_id}")
            old = _row(found)
            merged = {k: old[k] for k in _EDITABLE}
            if "kind" in doc and doc["kind"] != old["kind"] and "params" not in doc:
                merged["params"] = {}  # another kind's parameters do not carry over
            merged.update(doc)
            rule = parse_rule(merged)
            cur = await conn.execute(
                "UPDATE rule SET (" + ", ".join(_EDITABLE) + ", updated_at, updated_by)"
                " = (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s)"
                f" WHERE tenant_id = %s AND id = %s RETURNING {_COLUMNS}",
                [*_values(rule), actor, tenant_id, rule_id],
            )
            row = await cur.fetchone()
            assert row is not None
            out = _row(row)
            changed = {k: rule[k] for k in _EDITABLE if rule[k] != old[k]}
            await audit.record(
                conn, tenant_id, user_id, actor, "rule.update", rule["name"], {"changed": changed}
            )
            if not rule["enabled"]:
                await alerts.resolve_rule_alerts(conn, tenant_id, rule_id, actor, "rule disabled")
    except pgerrors.UniqueViolation:
        raise RuleError(f"name: a rule named {doc.get('name')!r} already exists") from None
    return out


async def delete_rule(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    rule_id: int,
    actor: str,
    *,
    user_id: int | None = None,
) -> bool:
    """Delete a rule (its open alerts are resolved, kept in the history); False if none."""
    async with conn.transaction():
        await alerts.resolve_rule_alerts(conn, tenant_id, rule_id, actor, "rule deleted")
        cur = await conn.execute(
            "DELETE FROM rule WHERE tenant_id = %s AND id = %s RETURNING name",
            (tenant_id, rule_id),
        )
        row = await cur.fetchone()
        if row is None:
            return False
        await audit.record(
            conn, tenant_id, user_id, actor, "rule.delete", str(row[0]), {"id": rule_id}
        )
    return True


# --- destination lists -----------------------------------------------------------------------


def _check_list(name: str) -> None:
    if name not in LISTS:
        raise RuleError(f"list: must be one of {', '.join(LISTS)}")


def parse_entries(entries: Any) -> list[tuple[str, str]]:
    """[(prefix, note)] from a list of "+882" texts or {"prefix", "note"} objects."""
    if not isinstance(entries, list):
        raise RuleError("entries: must be a list of prefixes")
    if len(entries) > MAX_LIST_ENTRIES:
        raise RuleError(f"entries: more than {MAX_LIST_ENTRIES} prefixes")
    out: dict[str, str] = {}
    for i, entry in enumerate(entries):
        note: Any = ""
        if isinstance(entry, Mapping):
            prefix, note = entry.get("prefix"), entry.get("note", "")
        else:
            prefix = entry
        if not isinstance(note, str) or len(note) > 200:
            raise RuleError(f"entries[{i}].note: must be a text of at most 200 characters")
        out[normalize_prefix(f"entries[{i}].prefix", prefix)] = note
    return sorted(out.items())


async def get_dest_list(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, name: str
) -> dict[str, Any]:
    """`{"list", "default", "entries": [{"prefix", "note"}]}`: the tenant's list, or for a
    'risk' list never saved the shipped defaults (`default` true)."""
    _check_list(name)
    cur = await conn.execute(
        "SELECT saved_at, saved_by FROM dest_list_saved WHERE tenant_id = %s AND list = %s",
        (tenant_id, name),
    )
    saved = await cur.fetchone()
    if saved is None and name == "risk":
        entries = [{"prefix": p, "note": n} for p, n in sorted(riskprefix.DEFAULTS)]
        return {"list": name, "default": True, "entries": entries}
    cur = await conn.execute(
        "SELECT prefix, note FROM dest_list WHERE tenant_id = %s AND list = %s ORDER BY prefix",
        (tenant_id, name),
    )
    entries = [{"prefix": str(p), "note": str(n)} for p, n in await cur.fetchall()]
    return {
        "list": name,
        "default": False,
        "entries": entries,
        "saved_at": None if saved is None else saved[0].isoformat(),
        "saved_by": None if saved is None else saved[1],
    }


async def list_prefixes(conn: psycopg.AsyncConnection[Any], tenant_id: int, name: str) -> list[str]:
    """The prefixes of a list (the evaluator's view)."""
    return [e["prefix"] for e in (await get_dest_list(conn, tenant_id, name))["entries"]]


async def set_dest_list(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    name: str,
    entries: Any,
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """Replace a list (audited). A saved 'risk' list replaces the shipped defaults."""
    _check_list(name)
    clean = parse_entries(entries)
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM dest_list WHERE tenant_id = %s AND list = %s", (tenant_id, name)
        )
        if clean:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO dest_list (tenant_id, list, prefix, note) VALUES (%s, %s, %s, %s)",
                    [(tenant_id, name, p, n) for p, n in clean],
                )
        await conn.execute(
            "INSERT INTO dest_list_saved (tenant_id, list, saved_by) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant_id, list) DO UPDATE SET saved_at = now(),"
            " saved_by = EXCLUDED.saved_by",
            (tenant_id, name, actor),
        )
        await audit.record(
            conn,
            tenant_id,
            user_id,
            actor,
            "dest_list.save",
            name,
            {"prefixes": len(clean), "first": [p for p, _ in clean[:20]]},
        )
    return await get_dest_list(conn, tenant_id, name)


async def reset_dest_list(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, name: str, actor: str
) -> dict[str, Any]:
    """Forget the tenant's list ('risk' goes back to the shipped defaults; others empty)."""
    _check_list(name)
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM dest_list WHERE tenant_id = %s AND list = %s", (tenant_id, name)
        )
        await conn.execute(
            "DELETE FROM dest_list_saved WHERE tenant_id = %s AND list = %s", (tenant_id, name)
        )
        await audit.record(conn, tenant_id, None, actor, "dest_list.reset", name, {})
    return await get_dest_list(conn, tenant_id, name)
