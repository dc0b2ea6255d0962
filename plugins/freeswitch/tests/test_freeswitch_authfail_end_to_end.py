"""A REGISTER flood end to end: `sofia::register_failure` events from the Event Socket peer ->
a real `cdrstats-agent` process (freeswitch plugin, live channel) -> a real collector ->
`auth_failure_minute` -> the collector's background evaluator fires a `scanner` rule that
has no failed call to go on, once, and queues the block of the flooding address."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdrstats_collector import rules
from freeswitch_testkit import EslPeer
from test_freeswitch_authfail import register_failure
from test_freeswitch_end_to_end import enrolled_agent

from tests.fix_db import CollectorServer

SCANNER = "203.0.113.77"


def wait(what: str, check: Any, agent: Any, collector: CollectorServer, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out waiting for {what}\nagent:\n{agent.log_tail()}\n"
                f"collector:\n{collector.log_tail()}"
            )
        time.sleep(0.2)


def test_register_flood_opens_one_scanner_alert_and_a_block(
    tmp_path: Path, collector_server: CollectorServer
) -> None:
    db = collector_server.database_url
    peer = EslPeer(password="s3cret")
    csv_dir = tmp_path / "cdr-csv"
    csv_dir.mkdir()
    agent = enrolled_agent(
        tmp_path,
        collector_server,
        f'[[source]]\nname = "fs"\nplugin = "freeswitch"\nstore = "csv"\npath = "{csv_dir}"\n'
        f'[source.esl]\nport = {peer.port}\npassword = "s3cret"\nsnapshot_s = 1.0\n',
    )
    with psycopg.connect(db, autocommit=True) as conn:
        (tid,) = conn.execute("SELECT id FROM tenant WHERE name = 'acme'").fetchone() or (0,)

    async def add_rule() -> None:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            doc = {
                "name": "register flood",
                "kind": "scanner",
                "window_s": 300,
                "params": {"count": 25},
                "action": "block_source_ip",
                "block_ttl_s": 900,
            }
            await rules.create_rule(conn, tid, doc, "tester")

    asyncio.run(add_rule())
    agent.start()
    try:
        wait("the ESL subscription", lambda: peer.subscribed() >= 1, agent, collector_server)
        now_us = int(time.time() * 1_000_000)
        for n in range(40):
            headers = register_failure(SCANNER, f"{1000 + n}", port=str(40000 + n))
            headers["Event-Date-Timestamp"] = str(now_us + n * 1000)
            peer.send_event(headers)
        typo = register_failure("192.0.2.50", "2000")  # a neighbour's typo: one failure
        typo["Event-Date-Timestamp"] = str(now_us)
        peer.send_event(typo)

        def stored() -> Any:
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT sum(failures) FILTER (WHERE src_ip = %s), sum(failures)"
                    " FROM auth_failure_minute",
                    (SCANNER,),
                ).fetchone()
            return row == (40, 41)

        wait("the 40 failures in PostgreSQL", stored, agent, collector_server)

        def alerts() -> list[tuple[Any, ...]]:
            with psycopg.connect(db) as conn:
                return conn.execute(
                    "SELECT a.episode_key, a.state, a.detail, a.action FROM alert a"
                    " WHERE a.tenant_id = %s",
                    (tid,),
                ).fetchall()

        found = wait("the scanner alert with its block", alerts, agent, collector_server)
        time.sleep(1.5)  # later evaluations must not open a second alert
        ((key, state, detail, action),) = alerts()
        assert (key, state) == (f"switch=fs-paris,ip={SCANNER}", "open"), found
        assert (detail["failed_calls"], detail["failed_registrations"]) == (0, 40)
        assert detail["usernames"][:3] == ["1000", "1001", "1002"]
        assert action["verb"] == "block_ip" and action["ip"] == SCANNER and "command_id" in action
        with psycopg.connect(db) as conn:
            cmds = conn.execute("SELECT verb, args, issued_by FROM command").fetchall()
        assert cmds == [("block_ip", {"ip": SCANNER, "ttl": 900}, "rule:register flood")]
    finally:
        agent.stop()
        peer.stop()
