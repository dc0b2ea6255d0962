"""On a real Kamailio 5.6 with MariaDB and sipp: calls -> agent -> collector, live, bans.

Every test makes its own calls to callees with a unique suffix, so tests share one rig
(session fixture `kamailio_rig`) without reading each other's calls as theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdrstats_agent.model import Disposition
from cdrstats_agent.plugin import LiveEvent
from cdrstats_agent.testing import live_event_problems
from cdrstats_kamailio.plugin import KamailioLiveSource, KamailioPlugin
from kamailio_testkit import (
    Rig,
    UacProcess,
    UacRun,
    collect,
    eventually,
    kamailio_source_toml,
    make_agent,
    run_uac,
    spool_checkpoint,
)
from psycopg.rows import dict_row

from tests.fix_agent import stored_keys, wait_for
from tests.fix_db import CollectorServer

_suffix = itertools.count(int(time.time()) % 100000 * 10)


def unique() -> str:
    return f"{os.getpid() % 1000}{next(_suffix)}"


def finished(run: UacRun | UacProcess) -> UacRun:
    if isinstance(run, UacProcess):
        run = run.wait()
    assert run.returncode == 0, f"sipp failed ({run.returncode}):\n{run.errors}\n{run.output}"
    return run


def wait_uac(proc: UacRun | UacProcess) -> None:
    finished(proc)


def live_source(name: str, options: dict[str, Any]) -> KamailioLiveSource:
    source = KamailioPlugin().create_source(name, options)
    assert isinstance(source, KamailioLiveSource), "rpc_url makes a live source"
    return source


def calls_in_kamailio(rig: Rig) -> set[str]:
    """Natural keys of every call Kamailio accounted (answered INVITEs + missed calls)."""
    rows = rig.db.query(
        "SELECT callid, from_tag FROM acc WHERE method = 'INVITE' AND sip_code LIKE '2%%'"
        " UNION ALL SELECT callid, from_tag FROM missed_calls"
    )
    return {f"{r['callid']};{r['from_tag']}" for r in rows}


def stored_rows(database_url: str, agent_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT key, caller, callee, disposition, sip_code, duration, billsec, hangup_cause,"
            " host(src_ip) AS src_ip, user_agent, start_time, answer_time, end_time, extra"
            " FROM cdr WHERE agent_id = %s",
            (agent_id,),
        ).fetchall()


def test_calls_of_each_kind_become_exactly_the_right_cdrs(
    kamailio_rig: Rig, collector_server: CollectorServer, tmp_path: Path
) -> None:
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    kinds = {  # callee -> (uac scenario, disposition, sip code, duration)
        f"answer{u}": ("hangup", Disposition.ANSWERED, 200, 2),
        f"hangup{u}": ("wait_bye", Disposition.ANSWERED, 200, 2),
        f"busy{u}": ("reject:486", Disposition.BUSY, 486, 0),
        f"fail{u}": ("reject:500", Disposition.FAILED, 500, 0),
        f"ring{u}": ("cancel", Disposition.CANCELLED, 487, 0),
    }
    agent = make_agent(tmp_path / "agent", collector_server.url, kamailio_source_toml(rig.db.url))
    agent.enroll(collector_server.url, collector_server.create_token("acme", "kam1"))
    agent.start()
    try:
        procs = {
            callee: run_uac(rig.workdir, k, kind, callee, hold_ms=2000, wait=False)
            for callee, (kind, *_) in kinds.items()
        }
        for proc in procs.values():
            wait_uac(proc)
        expected = calls_in_kamailio(rig)
        wait_for(
            lambda: (
                len(stored_keys(collector_server.database_url, agent.agent_id)) >= len(expected)
            ),
            timeout=60,
            what=f"{len(expected)} CDRs in the collector",
            diagnostics=agent.log_tail,
        )
        wait_for(
            lambda: (view := agent.spool()) is not None and view.pending == 0,
            timeout=30,
            what="the agent's spool to drain",
        )
        keys = stored_keys(collector_server.database_url, agent.agent_id)
        assert sorted(keys) == sorted(expected), "one CDR per accounted call, no more"
        rows = {r["callee"]: r for r in stored_rows(collector_server.database_url, agent.agent_id)}
        for callee, (_, disposition, code, duration) in kinds.items():
            row = rows[callee]
            assert row["caller"] == "1001"
            assert row["disposition"] == disposition, callee
            assert row["sip_code"] == code, callee
            assert abs(row["duration"] - duration) <= 1, (callee, row["duration"])
            assert row["billsec"] == (row["duration"] if code == 200 else 0)
            assert row["src_ip"] == "127.0.0.1" and row["user_agent"] == "cdrstats-sipp"
            if code == 200:
                assert row["answer_time"] is not None and row["end_time"] > row["answer_time"]
        assert rows[f"answer{u}"]["extra"]["hangup_by"] == "caller"
        assert rows[f"hangup{u}"]["extra"]["hangup_by"] == "callee"
        assert agent.spool().rejected == 0
    finally:
        agent.stop()


def test_agent_killed_mid_load_loses_and_doubles_nothing(
    kamailio_rig: Rig, collector_server: CollectorServer, tmp_path: Path
) -> None:
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    agent = make_agent(tmp_path / "agent", collector_server.url, kamailio_source_toml(rig.db.url))
    agent.enroll(collector_server.url, collector_server.create_token("acme", "kam2"))
    agent.start()
    wait_for(lambda: bool(agent.events("acc_reading")), timeout=60, what="the agent reading",
             diagnostics=agent.log_tail)  # fmt: skip
    load = run_uac(
        rig.workdir, k, "hangup", f"answer{u}", calls=60, rate=20, limit=60, hold_ms=2500,
        wait=False,
    )  # fmt: skip
    busy = run_uac(rig.workdir, k, "reject:486", f"busy{u}", calls=10, rate=5, wait=False)
    try:
        open_at_kill: list[Any] = []

        def open_invites_committed() -> bool:
            doc = spool_checkpoint(agent.state_dir)
            if doc and doc["open"]:
                open_at_kill[:] = doc["open"]
                return True
            return False

        def why() -> str:
            assert isinstance(load, UacProcess)
            acc = rig.db.query("SELECT count(*) AS n, max(id) AS top FROM acc")
            return (
                f"acc rows {acc}, checkpoint {spool_checkpoint(agent.state_dir)},"
                f" sipp exit {load.process.poll()}:\n{load.log_path.read_text()[-1500:]}\n"
                f"{agent.log_tail()}"
            )

        wait_for(open_invites_committed, timeout=30, what="open INVITEs in a committed checkpoint",
                 diagnostics=why, every=0.02)  # fmt: skip
        agent.kill()  # SIGKILL while calls are up: their BYEs come while the agent is down
        time.sleep(1.0)
        agent.start()
        wait_uac(load)
        wait_uac(busy)
    finally:
        for proc in (load, busy):
            assert isinstance(proc, UacProcess)
            proc.kill()
    try:
        expected = calls_in_kamailio(rig)
        open_keys = {f"{o[0]};{o[1]}" for o in open_at_kill}
        assert open_keys <= expected
        wait_for(
            lambda: (
                len(stored_keys(collector_server.database_url, agent.agent_id)) >= len(expected)
            ),
            timeout=60,
            what=f"{len(expected)} CDRs in the collector",
            diagnostics=agent.log_tail,
        )
        wait_for(lambda: agent.spool().pending == 0, timeout=30, what="spool drained")
        keys = stored_keys(collector_server.database_url, agent.agent_id)
        assert len(keys) == len(set(keys)) == len(expected)
        assert set(keys) == expected
        mine = [r for r in stored_rows(collector_server.database_url, agent.agent_id)
                if r["callee"] in (f"answer{u}", f"busy{u}")]  # fmt: skip
        assert sum(r["callee"] == f"answer{u}" for r in mine) == 60
        assert sum(r["callee"] == f"busy{u}" for r in mine) == 10
        assert all(2 <= r["duration"] <= 4 for r in mine if r["callee"] == f"answer{u}")
        assert agent.kills == 1 and agent.spool().rejected == 0
    finally:
        agent.stop()


async def test_live_dialogs_appear_while_calls_are_up_and_disappear_after(
    kamailio_rig: Rig,
) -> None:
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    source = live_source(
        "kam-live",
        {"db_url": rig.db.url, "rpc_url": k.rpc_url, "live_interval_s": 0.1,
         "snapshot_interval_s": 0.5},
    )  # fmt: skip
    events: list[LiveEvent] = []

    async def consume() -> None:
        async for event in source.live():
            events.append(event)

    task = asyncio.create_task(consume())
    try:
        await eventually(lambda: any(e.kind == "snapshot" for e in events), 20, lambda: events)
        callee = f"answer{u}"
        proc = await asyncio.to_thread(
            run_uac, rig.workdir, k, "hangup", callee, calls=3, rate=10, hold_ms=3000, wait=False
        )

        def live_calls() -> dict[str, dict[str, Any]]:
            state: dict[str, dict[str, Any]] = {}
            for e in events:
                if e.kind == "snapshot":
                    state = {c["call_id"]: dict(c) for c in e.calls}
                elif e.kind in ("started", "answered"):
                    state[e.call_id] = {**state.get(e.call_id, {}), **e.data}
                elif e.kind == "ended":
                    state.pop(e.call_id, None)
            return {cid: c for cid, c in state.items() if c.get("callee") == callee}

        deadline = time.monotonic() + 20
        while not (
            len(up := live_calls()) == 3 and all(c["state"] == "answered" for c in up.values())
        ):
            assert time.monotonic() < deadline, f"live calls: {live_calls()}; events {events[-5:]}"
            await asyncio.sleep(0.05)
        assert all(c["caller"] == "1001" and c["src_ip"] == "127.0.0.1" for c in up.values())
        assert all(c["answer"] >= c["start"] > 0 for c in up.values())
        await asyncio.to_thread(wait_uac, proc)
        await eventually(lambda: not live_calls(), 20, lambda: f"still live: {live_calls()}")
        seen = len(events)
        ended = {e.call_id for e in events if e.kind == "ended"}
        assert set(up) <= ended
        accounted = calls_in_kamailio(rig)
        assert set(up) <= accounted, "live call ids are the CDR natural keys"
        await eventually(  # the next periodic snapshot comes, without them
            lambda: any(e.kind == "snapshot" for e in events[seen:]), 20, lambda: ""
        )
        assert events[0].kind == "snapshot"
        assert [p for e in events for p in live_event_problems(e)] == []
        last = [e for e in events if e.kind == "snapshot"][-1]
        assert not set(up) & {c["call_id"] for c in last.calls}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.close()


async def test_block_ip_makes_kamailio_answer_403_and_unblock_lets_it_call(
    kamailio_rig: Rig,
) -> None:
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    source = live_source(
        "kam-ban", {"db_url": rig.db.url, "rpc_url": k.rpc_url, "ban_table": "ipban"}
    )
    actions = source.actions()
    try:
        result = await actions["block_ip"]({"ip": "127.0.0.2", "ttl": 600})
        assert result == "blocked 127.0.0.2 in kamailio htable ipban for 600 s"
        dump = await asyncio.to_thread(k.rpc, "htable.dump", "ipban")
        assert [s["name"] for e in dump for s in e["slot"]] == ["127.0.0.2"]
        rejected = await asyncio.to_thread(
            run_uac, rig.workdir, k, "reject:403", f"answer{u}", ip="127.0.0.2"
        )
        finished(rejected)
        allowed = await asyncio.to_thread(  # other sources still call
            run_uac, rig.workdir, k, "hangup", f"answer{u}", hold_ms=100
        )
        finished(allowed)

        result = await actions["unblock_ip"]({"ip": "127.0.0.2"})
        assert result == "unblocked 127.0.0.2 in kamailio htable ipban"
        again = await asyncio.to_thread(
            run_uac, rig.workdir, k, "hangup", f"answer{u}", ip="127.0.0.2", hold_ms=100
        )
        finished(again)
        twice = await actions["unblock_ip"]({"ip": "127.0.0.2"})
        assert twice == "127.0.0.2 was not blocked in kamailio htable ipban"

        # the ttl is the entry's expiry
        await actions["block_ip"]({"ip": "127.0.0.2", "ttl": 1})
        await asyncio.sleep(2.2)
        after_ttl = await asyncio.to_thread(
            run_uac, rig.workdir, k, "hangup", f"answer{u}", ip="127.0.0.2", hold_ms=100
        )
        finished(after_ttl)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(k.rpc, "htable.delete", "ipban", "127.0.0.2")
        await source.close()


async def test_block_ip_refuses_bad_input_and_changes_nothing(kamailio_rig: Rig) -> None:
    k = kamailio_rig.kamailio
    source = live_source("kam-ban", {"db_url": kamailio_rig.db.url, "rpc_url": k.rpc_url})
    actions = source.actions()
    try:
        for args, message in (
            ({"ip": "127.0.0.2; rm -rf /", "ttl": 60}, "is not an IP address"),
            ({"ip": "300.1.1.1", "ttl": 60}, "is not an IP address"),
            ({"ip": 7, "ttl": 60}, "ip must be a string"),
            ({"ip": "127.0.0.2", "ttl": 0}, "ttl must be a whole number"),
            ({"ip": "127.0.0.2", "ttl": "60"}, "ttl must be a whole number"),
            ({"ip": "127.0.0.2"}, "ttl must be a whole number"),
        ):
            with pytest.raises(ValueError, match=message):
                await actions["block_ip"](args)
        assert await asyncio.to_thread(k.rpc, "htable.dump", "ipban") == []
        wrong = live_source(
            "kam-ban", {"db_url": kamailio_rig.db.url, "rpc_url": k.rpc_url, "ban_table": "nope"}
        )
        with pytest.raises(Exception, match="No such htable"):
            await wrong.actions()["block_ip"]({"ip": "127.0.0.2", "ttl": 60})
        await wrong.close()
    finally:
        await source.close()


async def test_acc_cdrs_and_failed_transactions_from_a_real_kamailio(kamailio_rig: Rig) -> None:
    """The dialog-based acc_cdrs table, and failed calls taken from acc instead of missed_calls."""
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    kinds = {
        f"answer{u}": ("hangup", Disposition.ANSWERED, 200, 1),
        f"hangup{u}": ("wait_bye", Disposition.ANSWERED, 200, 2),
        f"busy{u}": ("reject:486", Disposition.BUSY, 486, 0),
        f"ring{u}": ("cancel", Disposition.CANCELLED, 487, 0),
    }
    procs = [
        await asyncio.to_thread(run_uac, rig.workdir, k, kind, callee, hold_ms=1000, wait=False)
        for callee, (kind, *_) in kinds.items()
    ]
    for proc in procs:
        await asyncio.to_thread(wait_uac, proc)

    def mine(cdrs: list[Any]) -> dict[str, Any]:
        return {c.callee: c for c in cdrs if c.callee in kinds}

    for options in (
        {"records": "acc_cdrs"},
        {"records": "acc", "failed_from": "acc"},
    ):
        source = KamailioPlugin().create_source(
            "kam", {"db_url": rig.db.url, "timezone": "UTC", "poll_s": 0.05, **options}
        )
        cdrs, rejected, _ = await collect(source, lambda c: len(mine(c)) == len(kinds))
        got = mine(cdrs)
        assert rejected == [], options
        for callee, (_, disposition, code, duration) in kinds.items():
            cdr = got[callee]
            assert (cdr.disposition, cdr.sip_code) == (disposition, code), (options, callee)
            assert abs(cdr.duration - duration) <= 1, (options, callee, cdr.duration)
            assert cdr.caller == "1001" and cdr.src_ip == "127.0.0.1"
            assert cdr.key == f"{cdr.call_group};{cdr.key.split(';')[1]}"
        await source.close()


def test_live_calls_reach_the_collector_through_the_agent_and_leave_it(
    kamailio_rig: Rig, collector_server: CollectorServer, tmp_path: Path
) -> None:
    rig, k = kamailio_rig, kamailio_rig.kamailio
    u = unique()
    callee = f"answer{u}"
    toml = kamailio_source_toml(rig.db.url, rpc_url=k.rpc_url, live_interval_s=0.1)
    agent = make_agent(tmp_path / "agent", collector_server.url, toml)
    agent.enroll(collector_server.url, collector_server.create_token("acme", "kam-live"))
    agent.start()
    wait_for(lambda: bool(agent.events("live_synced")), timeout=60, what="the agent's live()",
             diagnostics=agent.log_tail)  # fmt: skip

    def live_rows() -> list[dict[str, Any]]:
        with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            return cur.execute(
                "SELECT call_id, state, caller, callee, host(src_ip) AS src_ip, answered_at"
                " FROM live_call WHERE agent_id = %s AND callee = %s",
                (agent.agent_id, callee),
            ).fetchall()

    try:
        proc = run_uac(rig.workdir, k, "hangup", callee, calls=3, rate=10, hold_ms=4000, wait=False)
        assert isinstance(proc, UacProcess)
        wait_for(
            lambda: len(rows := live_rows()) == 3 and all(r["state"] == "answered" for r in rows),
            timeout=30,
            what="3 answered live calls in the collector",
            diagnostics=lambda: (
                f"collector: {live_rows()}\nkamailio: {k.rpc('dlg.stats_active')}\n"
                f"sipp: {proc.process.poll()} {proc.log_path.read_text()[-800:]}\n"
                + "\n".join(
                    line for line in agent.log_text().splitlines() if "httpcore" not in line
                )[-3000:]
            ),
        )
        rows = live_rows()
        assert all(r["caller"] == "1001" and r["src_ip"] == "127.0.0.1" for r in rows)
        wait_uac(proc)
        wait_for(lambda: live_rows() == [], timeout=30, what="the live calls to leave")
        keys = {r["call_id"] for r in rows}
        wait_for(
            lambda: keys <= set(stored_keys(collector_server.database_url, agent.agent_id)),
            timeout=30,
            what="their CDRs, under the same ids",
            diagnostics=agent.log_tail,
        )
    finally:
        agent.stop()
