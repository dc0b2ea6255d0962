"""Failed SIP registrations reported by switches, stored per minute and source address.

    n = await store(conn, tenant_id, switch_id, message.auth_failures)   # in the live transaction
    rows = await recent(conn, tenant_id, since)                         # console, tests

Agents forward the `AuthFailure`s their plugins see (a REGISTER whose digest was wrong, an
unknown account, a request an ACL refused) in the `auth_failures` list of a `live` message
(docs/protocol.md, "Failed registrations"); the collector checks each entry on its own
(`wire.check_auth_failure`: a bad one is counted and logged, the rest is stored). CDRs do not
carry them, and a scanner that only registers would go unseen: `scanner` rules count them
per source IP beside the failed calls (evaluator.py, docs/rules.md).

Storage is compact: one `auth_failure_minute` row per (switch, minute of the failure in the
switch's time, source address) with the count, the first and last time, up to
`MAX_USERNAMES` distinct accounts tried, and what the last failure said. A REGISTER flood of
thousands a second from one address is one row a minute. Failures whose time is more than
`MAX_FUTURE_S` ahead of the collector's clock, or older than `MAX_AGE_S`, are refused (a switch
with a wrong clock must not open or hide episodes). Maintenance deletes rows older than
`[maintenance] auth_failures_keep_days`.

One `NOTIFY cdrstats_auth_failure, '{"tenant_id", "switch_id", "count"}'` per message that
stored some wakes the rule evaluator at once (it otherwise runs on CDR ingest and a timer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from cdrstats_agent import wire

NOTIFY_CHANNEL = "cdrstats_auth_failure"
MAX_USERNAMES = 20
"""Distinct accounts remembered per row (a scanner tries thousands: the first ones tell)."""
MAX_FUTURE_S = 300
MAX_AGE_S = 86400


@dataclass(slots=True)
class MinuteRow:
    """What one message says about one (minute, source address)."""

    minute: int  # µs, start of the minute
    src_ip: str
    failures: int = 0
    first_at: int = 0
    last_at: int = 0
    usernames: list[str] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


def aggregate(failures: list[dict[str, Any]]) -> list[MinuteRow]:
    """Checked wire entries grouped per minute and source address (pure)."""
    rows: dict[tuple[int, str], MinuteRow] = {}
    for f in failures:
        at = int(f["at"])
        minute = at - at % 60_000_000
        row = rows.get((minute, f["src_ip"]))
        if row is None:
            row = rows[(minute, f["src_ip"])] = MinuteRow(minute, f["src_ip"], 0, at, at)
        row.failures += 1
        row.first_at = min(row.first_at, at)
        user = f.get("username")
        if user and user not in row.usernames and len(row.usernames) < MAX_USERNAMES:
            row.usernames.append(user)
        if at >= row.last_at:
            row.last_at = at
            row.last = f
    return list(rows.values())


def split_by_clock(
    failures: list[dict[str, Any]], now_us: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """(failures to store, why the others are refused) against the collector's clock."""
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    for f in failures:
        skew_s = (f["at"] - now_us) / 1e6
        if skew_s > MAX_FUTURE_S:
            bad.append(f"failure from {f['src_ip']}: at is {skew_s:.0f} s in the future")
        elif -skew_s > MAX_AGE_S:
            bad.append(f"failure from {f['src_ip']}: at is {-skew_s:.0f} s old")
        else:
            good.append(f)
    return good, bad


