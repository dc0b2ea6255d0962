"""Alerts: one row per episode of a rule on one scope key (table `alert`, migration 0008).

    rows = await list_alerts(conn, tenant_id, state="open")
    await acknowledge(conn, tenant_id, alert_id, actor="alice")
    await snooze(conn, tenant_id, alert_id, 3600, actor="alice")
    await resolve(conn, tenant_id, alert_id, actor="alice")

Life of an alert (docs/rules.md): the evaluator opens it when a rule's condition starts to
hold for a key (`open`, `notify_state` 'pending' for the notifier), refreshes `last_seen_at`
while it holds, and resolves it when the value is back past the clear level or the condition
has been absent for a whole window. A user may acknowledge it (no more reminders; it still
resolves by itself), snooze it (no notification until `snoozed_until`; if the condition still
holds then, it is `open` and notified again) or resolve it. A new episode after a resolve is a
new alert.

Every transition is audited and sends one `NOTIFY cdrstats_alert` with
`{"tenant_id", "alert_id", "state", "title", "severity"}` in the same transaction (the
realtime broker turns it into an SSE `alert` event).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import audit
from .realtime import ALERT_CHANNEL

STATES: tuple[str, ...] = ("open", "acknowledged", "snoozed", "resolved")
ACTIVE: tuple[str, ...] = ("open", "acknowledged", "snoozed")
MAX_SNOOZE_S = 30 * 86400


class AlertError(Exception):
    """No such alert in this tenant, or a transition that its state does not allow."""


class AlertNotFound(AlertError):
    """No such alert in this tenant (API 404)."""


_COLUMNS = (
    "a.id, a.tenant_id, a.rule_id, r.name, a.episode_key, a.state, a.severity, a.title,"
    " a.detail, a.opened_at, a.last_seen_at, a.acknowledged_at, a.acknowledged_by,"
    " a.snoozed_until, a.resolved_at, a.resolved_by, a.action, a.notify_state,"
    " a.notify_attempts, a.notified_at, a.notify_error"
)
_FROM = " FROM alert a LEFT JOIN rule r ON r.id = a.rule_id"
_NAMES = [c.strip().split(".")[1] for c in _COLUMNS.split(",")]
_NAMES[3] = "rule_name"


def _row(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_NAMES, row, strict=True))
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


async def list_alerts(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, state: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Newest first. `state`: one of STATES, or 'active' (open, acknowledged or snoozed)."""
    if state is not None and state not in (*STATES, "active"):
        raise AlertError(f"state: must be one of {', '.join(STATES)} or active")
    states = list(ACTIVE) if state == "active" else list(STATES if state is None else [state])
    cur = await conn.execute(
        _COLUMNS.join(("SELECT ", _FROM))
        + " WHERE a.tenant_id = %s AND a.state = ANY(%s) ORDER BY a.opened_at DESC, a.id DESC"
        " LIMIT %s",
        (tenant_id, states, max(1, min(int(limit), 5000))),
    )
    return [_row(r) for r in await cur.fetchall()]


async def get_alert(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, alert_id: int
) -> dict[str, Any] | None:
    cur = await conn.execute(
        _COLUMNS.join(("SELECT ", _FROM)) + " WHERE a.tenant_id = %s AND a.id = %s",
        (tenant_id, alert_id),
    )
    row = await cur.fetchone()
    return None if row is None else _row(row)


async def notify(conn: psycopg.AsyncConnection[Any], alert: dict[str, Any]) -> None:
    """NOTIFY cdrstats_alert (delivered at commit)."""
    payload = {
        "tenant_id": int(alert["tenant_id"]),
        "alert_id": int(alert["id"]),
        "state": alert["state"],
        "title": str(alert["title"])[:300],
        "severity": alert["severity"],
    }
    await conn.execute("SELECT pg_notify(%s, %s)", (ALERT_CHANNEL, json.dumps(payload)))


async def _transition(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    alert_id: int,
    actor: str,
    verb: str,
    allowed: tuple[str, ...],
    assignments: str,
    args: Sequence[Any],
    user_id: int | None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT state FROM alert WHERE tenant_id = %s AND id = %s FOR UPDATE",
            (tenant_id, alert_id),
        )
        found = await cur.fetchone()
        if found is None:
            raise AlertNotFound(f"no alert {alert_id}")
        if found[0] not in allowed:
            raise AlertError(f"alert {alert_id} is {found[0]}: it cannot be {verb}")
        await conn.execute(
            f"UPDATE alert SET {assignments} WHERE tenant_id = %s AND id = %s",
            [*args, tenant_id, alert_id],
        )
        alert = await get_alert(conn, tenant_id, alert_id)
        assert alert is not None
        await audit.record(
            conn,
            tenant_id,
            user_id,
            actor,
            f"alert.{verb}",
            str(alert_id),
            {"title": alert["title"], "from": found[0], **(detail or {})},
        )
        await notify(conn, alert)
    return alert


