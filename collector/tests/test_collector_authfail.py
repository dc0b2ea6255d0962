"""Failed SIP registrations: POST /api/v1/live stores them per minute and source address (bad
entries counted, not fatal), `scanner` rules count them beside failed calls (one alert per
episode, the address blocked), maintenance prunes them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.model import Disposition
from cdrstats_agent.plugin import AuthFailure, LiveEvent
from cdrstats_collector import authfail, maintenance, rules
from rules_testkit import NOW, Switch, add_rule, alert_rows, connect, run, spread

from tests.fix_db import CollectorServer

M = timedelta(minutes=1)


def failure(ip: str, at: datetime | float, source: str = "ast1", **kw: Any) -> dict[str, Any]:
    when = at.timestamp() if isinstance(at, datetime) else at
    doc, problems = wire.auth_failure_to_wire(source, AuthFailure(ip, at=when, **kw))
    assert problems == []
    return doc


def flood(
    ip: str, start: datetime, n: int, span_s: float = 60.0, **kw: Any
) -> list[dict[str, Any]]:
    """`n` failed registrations from `ip` spread over `span_s` seconds, accounts 1000, 1001..."""
    step = span_s / max(n, 1)
    return [
        failure(ip, start + timedelta(seconds=i * step), username=f"{1000 + i}", sip_code=401, **kw)
        for i in range(n)
    ]


async def store(sw: Switch, failures: list[dict[str, Any]]) -> None:
    async with await psycopg.AsyncConnection.connect(sw.database_url) as conn, conn.transaction():
        await authfail.store(conn, sw.tenant_id, sw.agent.switch_id, failures)


def post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(
        url + "/api/v1/live",
        content=data,
        headers={"content-type": "application/msgpack"},
        timeout=30,
    )


def test_live_message_stores_failures_per_minute_and_counts_bad_ones(
    collector_server: CollectorServer,
) -> None:
    agent = collector_server.enroll()
    url, db = collector_server.url, collector_server.database_url
    now = datetime.now().astimezone().replace(second=30, microsecond=0) - 3 * M
    good = flood("203.0.113.5", now, 25, transport="udp", method="REGISTER", service="PJSIP")
    good += [failure("198.51.100.9", now, username="admin", sip_code=403, reason="FailedACL")]
    bad = [
        {**good[0], "src_ip": "not-an-ip"},
        {**good[0], "at": wire.now_us() + 3600 * 10**6},  # a switch clock an hour ahead
    ]
    start = wire.live_event_to_wire(LiveEvent("started", "c1", now.timestamp(), {}))[0]
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute(f"LISTEN {authfail.NOTIFY_CHANNEL}")
        data = wire.seal_live(
            agent.agent_id,
            "s1",
            1,
            [wire.LiveStream("ast1", [start])],
            agent.key,
            auth_failures=good + bad,
        )
        r = post(url, data)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "seq": 1,
            "events": 1,
            "calls": 1,
            "auth_failures": 26,
            "auth_failures_rejected": 2,
        }
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=0.5)]
        assert [n["count"] for n in notes] == [26]
        # The same minute again from another message: counts add up, accounts merge.
        more = flood("203.0.113.5", now + timedelta(seconds=20), 3, span_s=5)
        r = post(url, wire.seal_live(agent.agent_id, "s1", 2, [], agent.key, auth_failures=more))
        assert r.status_code == 200 and r.json()["auth_failures"] == 3
        # Over the per-message bound: the whole message is refused, nothing stored.
        too_many = [good[0]] * (wire.LIVE_MAX_AUTH_FAILURES + 1)
        r = post(
            url, wire.seal_live(agent.agent_id, "s1", 3, [], agent.key, auth_failures=too_many)
        )
        assert r.status_code == 422 and "more than 1000" in r.json()["error"]
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT host(src_ip), minute, failures, usernames, last_username, last_sip_code,"
            " last_reason, last_method, last_transport, last_source"
            " FROM auth_failure_minute ORDER BY src_ip, minute"
        ).fetchall()
    scanner = [r for r in rows if r[0] == "203.0.113.5"]
    minute0 = now.replace(second=0)
    assert [(r[1], r[2]) for r in scanner] == [(minute0, 13 + 3), (minute0 + M, 12)]
    assert scanner[0][3] == [f"{1000 + i}" for i in range(13)]  # the 3 more: tried already
    assert scanner[1][4:] == ("1024", 401, None, "REGISTER", "udp", "ast1")
    acl = [r for r in rows if r[0] == "198.51.100.9"]
    assert [(r[2], r[3], r[6]) for r in acl] == [(1, ["admin"], "FailedACL")]
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'cdrstats_auth_failures_total{result="stored"} 29.0' in metrics
    assert 'cdrstats_auth_failures_total{result="rejected"} 2.0' in metrics
    log = collector_server.log_path.read_text(errors="replace")
    assert "live_auth_failures_rejected" in log and "is not an IP address" in log


async def test_scanner_rule_counts_failed_registrations_and_blocks_once_per_episode(
    database_url: str,
) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    t0 = NOW - 10 * M
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            tid,
            name="scan",
            kind="scanner",
            params={"count": 20},
            action="block_source_ip",
            block_ttl_s=600,
        )
        await add_rule(
            conn,
            tid,
            name="calls only",
            kind="scanner",
            params={"count": 20, "registrations": False},
        )
        await add_rule(
            conn,
            tid,
            name="trunk scope",
            kind="scanner",
            params={"count": 20},
            scope={"trunk": "gw1"},
        )
        # A REGISTER flood: 40 failures in one minute from one address; 5 from a neighbour.
        await store(sw, flood("203.0.113.77", t0, 40) + flood("192.0.2.44", t0, 5))
        key = "switch=sw1,ip=203.0.113.77"
        assert await run(conn, t0 + 2 * M) == [("scan", key, "opened")]
        assert await run(conn, t0 + 2 * M + M / 2) == []  # the same episode
        # Still going on in the next minutes: still the same alert, no second block.
        await store(sw, flood("203.0.113.77", t0 + 3 * M, 30))
        assert await run(conn, t0 + 4 * M) == []
        (alert,) = await alert_rows(conn, tid)
        assert alert["title"] == f"scan: 40 failed registrations ({key.replace(',', ', ')})"
        detail = alert["detail"]
        # The figures are the last ones seen (the title, those of the opening).
        assert (detail["failed_calls"], detail["failed_registrations"]) == (0, 70)
        assert detail["usernames"][:2] == ["1000", "1001"] and len(detail["usernames"]) == 10
        assert alert["action"]["verb"] == "block_ip" and "command_id" in alert["action"]
        cur = await conn.execute("SELECT verb, args, issued_by FROM command")
        assert await cur.fetchall() == [
            ("block_ip", {"ip": "203.0.113.77", "ttl": 600}, "rule:scan")
        ]
        # Quiet for a whole window: resolved once; a new flood is a new episode (and block).
        assert await run(conn, t0 + 12 * M) == [("scan", key, "resolved")]
        await store(sw, flood("203.0.113.77", t0 + 13 * M, 25))
        assert await run(conn, t0 + 14 * M) == [("scan", key, "opened")]
        cur = await conn.execute("SELECT count(*) FROM command WHERE verb = 'block_ip'")
        assert await cur.fetchone() == (2,)


async def test_failed_calls_and_registrations_add_up(database_url: str) -> None:
    sw = Switch(database_url)
    t0 = NOW - 5 * M
    ip = "203.0.113.9"
    await sw.store(spread(t0, 12, span_s=60, disposition=Disposition.FAILED, src_ip=ip))
    await store(sw, flood(ip, t0, 10))
    async with await connect(database_url) as conn:
        await add_rule(conn, sw.tenant_id, name="scan", kind="scanner", params={"count": 20})
        await add_rule(
            conn,
            sw.tenant_id,
            name="calls",
            kind="scanner",
            params={"count": 20, "registrations": False},
        )
        assert await run(conn, t0 + 3 * M) == [("scan", f"switch=sw1,ip={ip}", "opened")]
        (alert,) = await alert_rows(conn, sw.tenant_id)
    assert alert["detail"]["value"] == 22
    assert (alert["detail"]["failed_calls"], alert["detail"]["failed_registrations"]) == (12, 10)
    assert "22 failed calls and registrations" in alert["title"]


def test_registrations_param_must_be_true_or_false() -> None:
    doc = {"name": "s", "kind": "scanner", "window_s": 300}
    assert rules.parse_rule(doc)["params"] == {
        "count": 20,
        "registrations": True,
        "per": "source_ip",
    }
    with pytest.raises(rules.RuleError, match=r"^params\.registrations: must be true or false$"):
        rules.parse_rule({**doc, "params": {"registrations": "yes"}})
    with pytest.raises(
        rules.RuleError, match=r"^params\.registrations: unknown for kind short_calls"
    ):
        rules.parse_rule({**doc, "kind": "short_calls", "params": {"registrations": True}})


async def test_maintenance_prunes_old_failures(database_url: str) -> None:
    sw = Switch(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth_failure_minute (tenant_id, switch_id, minute, src_ip, failures,"
            " first_at, last_at) VALUES"
            " (%(t)s, %(s)s, date_trunc('minute', now()) - interval '8 days', '192.0.2.1', 3,"
            "  now() - interval '8 days', now() - interval '8 days'),"
            " (%(t)s, %(s)s, date_trunc('minute', now()), '192.0.2.1', 2, now(), now())",
            {"t": sw.tenant_id, "s": sw.agent.switch_id},
        )
    async with await connect(database_url) as conn:
        pruned = await maintenance.prune(conn, maintenance.Keep())
        assert pruned.auth_failures == 1
        left = await authfail.recent(conn, sw.tenant_id, NOW - 60 * M)
    assert [(r.switch, r.src_ip, r.failures) for r in left] == [("sw1", "192.0.2.1", 2)]
