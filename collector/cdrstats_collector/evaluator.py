"""The rule evaluator: runs every enabled rule over its sliding window and keeps the alerts.

    changes = await evaluate(conn, now)        # tests: explicit `now`, autocommit connection
    evaluator = Evaluator(database_url, url=settings.url); evaluator.start()   # the collector

One evaluation, for each enabled rule of every tenant:

1. observe: one SQL statement over `cdr` (index `tenant_id, start_time`) for the window
   [now - window_s, now) — or `agg_conc_minute` for concurrent calls — grouped by the
   rule's `params.per` key (tenant, switch, switch+trunk, switch+source IP, country); for
   `rises_by_pct`/`drops_by_pct` the same window of each of the previous `weeks` weeks too;
2. judge each key: the condition holds (open an episode), the value is still past the clear
   level (keep it), the value is back (resolve it), or nothing is known (fewer calls than
   `min_calls`: no change);
3. apply (alerts.py): open (and block the source IP when the rule says so, through the
   command queue), refresh, wake a snoozed alert whose snooze ended, resolve an episode that
   cleared or whose condition has been absent for a whole window.

In the collector, `Evaluator` runs it in the background: woken by `NOTIFY cdr_ingest` (one
per stored batch) and `NOTIFY cdrstats_auth_failure` (a live message carried failed
registrations, for `scanner` rules), debounced: at most one evaluation per
`min_interval_s`, and every `tick_s`; `pg_try_advisory_lock` makes sure one collector
process evaluates at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cdrstats_agent import logs
from cdrstats_agent.firewall import IPAddress
from psycopg import errors as pgerrors

from . import alerts, audit, authfail, commands, keys, rules
from .store import NOTIFY_CHANNEL

log = logs.get_logger("cdrstats.collector.evaluator")

EVALUATOR_LOCK = (1128551251, 8)
"""Advisory lock ('CDRS', 8) held by the one collector process that evaluates."""
WEEK = timedelta(days=7)
SCANNER_SIP_CODES = (401, 403, 404, 407, 484, 485)
"""Besides FAILED calls, these answers count as failed attempts for `scanner` rules."""

_LABEL = {
    "asr": ("ASR", " %"),
    "ner": ("NER", " %"),
    "acd": ("ACD", " s"),
    "aloc": ("ALOC", " s"),
    "calls": ("calls", ""),
    "concurrent": ("concurrent calls", ""),
}
_GROUP: dict[str, list[tuple[str, str]]] = {
    "tenant": [],
    "switch": [("switch", "s.name")],
    "trunk": [("switch", "s.name"), ("trunk", "coalesce(c.trunk, '')")],
    "source_ip": [("switch", "s.name"), ("ip", "host(c.src_ip)")],
    "dest_country": [("country", "c.dest_country")],
}
# The callee as E.164 digits without '+': callee_e164, else a callee written in
# international form ('+...' or '00...'); NULL otherwise (never guessed from a local number).
_NUMBER = (
    "(CASE WHEN c.callee_e164 IS NOT NULL THEN ltrim(c.callee_e164, '+')"
    " WHEN left(c.callee, 1) = '+' THEN substr(c.callee, 2)"
    " WHEN left(c.callee, 2) = '00' THEN substr(c.callee, 3) END)"
)
_ENDED = "coalesce(c.end_time, c.start_time + c.duration * interval '1 second')"
_SUMS = (
    "count(*), count(*) FILTER (WHERE c.disposition = 'ANSWERED'),"
    " count(*) FILTER (WHERE c.disposition IN ('ANSWERED', 'BUSY', 'NO_ANSWER', 'CANCELLED')"
    " OR c.hangup_cause BETWEEN 17 AND 21),"
    " coalesce(sum(c.billsec) FILTER (WHERE c.disposition = 'ANSWERED'), 0),"
    " coalesce(sum(c.duration), 0)"
)


@dataclass(slots=True)
class Observation:
    """What one rule sees for one key in the window."""

    key: str
    value: float | None  # None: not enough calls to judge
    holds: bool  # the condition: an episode opens
    still: bool  # past the clear level: an open episode goes on
    detail: dict[str, Any] = field(default_factory=dict)
    switch: str | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One alert transition made by an evaluation."""

    alert_id: int
    tenant_id: int
    rule_id: int
    rule: str
    episode_key: str
    change: str  # 'opened' | 'reopened' | 'resolved'
    action: dict[str, Any] | None = None


# --- observing -------------------------------------------------------------------------------