async def acknowledge(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    alert_id: int,
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """An open or snoozed alert becomes acknowledged (no more reminders)."""
    return await _transition(
        conn,
        tenant_id,
        alert_id,
        actor,
        "acknowledged",
        ("open", "snoozed"),
        "state = 'acknowledged', acknowledged_at = now(), acknowledged_by = %s,"
        " snoozed_until = NULL",
        [actor],
        user_id,
    )


async def snooze(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    alert_id: int,
    seconds: int,
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """No notification for `seconds` (1 s .. 30 days); back to open then if it still holds."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not 1 <= seconds <= MAX_SNOOZE_S
    ):
        raise AlertError(f"seconds: must be a whole number from 1 to {MAX_SNOOZE_S}")
    return await _transition(
        conn,
        tenant_id,
        alert_id,
        actor,
        "snoozed",
        ACTIVE,
        "state = 'snoozed', snoozed_until = now() + make_interval(secs => %s)",
        [seconds],
        user_id,
        {"seconds": seconds},
    )


async def resolve(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    alert_id: int,
    actor: str,
    *,
    user_id: int | None = None,
) -> dict[str, Any]:
    """End the episode now (a new one opens if the condition holds at a later evaluation)."""
    return await _transition(
        conn,
        tenant_id,
        alert_id,
        actor,
        "resolved",
        ACTIVE,
        "state = 'resolved', resolved_at = now(), resolved_by = %s",
        [actor],
        user_id,
    )


async def resolve_rule_alerts(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, rule_id: int, actor: str, reason: str
) -> int:
    """Resolve every active alert of a rule (rule disabled or deleted); one NOTIFY at most."""
    cur = await conn.execute(
        "UPDATE alert SET state = 'resolved', resolved_at = now(), resolved_by = %s"
        " WHERE tenant_id = %s AND rule_id = %s AND state <> 'resolved'"
        " RETURNING id, tenant_id, state, title, severity",
        (actor, tenant_id, rule_id),
    )
    rows = await cur.fetchall()
    for r in rows:
        await audit.record(
            conn, tenant_id, None, actor, "alert.resolved", str(r[0]), {"reason": reason}
        )
    if rows:
        r = rows[-1]
        await notify(
            conn, {"id": r[0], "tenant_id": r[1], "state": r[2], "title": r[3], "severity": r[4]}
        )
    return len(rows)


# --- used by the evaluator -------------------------------------------------------------------


async def active_episodes(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, rule_id: int
) -> dict[str, dict[str, Any]]:
    """episode_key -> {id, state, last_seen_at, snoozed_until} of the rule's active alerts."""
    cur = await conn.execute(
        "SELECT episode_key, id, state, last_seen_at, snoozed_until FROM alert"
        " WHERE tenant_id = %s AND rule_id = %s AND state <> 'resolved'",
        (tenant_id, rule_id),
    )
    return {
        str(r[0]): {"id": int(r[1]), "state": r[2], "last_seen_at": r[3], "snoozed_until": r[4]}
        for r in await cur.fetchall()
    }


async def open_episode(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    rule: dict[str, Any],
    episode_key: str,
    title: str,
    detail: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """Insert a new open alert (call inside a transaction; audited, NOTIFY by the caller)."""
    cur = await conn.execute(
        "INSERT INTO alert (tenant_id, rule_id, episode_key, severity, title, detail,"
        " opened_at, last_seen_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (tenant_id, rule["id"], episode_key, rule["severity"], title, Jsonb(detail), now, now),
    )
    row = await cur.fetchone()
    assert row is not None
    await audit.record(
        conn,
        tenant_id,
        None,
        f"rule:{rule['name']}",
        "alert.opened",
        str(row[0]),
        {"rule_id": rule["id"], "episode_key": episode_key, "title": title, **detail},
    )
    alert = await get_alert(conn, tenant_id, int(row[0]))
    assert alert is not None
    return alert


async def set_action(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, alert_id: int, action: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE alert SET action = %s WHERE tenant_id = %s AND id = %s",
        (Jsonb(action), tenant_id, alert_id),
    )


async def touch(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    held: Sequence[tuple[int, dict[str, Any]]],
    now: datetime,
) -> None:
    """The condition still holds for these (alert id, figures): refresh last_seen_at and the
    figures, in one statement."""
    if not held:
        return
    await conn.execute(
        "UPDATE alert a SET last_seen_at = greatest(a.last_seen_at, %s), detail = h.detail"
        " FROM unnest(%s::bigint[], %s::jsonb[]) AS h (id, detail)"
        " WHERE a.tenant_id = %s AND a.id = h.id",
        (now, [i for i, _ in held], [Jsonb(d) for _, d in held], tenant_id),
    )


async def wake(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, alert_id: int, by: str
) -> dict[str, Any]:
    """A snoozed alert whose snooze ended while the condition holds: open and notify again."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE alert SET state = 'open', snoozed_until = NULL, notify_state = 'pending',"
            " notify_attempts = 0, notify_error = NULL"
            " WHERE tenant_id = %s AND id = %s AND state = 'snoozed'",
            (tenant_id, alert_id),
        )
        alert = await get_alert(conn, tenant_id, alert_id)
        assert alert is not None
        await audit.record(conn, tenant_id, None, by, "alert.reopened", str(alert_id), {})
        await notify(conn, alert)
    return alert


async def auto_resolve(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    alert_id: int,
    by: str,
    now: datetime,
    reason: str,
) -> dict[str, Any]:
    """The evaluator ends an episode (value back past the clear level, or absent a window)."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE alert SET state = 'resolved', resolved_at = %s, resolved_by = %s"
            " WHERE tenant_id = %s AND id = %s AND state <> 'resolved'",
            (now, by, tenant_id, alert_id),
        )
        alert = await get_alert(conn, tenant_id, alert_id)
        assert alert is not None
        await audit.record(
            conn, tenant_id, None, by, "alert.resolved", str(alert_id), {"reason": reason}
        )
        await notify(conn, alert)
    return alert
