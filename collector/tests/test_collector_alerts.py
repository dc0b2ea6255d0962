"""The evaluator on crafted CDR streams: one alert per episode, hysteresis, the comparisons the
old CDR-Stats inverted, every rule kind, snooze/ack/resolve, NOTIFY, the block action."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cdrstats_agent.model import Disposition
from cdrstats_collector import alerts, evaluator, rules
from rules_testkit import NOW, Switch, add_rule, alert_rows, connect, run, spread

M = timedelta(minutes=1)
WEEK = timedelta(days=7)


def mixed(start: Any, n: int, answered: int, **kw: Any) -> list[Any]:
    """`n` calls over 4 minutes, the first `answered` of them answered, the rest no answer."""
    out = spread(start, n, **kw)
    for i, c in enumerate(out):
        if i >= answered:
            c.disposition, c.billsec, c.answer = Disposition.NO_ANSWER, 0, None
            c.duration, c.hangup_cause, c.sip_code = 5, 19, 480
    return out


async def test_asr_below_fires_once_per_episode_with_hysteresis(database_url: str) -> None:
    sw1 = Switch(database_url, "acme", "sw1")
    sw2 = Switch(database_url, "acme", "sw2")
    tid = sw1.tenant_id
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            tid,
            name="low ASR",
            kind="asr",
            params={"op": "below", "threshold": 40, "clear": 50, "min_calls": 10, "per": "switch"},
        )
        t0 = NOW - 10 * M
        await sw1.store(mixed(t0, 20, 5))  # ASR 25 %
        await sw2.store(mixed(t0, 4, 0))  # ASR 0 % but 4 calls < min_calls: no judgement
        assert await run(conn, t0 + 5 * M) == [("low ASR", "switch=sw1", "opened")]
        assert await run(conn, t0 + 5 * M + 10 * M / 60) == []  # same episode, no new alert
        # Next window: ASR 45 %, between the threshold (40) and the clear level (50): held.
        await sw1.store(mixed(t0 + 5 * M, 20, 9))
        assert await run(conn, t0 + 10 * M) == []
        # ASR 80 %: "below" must not fire on a high value, and the episode clears.
        await sw1.store(mixed(t0 + 10 * M, 20, 16))
        assert await run(conn, t0 + 15 * M) == [("low ASR", "switch=sw1", "resolved")]
        assert await run(conn, t0 + 15 * M) == []
        # A new episode is a new alert.
        await sw1.store(mixed(t0 + 15 * M, 20, 2))
        assert await run(conn, t0 + 20 * M) == [("low ASR", "switch=sw1", "opened")]
        rows = await alert_rows(conn, tid)
    assert [(r["key"], r["state"]) for r in rows] == [
        ("switch=sw1", "resolved"),
        ("switch=sw1", "open"),
    ]
    first = rows[0]
    assert first["detail"]["value"] == 45.0  # the last figures seen while it held
    assert first["detail"]["calls"] == 20
    assert first["title"] == "low ASR: ASR 25 % below 40 % (switch=sw1)"
    assert first["notify_state"] == "pending"
    assert rows[1]["detail"]["value"] == 10.0


async def test_value_absent_for_a_window_resolves(database_url: str) -> None:
    sw = Switch(database_url)
    async with await connect(database_url) as conn:
        await add_rule(
            conn, sw.tenant_id, name="busy", kind="calls", params={"op": "above", "threshold": 5}
        )
        t0 = NOW - 30 * M
        await sw.store(spread(t0, 10))
        assert await run(conn, t0 + 5 * M) == [("busy", "tenant", "opened")]
        # No calls at all since: 0 calls is a known value, back under the threshold.
        assert await run(conn, t0 + 11 * M) == [("busy", "tenant", "resolved")]


async def test_drops_by_pct_fires_on_a_drop_and_rises_by_pct_on_a_rise(database_url: str) -> None:
    """The old CDR-Stats had these inverted: each must fire on its own side only."""
    low = Switch(database_url, "low", "s")
    high = Switch(database_url, "high", "s")
    t0 = NOW - 10 * M
    for sw in (low, high):
        for weeks in (1, 2):
            await sw.store(spread(t0 - weeks * WEEK, 20))  # the same window, 20 calls a week
    await low.store(spread(t0, 5))  # 75 % below the baseline
    await high.store(spread(t0, 40))  # 100 % above it
    async with await connect(database_url) as conn:
        for sw in (low, high):
            for op in ("drops_by_pct", "rises_by_pct"):
                await add_rule(
                    conn,
                    sw.tenant_id,
                    name=op,
                    kind="calls",
                    params={"op": op, "threshold": 50, "weeks": 2},
                )
        assert await run(conn, t0 + 5 * M, low.tenant_id) == [("drops_by_pct", "tenant", "opened")]
        assert await run(conn, t0 + 5 * M, high.tenant_id) == [("rises_by_pct", "tenant", "opened")]
        (drop,) = await alert_rows(conn, low.tenant_id)
        (rise,) = await alert_rows(conn, high.tenant_id)
    assert drop["detail"]["baseline"] == 20.0 and drop["detail"]["change_pct"] == 75.0
    assert rise["detail"]["baseline"] == 20.0 and rise["detail"]["change_pct"] == 100.0
    assert "down 75.0 % from 20.0" in drop["title"]


async def test_baseline_counts_calls_ended_by_the_same_moment_and_silent_switches(
    database_url: str,
) -> None:
    """Calls still in progress now have no CDR yet: last week's calls that had not ended at
    the same moment are not in the baseline either (no false drop). A switch without any call
    is a value of 0 for a 'below' rule per switch."""
    sw = Switch(database_url, "acme", "sw1")
    Switch(database_url, "acme", "quiet")
    t0 = NOW - 10 * M
    ev = t0 + 5 * M
    await sw.store(spread(t0 - WEEK, 10, billsec=30))  # ended well before the moment
    await sw.store(spread(t0 - WEEK, 10, billsec=3600))  # still in progress at the moment
    await sw.store(spread(t0, 10, billsec=30))  # this week: the long ones have no CDR yet
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            sw.tenant_id,
            name="drop",
            kind="calls",
            params={"op": "drops_by_pct", "threshold": 25, "weeks": 1},
        )
        await add_rule(
            conn,
            sw.tenant_id,
            name="silent",
            kind="calls",
            params={"op": "below", "threshold": 1, "per": "switch"},
        )
        assert await run(conn, ev) == [("silent", "switch=quiet", "opened")]


async def test_asr_drop_against_previous_weeks_and_below_fires_only_below(
    database_url: str,
) -> None:
    sw = Switch(database_url)
    t0 = NOW - 10 * M
    await sw.store(mixed(t0 - WEEK, 20, 16))  # baseline ASR 80 %
    await sw.store(mixed(t0, 20, 8))  # now 40 %: a 50 % drop
    async with await connect(database_url) as conn:
        tid = sw.tenant_id
        await add_rule(
            conn,
            tid,
            name="asr drop",
            kind="asr",
            params={"op": "drops_by_pct", "threshold": 30, "weeks": 1},
        )
        await add_rule(
            conn,
            tid,
            name="asr rise",
            kind="asr",
            params={"op": "rises_by_pct", "threshold": 30, "weeks": 1},
        )
        await add_rule(
            conn, tid, name="asr above", kind="asr", params={"op": "above", "threshold": 30}
        )
        await add_rule(
            conn, tid, name="asr below", kind="asr", params={"op": "below", "threshold": 30}
        )
        assert await run(conn, t0 + 5 * M) == [
            ("asr above", "tenant", "opened"),
            ("asr drop", "tenant", "opened"),
        ]


async def test_metric_definitions(database_url: str) -> None:
    """ASR, NER, ACD, ALOC as documented (docs/rules.md, the same as docs/analytics.md)."""
    sw = Switch(database_url)
    t0 = NOW - 10 * M
    cdrs = spread(t0, 10, billsec=30, ring=5)  # answered: duration 35
    cdrs += spread(t0, 5, disposition=Disposition.BUSY, ring=5)  # duration 5, NER ok
    cdrs += spread(t0, 5, disposition=Disposition.FAILED, ring=5)  # cause 34: not NER ok
    await sw.store(cdrs)
    async with await connect(database_url) as conn:
        for kind in ("asr", "ner", "acd", "aloc", "calls"):
            await add_rule(
                conn, sw.tenant_id, name=kind, kind=kind, params={"op": "above", "threshold": 0}
            )
        await run(conn, t0 + 5 * M)
        values = {r["rule"]: r["detail"]["value"] for r in await alert_rows(conn, sw.tenant_id)}
    assert values == {"asr": 50.0, "ner": 75.0, "acd": 30.0, "aloc": 20.0, "calls": 20.0}


async def test_concurrent_calls(database_url: str) -> None:
    sw = Switch(database_url)
    t0 = NOW - 10 * M
    # 5 calls of 3 minutes started within a minute: 5 in progress at once.
    await sw.store(spread(t0, 5, span_s=50, billsec=180))
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            sw.tenant_id,
            name="conc",
            kind="concurrent",
            params={"op": "above", "threshold": 3, "per": "switch"},
        )
        await add_rule(
            conn,
            sw.tenant_id,
            name="conc hi",
            kind="concurrent",
            params={"op": "above", "threshold": 5},
        )
        assert await run(conn, t0 + 5 * M) == [("conc", "switch=sw1", "opened")]
        (row,) = await alert_rows(conn, sw.tenant_id)
        assert row["detail"]["value"] == 5.0
        # Calls in progress reported live by the switch count before their CDRs exist.
        minute = (t0 + 3 * M).replace(second=0)
        await conn.execute(
            "INSERT INTO live_count_minute (tenant_id, switch_id, minute, calls_max)"
            " VALUES (%s, %s, %s, 7)",
            (sw.tenant_id, sw.agent.switch_id, minute),
        )
        assert await run(conn, t0 + 5 * M) == [("conc hi", "tenant", "opened")]
        assert {r["rule"]: r["detail"]["value"] for r in await alert_rows(conn, sw.tenant_id)} == {
            "conc": 7.0,
            "conc hi": 7.0,
        }


async def test_fraud_kinds_fire_once_and_lists_exempt(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    t0 = NOW - 10 * M
    # Seen two days ago and an hour ago: France and the UK are not new.
    await sw.store(spread(t0 - timedelta(days=2), 2, callee="+33612345678", src_ip="192.0.2.1"))
    await sw.store(spread(t0 - 60 * M, 1, callee="+442012345678", src_ip="192.0.2.1"))
    window = [
        *spread(t0, 3, callee="+88213456789", src_ip="203.0.113.1"),  # risk (default list)
        *spread(t0, 3, callee="+88351234567", src_ip="203.0.113.2"),  # whitelisted
        *spread(t0, 2, callee="+442071234567", src_ip="203.0.113.3"),  # blacklisted
        *spread(t0, 2, callee="+442077777777", src_ip="203.0.113.4"),  # blacklisted, whitelisted
        *spread(t0, 25, disposition=Disposition.FAILED, sip_code=404, src_ip="203.0.113.5"),
        *spread(t0, 19, disposition=Disposition.FAILED, sip_code=404, src_ip="203.0.113.6"),
        *spread(t0, 12, billsec=2, src_ip="203.0.113.7"),  # short calls
        *spread(t0, 12, billsec=20, src_ip="203.0.113.8"),  # not short
        *spread(t0, 1, callee="+33612345679", src_ip="192.0.2.1"),  # FR: known
        *spread(t0, 1, callee="+4915112345678", src_ip="192.0.2.1"),  # DE: new
    ]
    await sw.store(window)
    async with await connect(database_url) as conn:
        await rules.set_dest_list(conn, tid, "blacklist", ["+4420"], "tester")
        await rules.set_dest_list(conn, tid, "whitelist", ["+883", "+442077"], "tester")
        await add_rule(conn, tid, name="irsf", kind="risk_destination", params={"count": 2})
        await add_rule(conn, tid, name="black", kind="blacklist")
        await add_rule(conn, tid, name="scan", kind="scanner", params={"count": 20})
        await add_rule(
            conn, tid, name="short", kind="short_calls", params={"count": 10, "max_billsec": 6}
        )
        await add_rule(conn, tid, name="new", kind="new_country", params={"lookback_days": 30})
        expected = [
            ("black", "switch=sw1,ip=203.0.113.3", "opened"),
            ("irsf", "switch=sw1,ip=203.0.113.1", "opened"),
            ("new", "country=DE", "opened"),
            ("scan", "switch=sw1,ip=203.0.113.5", "opened"),
            ("short", "switch=sw1,ip=203.0.113.7", "opened"),
        ]
        assert await run(conn, t0 + 5 * M) == expected
        rows = {r["rule"]: r for r in await alert_rows(conn, tid)}
        assert await run(conn, t0 + 5 * M + M / 2) == []  # still holding: same alerts
        assert rows["scan"]["detail"]["value"] == 25
        assert rows["scan"]["detail"]["source_ip"] == "203.0.113.5"
        assert rows["irsf"]["detail"]["callees"][0] == "+88213456789"
        assert rows["new"]["detail"]["countries"] == ["DE"]
        # Absent for a whole window after the last time it held: resolved, once.
        changes = await run(conn, t0 + 11 * M)
        assert sorted(c for _, _, c in changes) == ["resolved"] * 5
        assert await run(conn, t0 + 12 * M) == []
        # The DE call is now in the past: DE is no longer new, nothing reopens.
        assert await run(conn, t0 + 13 * M) == []


async def test_snooze_ack_resolve_and_notify(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    notes: list[dict[str, Any]] = []
    async with await connect(database_url) as listener, await connect(database_url) as conn:
        await listener.execute("LISTEN cdrstats_alert")

        async def drain() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            gen = listener.notifies(timeout=0.3)
            async for n in gen:
                got.append(json.loads(n.payload))
            notes.extend(got)
            return got

        await add_rule(conn, tid, name="scan", kind="scanner", params={"count": 5}, window_s=600)
        t0 = NOW - 2 * M
        await sw.store(spread(t0, 6, span_s=60, disposition=Disposition.FAILED))
        assert await run(conn, t0 + 2 * M) == [("scan", "switch=sw1,ip=203.0.113.9", "opened")]
        (opened,) = await drain()
        (row,) = await alert_rows(conn, tid)
        assert opened == {
            "tenant_id": tid,
            "alert_id": row["id"],
            "state": "open",
            "title": row["title"],
            "severity": "warning",
        }
        snoozed = await alerts.snooze(conn, tid, row["id"], 3600, "alice")
        assert snoozed["state"] == "snoozed"
        assert [n["state"] for n in await drain()] == ["snoozed"]
        # Still holding while snoozed: no reopening, no notification.
        await sw.store(spread(t0 + 3 * M, 6, span_s=60, disposition=Disposition.FAILED))
        assert await run(conn, t0 + 5 * M) == []
        assert await drain() == []
        # After the snooze, still holding: open again, to be notified again.
        late = t0 + 70 * M
        await sw.store(spread(late - 3 * M, 6, span_s=60, disposition=Disposition.FAILED))
        assert await run(conn, late) == [("scan", "switch=sw1,ip=203.0.113.9", "reopened")]
        again = await alerts.get_alert(conn, tid, row["id"])
        assert again is not None and again["state"] == "open"
        assert again["notify_state"] == "pending"
        assert [n["state"] for n in await drain()] == ["open"]
        acked = await alerts.acknowledge(conn, tid, row["id"], "bob")
        assert acked["state"] == "acknowledged" and acked["acknowledged_by"] == "bob"
        with pytest.raises(alerts.AlertError, match="is acknowledged: it cannot be acknowledged"):
            await alerts.acknowledge(conn, tid, row["id"], "bob")
        done = await alerts.resolve(conn, tid, row["id"], "bob")
        assert done["state"] == "resolved" and done["resolved_by"] == "bob"
        with pytest.raises(alerts.AlertError, match="is resolved"):
            await alerts.snooze(conn, tid, row["id"], 60, "bob")
        with pytest.raises(alerts.AlertNotFound):
            await alerts.resolve(conn, tid + 1000, row["id"], "bob")  # another tenant
        with pytest.raises(alerts.AlertError, match="seconds"):
            await alerts.snooze(conn, tid, row["id"], 0, "bob")
        assert [n["state"] for n in await drain()] == ["acknowledged", "resolved"]
        # Still holding after a manual resolve: a new episode, a new alert.
        assert await run(conn, late + M / 2) == [("scan", "switch=sw1,ip=203.0.113.9", "opened")]
        assert len(await alerts.list_alerts(conn, tid)) == 2
        assert len(await alerts.list_alerts(conn, tid, "active")) == 1
        with pytest.raises(alerts.AlertError, match="state"):
            await alerts.list_alerts(conn, tid, "nope")
        cur = await conn.execute(
            "SELECT username, action FROM audit_log WHERE action LIKE 'alert.%%' ORDER BY id"
        )
        audit = [tuple(r) for r in await cur.fetchall()]
    assert audit == [
        ("rule:scan", "alert.opened"),
        ("alice", "alert.snoozed"),
        ("rule:scan", "alert.reopened"),
        ("bob", "alert.acknowledged"),
        ("bob", "alert.resolved"),
        ("rule:scan", "alert.opened"),
    ]
    assert all(n["tenant_id"] == tid for n in notes)


async def test_block_action_queues_a_command_or_records_the_refusal(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO block_allowlist (tenant_id, network, note)"
            " VALUES (%s, '198.51.100.0/24', 'our SBCs')",
            (tid,),
        )
    t0 = NOW - 5 * M
    await sw.store(spread(t0, 6, disposition=Disposition.FAILED, src_ip="203.0.113.66"))
    await sw.store(spread(t0, 6, disposition=Disposition.FAILED, src_ip="198.51.100.7"))
    async with await connect(database_url) as conn:
        await add_rule(
            conn,
            tid,
            name="scan",
            kind="scanner",
            params={"count": 5},
            action="block_source_ip",
            block_ttl_s=120,
        )
        changes = await evaluator.evaluate(conn, t0 + 4 * M)
        assert sorted(c.change for c in changes) == ["opened", "opened"]
        actions = {c.episode_key: c.action for c in changes}
        ok = actions["switch=sw1,ip=203.0.113.66"]
        refused = actions["switch=sw1,ip=198.51.100.7"]
        assert ok is not None and refused is not None
        assert ok["verb"] == "block_ip" and "error" not in ok
        assert "in the allowlist (198.51.100.0/24, our SBCs)" in refused["error"]
        cur = await conn.execute("SELECT id::text, verb, args, issued_by, status FROM command")
        (cmd,) = await cur.fetchall()
        assert cmd == (
            ok["command_id"],
            "block_ip",
            {"ip": "203.0.113.66", "ttl": 120},
            "rule:scan",
            "pending",
        )
        rows = {r["key"]: r for r in await alert_rows(conn, tid)}
        assert rows["switch=sw1,ip=198.51.100.7"]["action"]["error"] == refused["error"]
        assert rows["switch=sw1,ip=203.0.113.66"]["action"]["command_id"] == ok["command_id"]
        cur = await conn.execute(
            "SELECT username, action, target FROM audit_log"
            " WHERE action IN ('command.block_ip', 'alert.block_refused') ORDER BY id"
        )
        assert sorted(tuple(r) for r in await cur.fetchall()) == [
            ("rule:scan", "alert.block_refused", "198.51.100.7"),
            ("rule:scan", "command.block_ip", "203.0.113.66"),
        ]


async def test_disabled_and_deleted_rules(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    t0 = NOW - 5 * M
    await sw.store(spread(t0, 6, disposition=Disposition.FAILED))
    async with await connect(database_url) as conn:
        rule = await add_rule(conn, tid, name="scan", kind="scanner", params={"count": 5})
        assert len(await run(conn, t0 + 4 * M)) == 1
        await rules.update_rule(conn, tid, rule["id"], {"enabled": False}, "alice")
        assert [r["state"] for r in await alert_rows(conn, tid)] == ["resolved"]
        assert await run(conn, t0 + 4 * M) == []  # disabled: nothing evaluated
        await rules.update_rule(conn, tid, rule["id"], {"enabled": True}, "alice")
        assert len(await run(conn, t0 + 4 * M)) == 1
        assert await rules.delete_rule(conn, tid, rule["id"], "alice")
        rows = await alert_rows(conn, tid)
        assert [(r["rule"], r["state"]) for r in rows] == [(None, "resolved"), (None, "resolved")]


async def test_evaluation_needs_autocommit_and_one_broken_rule_does_not_stop_the_others(
    database_url: str,
) -> None:
    sw = Switch(database_url)
    await sw.store(spread(NOW - 5 * M, 6))
    async with await psycopg.AsyncConnection.connect(database_url) as plain:
        with pytest.raises(ValueError, match="autocommit"):
            await evaluator.evaluate(plain, NOW)
    async with await connect(database_url) as conn:
        await add_rule(
            conn, sw.tenant_id, name="a", kind="calls", params={"op": "above", "threshold": 1}
        )
        # A rule written behind the API's back with a broken params document.
        await conn.execute(
            "INSERT INTO rule (tenant_id, name, kind, params, window_s)"
            " VALUES (%s, 'broken', 'asr', '{\"op\": \"above\"}', 300)",
            (sw.tenant_id,),
        )
        assert await run(conn, NOW) == [("a", "tenant", "opened")]


async def test_background_evaluator_runs_on_ingest_and_one_process_at_a_time(
    database_url: str,
) -> None:
    sw = Switch(database_url)
    async with await connect(database_url) as conn:
        await add_rule(conn, sw.tenant_id, name="scan", kind="scanner", params={"count": 3})
    one = evaluator.Evaluator(database_url, tick_s=60, min_interval_s=0.2)
    async with await connect(database_url) as holder:
        # Another process holds the lock: this one does not evaluate.
        await holder.execute("SELECT pg_advisory_lock(%s, %s)", evaluator.EVALUATOR_LOCK)
        async with await connect(database_url) as conn:
            assert await one.run_once(conn) is None
        await holder.execute("SELECT pg_advisory_unlock(%s, %s)", evaluator.EVALUATOR_LOCK)
    one.start()
    try:
        assert await one.wait_listening(30)
        # The background evaluator judges at the wall clock (not at the module's NOW).
        now = datetime.now(UTC)
        await sw.store(spread(now - 2 * M, 4, span_s=30, disposition=Disposition.FAILED))
        async with await connect(database_url) as conn:
            for _ in range(100):  # woken by NOTIFY cdr_ingest, well before the 60 s tick
                if await alert_rows(conn, sw.tenant_id):
                    break
                await asyncio.sleep(0.1)
            assert len(await alert_rows(conn, sw.tenant_id)) == 1
    finally:
        await one.close()