def _regex(prefixes: list[str]) -> str | None:
    """'^(882|883|...)' for validated digit prefixes; None for an empty list."""
    clean = [p for p in prefixes if p.isdigit()]
    return "^(" + "|".join(sorted(clean)) + ")" if clean else None


def _scope_sql(rule: dict[str, Any], args: dict[str, Any]) -> str:
    scope = rule["scope"]
    parts = []
    if "switch" in scope:
        parts.append("s.name = %(scope_switch)s")
        args["scope_switch"] = scope["switch"]
    if "trunk" in scope:
        parts.append("c.trunk = %(scope_trunk)s")
        args["scope_trunk"] = scope["trunk"]
    if "dest_prefix" in scope:
        parts.append(f"starts_with({_NUMBER}, %(scope_prefix)s)")
        args["scope_prefix"] = scope["dest_prefix"]
    if "dest_country" in scope:
        parts.append("c.dest_country = %(scope_country)s")
        args["scope_country"] = scope["dest_country"]
    if "direction" in scope:
        parts.append("c.direction = %(scope_direction)s")
        args["scope_direction"] = scope["direction"]
    return "".join(" AND " + p for p in parts)


def _episode_key(names: list[str], values: tuple[Any, ...]) -> str:
    if not names:
        return "tenant"
    return ",".join(f"{n}={v}" for n, v in zip(names, values, strict=True))