_UPSERT = (
    b"INSERT INTO auth_failure_minute AS m (tenant_id, switch_id, minute, src_ip, failures,"
    b" first_at, last_at, usernames, last_username, last_sip_code, last_reason, last_method,"
    b" last_transport, last_source)"
    b" SELECT %(tenant)s, %(switch)s, u.minute, u.src_ip, u.failures, u.first_at, u.last_at,"
    b"  ARRAY(SELECT jsonb_array_elements_text(u.usernames)), u.username, u.sip_code,"
    b"  u.reason, u.method, u.transport, u.source"
    b" FROM unnest(%(minute)s::timestamptz[], %(src_ip)s::inet[], %(failures)s::int[],"
    b"  %(first_at)s::timestamptz[], %(last_at)s::timestamptz[], %(usernames)s::jsonb[],"
    b"  %(username)s::text[], %(sip_code)s::int[], %(reason)s::text[], %(method)s::text[],"
    b"  %(transport)s::text[], %(source)s::text[])"
    b" AS u(minute, src_ip, failures, first_at, last_at, usernames, username, sip_code, reason,"
    b"  method, transport, source)"
    b" ON CONFLICT (tenant_id, minute, switch_id, src_ip) DO UPDATE SET"
    b"  failures = m.failures + EXCLUDED.failures,"
    b"  first_at = least(m.first_at, EXCLUDED.first_at),"
    b"  last_at = greatest(m.last_at, EXCLUDED.last_at),"
    b"  usernames = ARRAY(SELECT x FROM unnest(m.usernames || EXCLUDED.usernames)"
    b"   WITH ORDINALITY AS t(x, n) GROUP BY x ORDER BY min(n) LIMIT "
    + str(MAX_USERNAMES).encode()
    + b"),"
    b"  last_username = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_username ELSE m.last_username END,"
    b"  last_sip_code = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_sip_code ELSE m.last_sip_code END,"
    b"  last_reason = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_reason ELSE m.last_reason END,"
    b"  last_method = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_method ELSE m.last_method END,"
    b"  last_transport = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_transport ELSE m.last_transport END,"
    b"  last_source = CASE WHEN EXCLUDED.last_at >= m.last_at"
    b"   THEN EXCLUDED.last_source ELSE m.last_source END,"
    b"  updated_at = now()"
)
_NOTIFY = (
    b"SELECT pg_notify('" + NOTIFY_CHANNEL.encode() + b"', jsonb_build_object('tenant_id',"
    b" %(tenant)s::bigint, 'switch_id', %(switch)s::bigint, 'count', %(count)s::int)::text)"
)


async def store(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    switch_id: int,
    failures: list[dict[str, Any]],
) -> None:
    """Add checked failures to the per-minute rows (inside the caller's transaction), and
    queue one NOTIFY. Works inside a pipeline: nothing is fetched."""
    rows = aggregate(failures)
    if not rows:
        return
    params: dict[str, Any] = {
        "tenant": tenant_id,
        "switch": switch_id,
        "minute": [wire.from_us(r.minute) for r in rows],
        "src_ip": [r.src_ip for r in rows],
        "failures": [r.failures for r in rows],
        "first_at": [wire.from_us(r.first_at) for r in rows],
        "last_at": [wire.from_us(r.last_at) for r in rows],
        "usernames": [json.dumps(r.usernames) for r in rows],
        "username": [r.last.get("username") for r in rows],
        "sip_code": [r.last.get("sip_code") for r in rows],
        "reason": [r.last.get("reason") for r in rows],
        "method": [r.last.get("method") for r in rows],
        "transport": [r.last.get("transport") for r in rows],
        "source": [r.last.get("source") for r in rows],
    }
    await conn.execute(_UPSERT, params)
    await conn.execute(_NOTIFY, {"tenant": tenant_id, "switch": switch_id, "count": len(failures)})


@dataclass(frozen=True, slots=True)
class SourceFailures:
    """Failed registrations of one source address on one switch since a moment."""

    switch: str
    src_ip: str
    failures: int
    first_at: datetime
    last_at: datetime
    usernames: list[str]
    last_username: str | None
    last_sip_code: int | None
    last_reason: str | None


async def recent(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, since: datetime
) -> list[SourceFailures]:
    """Per switch and source address, the failures of minutes from `since`'s on, most first."""
    cur = await conn.execute(
        b"SELECT s.name, host(a.src_ip), sum(a.failures)::int, min(a.first_at), max(a.last_at),"
        b" jsonb_agg(to_jsonb(a.usernames) ORDER BY a.minute DESC) -> 0,"
        b" (array_agg(a.last_username ORDER BY a.last_at DESC))[1],"
        b" (array_agg(a.last_sip_code ORDER BY a.last_at DESC))[1],"
        b" (array_agg(a.last_reason ORDER BY a.last_at DESC))[1]"
        b" FROM auth_failure_minute a"
        b" JOIN switch s ON s.tenant_id = a.tenant_id AND s.id = a.switch_id"
        b" WHERE a.tenant_id = %s AND a.minute >= date_trunc('minute', %s::timestamptz)"
        b" GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
        (tenant_id, since),
    )
    return [SourceFailures(*row) for row in await cur.fetchall()]