def _placed(names: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
    """The key's parts as detail fields (`source_ip` for the address)."""
    return {("source_ip" if n == "ip" else n): v for n, v in zip(names, values, strict=True)}


def _windows(now: datetime, window_s: int, weeks: int) -> list[tuple[datetime, datetime]]:
    span = timedelta(seconds=window_s)
    return [(now - k * WEEK - span, now - k * WEEK) for k in range(0, weeks + 1)]


async def _cdr_sums(
    conn: psycopg.AsyncConnection[Any],
    rule: dict[str, Any],
    now: datetime,
    weeks: int,
) -> dict[tuple[Any, ...], dict[int, tuple[int, int, int, int, int]]]:
    """key values -> week index (0: the current window) -> (calls, answered, ner_ok,
    billsec of answered calls, duration)."""
    group = _GROUP[rule["params"]["per"]]
    args: dict[str, Any] = {"t": rule["tenant_id"], "now": now}
    ranges = []
    for i, (start, end) in enumerate(_windows(now, rule["window_s"], weeks)):
        args[f"a{i}"], args[f"b{i}"] = start, end
        # A CDR exists once its call has ended: in a past week, count only the calls that had
        # ended by the same moment, so that calls still in progress now do not look missing.
        ended = f" AND {_ENDED} <= %(b{i})s" if i else ""
        ranges.append(f"(c.start_time >= %(a{i})s AND c.start_time < %(b{i})s{ended})")
    cols = [expr for _, expr in group]
    week = "floor(extract(epoch FROM (%(now)s - c.start_time)) / 604800)::int"
    where = " OR ".join(ranges)
    extra = " AND c.src_ip IS NOT NULL" if rule["params"]["per"] == "source_ip" else ""
    extra += " AND c.dest_country IS NOT NULL" if rule["params"]["per"] == "dest_country" else ""
    sql = (
        f"SELECT {', '.join([*cols, week])}, {_SUMS}"
        " FROM cdr c JOIN switch s ON s.tenant_id = c.tenant_id AND s.id = c.switch_id"
        f" WHERE c.tenant_id = %(t)s AND ({where}){_scope_sql(rule, args)}{extra}"
        f" GROUP BY {', '.join(str(i + 1) for i in range(len(cols) + 1))}"
    )
    cur = await conn.execute(sql, args)
    out: dict[tuple[Any, ...], dict[int, tuple[int, int, int, int, int]]] = {}
    n = len(cols)
    for row in await cur.fetchall():
        key = tuple(row[:n])
        c, a, ner, b, d = (int(v) for v in row[n + 1 :])
        out.setdefault(key, {})[min(int(row[n]), weeks)] = (c, a, ner, b, d)
    return out


def _metric(kind: str, sums: tuple[int, int, int, int, int], min_calls: int) -> float | None:
    calls, answered, ner_ok, billsec, duration = sums
    if kind == "calls":
        return float(calls)
    if calls == 0 or calls < min_calls:
        return None
    if kind == "asr":
        return 100.0 * answered / calls
    if kind == "ner":
        return 100.0 * ner_ok / calls
    if kind == "acd":
        return billsec / answered if answered else None
    return duration / calls  # aloc


def _pool(sums: list[tuple[int, int, int, int, int]]) -> tuple[int, int, int, int, int]:
    return tuple(sum(s[i] for s in sums) for i in range(5))  # type: ignore[return-value]


def _judge(
    params: dict[str, Any], value: float | None, baseline: float | None
) -> tuple[bool, bool, bool, float | None]:
    """(holds, still, known, change in % or None) for a metric value."""
    op, threshold = params["op"], float(params["threshold"])
    clear = float(params["clear"]) if params.get("clear") is not None else threshold
    if value is None:
        return False, False, False, None
    if op == "above":
        return value > threshold, value > clear, True, None
    if op == "below":
        return value < threshold, value < clear, True, None
    if baseline is None or baseline <= 0:
        return False, False, False, None
    if op == "rises_by_pct":
        change = (value - baseline) / baseline * 100.0
    else:  # drops_by_pct: how far BELOW the baseline the value is
        change = (baseline - value) / baseline * 100.0
    return change > threshold, change > clear, True, change


async def _observe_metric(
    conn: psycopg.AsyncConnection[Any], rule: dict[str, Any], now: datetime
) -> list[Observation]:
    params, kind = rule["params"], rule["kind"]
    pct = params["op"] in ("rises_by_pct", "drops_by_pct")
    weeks = int(params.get("weeks", 4)) if pct else 0
    names = [n for n, _ in _GROUP[params["per"]]]
    if kind == "concurrent":
        data = await _concurrent(conn, rule, now, weeks)
    else:
        data = await _cdr_sums(conn, rule, now, weeks)
    if params["per"] == "tenant":
        data.setdefault((), {})
    elif params["per"] == "switch" and params["op"] in ("below", "drops_by_pct"):
        for name in await _switch_names(conn, rule):
            data.setdefault((name,), {})  # a silent switch is a value of zero calls
    min_calls = int(params.get("min_calls", 0))
    out = []
    for key, by_week in data.items():
        baseline: float | None = None
        if kind == "concurrent":
            value: float | None = float(by_week.get(0, (0,))[0])
            past = [float(v[0]) for w, v in by_week.items() if w > 0]
            baseline = sum(past) / len(past) if past else None
        else:
            current = by_week.get(0, (0, 0, 0, 0, 0))
            value = _metric(kind, current, min_calls)
            past_weeks = [v for w, v in by_week.items() if w > 0 and v[0] > 0]
            if past_weeks:
                if kind == "calls":
                    baseline = sum(v[0] for v in past_weeks) / len(past_weeks)
                else:
                    baseline = _metric(kind, _pool(past_weeks), min_calls)
        holds, still, known, change = _judge(params, value, baseline)
        detail: dict[str, Any] = {
            "metric": kind,
            "value": None if value is None else round(value, 3),
            "op": params["op"],
            "threshold": params["threshold"],
            "window_s": rule["window_s"],
            **_placed(names, key),
        }
        if kind != "concurrent":
            detail["calls"] = by_week.get(0, (0,))[0]
        if pct:
            detail["baseline"] = None if baseline is None else round(baseline, 3)
            detail["change_pct"] = None if change is None else round(change, 1)
            detail["weeks"] = weeks
        ob = Observation(_episode_key(names, key), value if known else None, holds, still, detail)
        ob.switch = detail.get("switch")
        out.append(ob)
    return out


async def _switch_names(conn: psycopg.AsyncConnection[Any], rule: dict[str, Any]) -> list[str]:
    cur = await conn.execute(
        "SELECT name FROM switch WHERE tenant_id = %s AND (%s::text IS NULL OR name = %s)",
        (rule["tenant_id"], rule["scope"].get("switch"), rule["scope"].get("switch")),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def _concurrent(
    conn: psycopg.AsyncConnection[Any], rule: dict[str, Any], now: datetime, weeks: int
) -> dict[tuple[Any, ...], dict[int, tuple[int, int, int, int, int]]]:
    """Peak calls in progress per window, per switch or for the tenant: the larger of what
    the CDRs say (agg_conc_minute, known once the calls have ended) and what the switches
    reported live (live_count_minute, at once; for the tenant, the sum of the switches'
    per-minute peaks)."""
    per_switch = rule["params"]["per"] == "switch" or "switch" in rule["scope"]
    args: dict[str, Any] = {"t": rule["tenant_id"], "now": now}
    ranges = []
    for i, (start, end) in enumerate(_windows(now, rule["window_s"], weeks)):
        args[f"a{i}"], args[f"b{i}"] = start, end
        ranges.append(f"(m.minute >= date_trunc('minute', %(a{i})s) AND m.minute < %(b{i})s)")
    key_col = "s.name" if rule["params"]["per"] == "switch" else "''"
    if per_switch:
        minutes = (
            "SELECT switch_id, minute, calls FROM agg_conc_minute"
            " WHERE tenant_id = %(t)s AND switch_id <> 0"
            " UNION ALL SELECT switch_id, minute, calls_max FROM live_count_minute"
            " WHERE tenant_id = %(t)s"
        )
    else:
        minutes = (
            "SELECT 0::bigint AS switch_id, minute, calls FROM agg_conc_minute"
            " WHERE tenant_id = %(t)s AND switch_id = 0"
            " UNION ALL SELECT 0::bigint, minute, sum(calls_max)::int FROM live_count_minute"
            " WHERE tenant_id = %(t)s GROUP BY minute"
        )
    sql = (
        f"SELECT {key_col}, floor(extract(epoch FROM (%(now)s - m.minute)) / 604800)::int,"
        f" max(m.calls) FROM ({minutes}) m (switch_id, minute, calls)"
        " LEFT JOIN switch s ON s.tenant_id = %(t)s AND s.id = m.switch_id"
        f" WHERE ({' OR '.join(ranges)})"
    )
    if "switch" in rule["scope"]:
        sql += " AND s.name = %(scope_switch)s"
        args["scope_switch"] = rule["scope"]["switch"]
    sql += " GROUP BY 1, 2"
    cur = await conn.execute(sql, args)
    out: dict[tuple[Any, ...], dict[int, tuple[int, int, int, int, int]]] = {}
    tenant_wide = rule["params"]["per"] == "tenant"
    for name, week, peak in await cur.fetchall():
        key: tuple[Any, ...] = () if tenant_wide else (name,)
        slot = out.setdefault(key, {})
        w = min(int(week), weeks)
        # A scoped tenant-wide rule sums nothing: the scope is one switch, its peak is the peak.
        slot[w] = (max(int(peak), slot.get(w, (0,))[0]), 0, 0, 0, 0)
    return out


_EVENT_WHAT = {
    "risk_destination": "calls to high-risk or premium destinations",
    "blacklist": "calls to blacklisted destinations",
    "new_country": "calls to a country new for the tenant",
    "short_calls": "short answered calls",
    "scanner": "failed calls",
}
_SCANNER_WHAT = {
    (True, False): "failed calls",
    (False, True): "failed registrations",
    (True, True): "failed calls and registrations",
}
_CALL_ONLY_SCOPE = frozenset({"trunk", "dest_prefix", "dest_country", "direction"})
"""Scope keys a failed registration has no value for: with one, only calls are counted."""


async def _observe_scanner(
    conn: psycopg.AsyncConnection[Any], rule: dict[str, Any], now: datetime
) -> list[Observation]:
    """Failed calls (CDRs) plus failed registrations the switches reported on the live
    channel (`auth_failure_minute`, counted by the minute: the window's first minute counts
    whole), per switch and source address."""
    params, scope = rule["params"], rule["scope"]
    start = now - timedelta(seconds=rule["window_s"])
    args: dict[str, Any] = {"t": rule["tenant_id"], "ws": start, "we": now}
    args["codes"] = list(SCANNER_SIP_CODES)
    calls_sql = (
        "SELECT s.name, host(c.src_ip), count(*)::int, min(c.start_time), max(c.start_time),"
        " (array_agg(c.callee ORDER BY c.start_time DESC))[1:5],"
        " array_remove(array_agg(DISTINCT c.dest_country), NULL)"
        " FROM cdr c JOIN switch s ON s.tenant_id = c.tenant_id AND s.id = c.switch_id"
        " WHERE c.tenant_id = %(t)s AND c.start_time >= %(ws)s AND c.start_time < %(we)s"
        f"{_scope_sql(rule, args)} AND c.src_ip IS NOT NULL"
        " AND (c.disposition = 'FAILED' OR c.sip_code = ANY(%(codes)s)) GROUP BY 1, 2"
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    cur = await conn.execute(calls_sql, args)
    for name, ip, n, first, last, callees, countries in await cur.fetchall():
        found[(name, ip)] = {
            "calls": n,
            "regs": 0,
            "first": first,
            "last": last,
            "callees": list(callees or []),
            "countries": list(countries or []),
            "usernames": [],
        }
    if params.get("registrations", True) and not set(scope) & _CALL_ONLY_SCOPE:
        reg_sql = (
            "SELECT s.name, host(a.src_ip), sum(a.failures)::int, min(a.first_at),"
            " max(a.last_at), jsonb_agg(to_jsonb(a.usernames) ORDER BY a.minute DESC)"
            " FROM auth_failure_minute a"
            " JOIN switch s ON s.tenant_id = a.tenant_id AND s.id = a.switch_id"
            " WHERE a.tenant_id = %(t)s AND a.minute >= date_trunc('minute', %(ws)s)"
            " AND a.minute < %(we)s AND a.first_at < %(we)s"
            + (" AND s.name = %(scope_switch)s" if "switch" in scope else "")
            + " GROUP BY 1, 2"
        )
        cur = await conn.execute(reg_sql, args)
        for name, ip, n, first, last, names in await cur.fetchall():
            slot = found.setdefault(
                (name, ip),
                {"calls": 0, "first": first, "last": last, "callees": [], "countries": []},
            )
            slot["regs"] = n
            slot["first"] = min(slot["first"], first)
            slot["last"] = max(slot["last"], last)
            tried: list[str] = []
            for minute_names in names or []:
                tried += [u for u in minute_names if u not in tried]
            slot["usernames"] = tried[:10]
    out = []
    for (name, ip), v in sorted(found.items()):
        total = v["calls"] + v["regs"]
        if total < params["count"]:
            continue
        detail: dict[str, Any] = {
            "metric": "scanner",
            "value": total,
            "threshold": params["count"],
            "window_s": rule["window_s"],
            "failed_calls": v["calls"],
            "failed_registrations": v["regs"],
            "first_call": v["first"].isoformat(),  # first and last attempt (call or REGISTER)
            "last_call": v["last"].isoformat(),
            "callees": v["callees"],
            "countries": v["countries"],
            "usernames": v["usernames"],
            "switch": name,
            "source_ip": ip,
        }
        key = _episode_key(["switch", "ip"], (name, ip))
        ob = Observation(key, float(total), True, True, detail)
        ob.switch, ob.ip = name, ip
        out.append(ob)
    return out


async def _observe_event(
    conn: psycopg.AsyncConnection[Any],
    rule: dict[str, Any],
    now: datetime,
    lists: dict[str, list[str]],
) -> list[Observation]:
    params, kind = rule["params"], rule["kind"]
    if kind == "scanner":
        return await _observe_scanner(conn, rule, now)
    start = now - timedelta(seconds=rule["window_s"])
    args: dict[str, Any] = {"t": rule["tenant_id"], "ws": start, "we": now}
    group = _GROUP[params["per"]]
    names = [n for n, _ in group]
    white = _regex(lists["whitelist"])
    not_white = f" AND NOT coalesce({_NUMBER} ~ %(white)s, false)" if white else ""
    args["white"] = white
    if kind == "risk_destination":
        risk = _regex(lists["risk"])
        match = f"{_NUMBER} ~ %(risk)s OR " if risk else ""
        args["risk"] = risk
        cond = f"({match}c.dest_kind = 'premium'){not_white}"
    elif kind == "blacklist":
        black = _regex(lists["blacklist"])
        if black is None:
            return []
        args["black"] = black
        cond = f"{_NUMBER} ~ %(black)s{not_white}"
    elif kind == "short_calls":
        cond = "c.disposition = 'ANSWERED' AND c.billsec < %(max_billsec)s"
        args["max_billsec"] = params["max_billsec"]
    else:  # new_country: no call to that country in the lookback before the window
        args["since"] = start - timedelta(days=params["lookback_days"])
        cond = (
            "c.dest_country IS NOT NULL AND c.dest_country <> ''"
            " AND NOT EXISTS (SELECT 1 FROM agg_dest_day d WHERE d.tenant_id = c.tenant_id"
            "  AND d.dest_country = c.dest_country AND d.day >= %(since)s::date"
            "  AND d.day < (%(ws)s AT TIME ZONE 'UTC')::date - 2)"
            " AND NOT EXISTS (SELECT 1 FROM agg_dest_hour h WHERE h.tenant_id = c.tenant_id"
            "  AND h.dest_country = c.dest_country AND h.hour >= greatest(%(since)s,"
            "  date_trunc('day', %(ws)s AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '3 days')"
            "  AND h.hour < date_trunc('hour', %(ws)s))"
            " AND NOT EXISTS (SELECT 1 FROM cdr o WHERE o.tenant_id = c.tenant_id"
            "  AND o.dest_country = c.dest_country"
            "  AND o.start_time >= greatest(%(since)s, date_trunc('hour', %(ws)s))"
            "  AND o.start_time < %(ws)s)"
        )
    if params["per"] == "source_ip":
        cond += " AND c.src_ip IS NOT NULL"
    args["count"] = params.get("count", 1)
    cols = [expr for _, expr in group]
    sql = (
        f"SELECT {''.join(c + ', ' for c in cols)}count(*), min(c.start_time), max(c.start_time),"
        " (array_agg(c.callee ORDER BY c.start_time DESC))[1:5],"
        " array_remove(array_agg(DISTINCT c.dest_country), NULL)"
        " FROM cdr c JOIN switch s ON s.tenant_id = c.tenant_id AND s.id = c.switch_id"
        f" WHERE c.tenant_id = %(t)s AND c.start_time >= %(ws)s AND c.start_time < %(we)s"
        f"{_scope_sql(rule, args)} AND {cond}"
        + (f" GROUP BY {', '.join(str(i + 1) for i in range(len(cols)))}" if cols else "")
        + " HAVING count(*) >= %(count)s"
    )
    cur = await conn.execute(sql, args)
    out = []
    n = len(cols)
    for row in await cur.fetchall():
        key = tuple(row[:n])
        count, first, last, callees, countries = row[n:]
        detail: dict[str, Any] = {
            "metric": kind,
            "value": int(count),
            "threshold": args["count"],
            "window_s": rule["window_s"],
            "first_call": first.isoformat(),
            "last_call": last.isoformat(),
            "callees": list(callees or []),
            "countries": list(countries or []),
            **_placed(names, key),
        }
        ob = Observation(_episode_key(names, key), float(count), True, True, detail)
        ob.switch, ob.ip = detail.get("switch"), detail.get("source_ip")
        out.append(ob)
    return out


# --- applying --------------------------------------------------------------------------------


def _title(rule: dict[str, Any], ob: Observation) -> str:
    d = ob.detail
    where = "" if ob.key == "tenant" else f" ({ob.key.replace(',', ', ')})"
    if rule["kind"] in _LABEL:
        label, unit = _LABEL[rule["kind"]]
        value = d["value"]
        shown = "?" if value is None else f"{value:.1f}".removesuffix(".0")
        op = d["op"]
        if op in ("above", "below"):
            what = f"{op} {float(d['threshold']):g}{unit}"
        else:
            base = d.get("baseline")
            verb = "up" if op == "rises_by_pct" else "down"
            what = f"{verb} {d.get('change_pct')} % from {base} (previous {d.get('weeks')} weeks)"
        return f"{rule['name']}: {label} {shown}{unit} {what}{where}"[:300]
    what = _EVENT_WHAT[rule["kind"]]
    if rule["kind"] == "scanner":
        calls, regs = d.get("failed_calls", 1), d.get("failed_registrations", 0)
        what = _SCANNER_WHAT.get((calls > 0, regs > 0), what)
    return f"{rule['name']}: {d['value']} {what}{where}"[:300]


async def _block(
    conn: psycopg.AsyncConnection[Any],
    rule: dict[str, Any],
    ob: Observation,
    alert_id: int,
    own: Callable[[], set[IPAddress]],
    limits: commands.Limits | None,
) -> dict[str, Any]:
    base = {"verb": "block_ip", "ip": ob.ip, "switch": ob.switch, "ttl": rule["block_ttl_s"]}
    limited = limits or commands.Limits(
        command_ttl_s=commands.COMMAND_TTL_S, max_active_blocks=commands.MAX_ACTIVE_BLOCKS
    )
    try:
        cmd = await commands.create_command(
            conn,
            tenant_id=rule["tenant_id"],
            switch=str(ob.switch),
            verb="block_ip",
            args={"ip": ob.ip, "ttl": rule["block_ttl_s"]},
            issued_by=f"rule:{rule['name']}",
            own_addresses=own,
            **limited,
        )
    except (commands.CommandError, keys.NoCollectorKey) as exc:
        await audit.record(
            conn,
            rule["tenant_id"],
            None,
            f"rule:{rule['name']}",
            "alert.block_refused",
            str(ob.ip),
            {"alert_id": alert_id, "switch": ob.switch, "error": str(exc)},
        )
        log.info("rule_block_refused", rule=rule["name"], ip=str(ob.ip), reason=str(exc))
        return {**base, "error": str(exc)}
    return {**base, "command_id": str(cmd.id)}


async def _apply(
    conn: psycopg.AsyncConnection[Any],
    rule: dict[str, Any],
    observed: list[Observation],
    now: datetime,
    own: Callable[[], set[IPAddress]],
    limits: commands.Limits | None = None,
) -> list[Change]:
    tid, rid, name = rule["tenant_id"], rule["id"], rule["name"]
    by = f"rule:{name}"
    window = timedelta(seconds=rule["window_s"])
    episodes = await alerts.active_episodes(conn, tid, rid)
    changes: list[Change] = []

    def change(alert_id: int, key: str, what: str, action: Any = None) -> None:
        changes.append(Change(alert_id, tid, rid, name, key, what, action))

    held: list[tuple[int, dict[str, Any]]] = []
    for ob in observed:
        ep = episodes.pop(ob.key, None)
        if ep is None:
            if not ob.holds:
                continue
            try:
                async with conn.transaction():
                    alert = await alerts.open_episode(
                        conn, tid, rule, ob.key, _title(rule, ob), ob.detail, now
                    )
                    action = None
                    if rule["action"] == "block_source_ip" and ob.ip and ob.switch:
                        action = await _block(conn, rule, ob, int(alert["id"]), own, limits)
                        await alerts.set_action(conn, tid, int(alert["id"]), action)
                    await alerts.notify(conn, alert)
            except pgerrors.UniqueViolation:
                continue  # opened meanwhile by another evaluation
            change(int(alert["id"]), ob.key, "opened", action)
        elif ob.still:
            held.append((ep["id"], ob.detail))
            until = ep["snoozed_until"]
            if ep["state"] == "snoozed" and until is not None and until <= now:
                await alerts.wake(conn, tid, ep["id"], by)
                change(ep["id"], ob.key, "reopened")
        elif ob.value is not None:
            await alerts.auto_resolve(conn, tid, ep["id"], by, now, "cleared")
            change(ep["id"], ob.key, "resolved")
        elif now - ep["last_seen_at"] >= window:
            await alerts.auto_resolve(conn, tid, ep["id"], by, now, "absent for a window")
            change(ep["id"], ob.key, "resolved")
    await alerts.touch(conn, tid, held, now)
    for key, ep in episodes.items():
        if now - ep["last_seen_at"] >= window:
            await alerts.auto_resolve(conn, tid, ep["id"], by, now, "absent for a window")
            change(ep["id"], key, "resolved")
    return changes


_RULES = (
    "SELECT id, tenant_id, name, kind, scope, params, window_s, severity, action, block_ttl_s"
    " FROM rule WHERE enabled"
)


async def evaluate(
    conn: psycopg.AsyncConnection[Any],
    now: datetime | None = None,
    *,
    tenant_id: int | None = None,
    own_addresses: Callable[[], set[IPAddress]] = set,
    due: Callable[[dict[str, Any]], bool] | None = None,
    limits: commands.Limits | None = None,
) -> list[Change]:
    """Run every enabled rule (of `tenant_id`, or of all tenants) at `now`; the changes made.

    `conn` must be in autocommit mode: each alert change is its own transaction. A rule whose
    query fails is logged and skipped (the others still run). `due(rule)` False skips a rule
    this time (the background evaluator's schedule, see `recheck_s`).
    `limits` are the `[commands]` limits for the blocks rules make (`commands.limits`).
    """
    if not conn.autocommit:
        raise ValueError("evaluate() needs a connection in autocommit mode")
    now = now or datetime.now(UTC)
    sql, args = _RULES, ()
    if tenant_id is not None:
        sql, args = sql + " AND tenant_id = %s", (tenant_id,)  # type: ignore[assignment]
    cur = await conn.execute(sql + " ORDER BY tenant_id, id", args)
    names = ["id", "tenant_id", "name", "kind", "scope", "params", "window_s", "severity"]
    names += ["action", "block_ttl_s"]
    found = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
    lists: dict[int, dict[str, list[str]]] = {}
    changes: list[Change] = []
    for rule in found:
        tid = int(rule["tenant_id"])
        if due is not None and not due(rule):
            continue
        try:
            if rule["kind"] in rules.EVENT_KINDS:
                if tid not in lists:
                    lists[tid] = {n: await rules.list_prefixes(conn, tid, n) for n in rules.LISTS}
                observed = await _observe_event(conn, rule, now, lists[tid])
            else:
                observed = await _observe_metric(conn, rule, now)
            changes += await _apply(conn, rule, observed, now, own_addresses, limits)
        except psycopg.OperationalError:
            raise
        except (psycopg.Error, KeyError, ValueError, TypeError) as exc:
            log.warning("rule_failed", rule_id=rule["id"], error=str(exc).strip()[:300])
    return changes


# --- the background task ---------------------------------------------------------------------


def recheck_s(rule: dict[str, Any], min_interval_s: float = 1.0) -> float:
    """How often the background evaluator runs a rule: 1/120 of its window (300 s: 2.5 s,
    3600 s: 30 s), at most every 30 s for the suspicious-call kinds (one call to a
    blacklisted number is news at once) and every 300 s for the measured values."""
    cap = 30.0 if rule["kind"] in rules.EVENT_KINDS else 300.0
    return max(min_interval_s, min(cap, int(rule["window_s"]) / 120))


class Evaluator:
    """Evaluates the rules in the background of a collector process (see the module doc)."""

    def __init__(
        self,
        database_url: str,
        *,
        url: str = "",
        tick_s: float = 30.0,
        min_interval_s: float = 1.0,
        own_addresses_ttl_s: float = 300.0,
        limits: commands.Limits | None = None,
    ) -> None:
        self.database_url = database_url
        self.limits = limits
        """`[commands]` limits for the blocks rules make (commands.limits(settings))."""
        self.url = url
        self.tick_s = tick_s
        self.min_interval_s = min_interval_s
        self.own_addresses_ttl_s = own_addresses_ttl_s
        self.runs = 0
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._own: tuple[float, set[IPAddress]] = (0.0, set())
        self._last: dict[int, float] = {}
        """rule id -> when this process last ran it (monotonic)."""

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen(), name="cdrstats-rules-listen"),
                asyncio.create_task(self._loop(), name="cdrstats-rules"),
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {authfail.NOTIFY_CHANNEL}")
                    self._listening.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except psycopg.Error as exc:
                log.warning("rules_listener_down", error=str(exc).strip()[:200])
            finally:
                self._listening.clear()
            await asyncio.sleep(2.0)

    async def wait_listening(self, within: float) -> bool:
        """True once the LISTEN connection is up (for tests)."""
        try:
            await asyncio.wait_for(self._listening.wait(), within)
        except TimeoutError:
            return False
        return True

    async def _addresses(self) -> set[IPAddress]:
        at, found = self._own
        if time.monotonic() - at > self.own_addresses_ttl_s:
            urls = [self.url] if self.url else []
            found = await asyncio.to_thread(commands.collector_addresses, urls)
            self._own = (time.monotonic(), found)
        return found

    async def _loop(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        last = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.tick_s)
                pause = last + self.min_interval_s - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # debounce a burst of batches
                self._wake.clear()
                last = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.database_url,
                            autocommit=True,
                            connect_timeout=5,
                            application_name="cdrstats-rules",
                        )
                    await self.run_once(conn)
                except psycopg.Error as exc:
                    log.warning("rules_evaluation_failed", error=str(exc).strip()[:200])
                    if conn is not None:
                        await conn.close()
                    conn = None
                    await asyncio.sleep(min(self.tick_s, 30.0))  # not once per ingested batch
        finally:
            if conn is not None:
                await conn.close()

    async def run_once(self, conn: psycopg.AsyncConnection[Any]) -> list[Change] | None:
        """One evaluation if this process gets the lock (None when another one has it)."""
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", EVALUATOR_LOCK)
        row = await cur.fetchone()
        if row is None or not row[0]:
            return None
        try:
            own = await self._addresses()
            started = time.monotonic()
            now = time.monotonic()

            def due(rule: dict[str, Any]) -> bool:
                rid = int(rule["id"])
                if now - self._last.get(rid, -1e9) < recheck_s(rule, self.min_interval_s):
                    return False
                self._last[rid] = now
                return True

            changes = await evaluate(conn, own_addresses=lambda: own, due=due, limits=self.limits)
            self.runs += 1
            if changes:
                log.info(
                    "rules_evaluated",
                    changes=len(changes),
                    opened=sum(c.change == "opened" for c in changes),
                    ms=round((time.monotonic() - started) * 1000, 1),
                )
            return changes
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", EVALUATOR_LOCK)
