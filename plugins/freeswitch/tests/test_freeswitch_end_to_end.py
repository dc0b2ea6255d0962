"""Every FreeSWITCH store -> a real `cdrstats-agent` process -> the collector -> PostgreSQL.

One agent reads four sources at once (mod_cdr_csv files, a mod_cdr_sqlite file, a
mod_cdr_pg_csv table, mod_json_cdr posts); every CDR must be stored exactly once with the
fields the switch wrote, also across an agent restart and a re-posted JSON CDR.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from freeswitch_testkit import TEMPLATES, append_lines, call_variables, render
from psycopg.rows import dict_row
from test_freeswitch_pg import FIELDS as PG_FIELDS
from test_freeswitch_sqlite import COLUMNS as SQLITE_COLUMNS
from test_freeswitch_sqlite import reference_db

from tests.fix_agent import AgentProcess
from tests.fix_db import CollectorServer, create_database, drop_database, free_port, with_dbname

BIN = Path(sys.executable).parent
BASE = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
RANGES = {
    "csv": range(0, 40),
    "sqlite": range(100, 140),
    "pg": range(200, 240),
    "http": range(300, 306),
}


def variables(n: int) -> dict[str, str]:
    v = call_variables(n, base=BASE, answered=n % 4 != 0)
    v["sip_received_ip"] = f"192.0.2.{n % 250 + 1}"
    v["sip_user_agent"] = "Yealink SIP-T46S"
    return v


def enrolled_agent(workdir: Path, collector: CollectorServer, sources: str) -> AgentProcess:
    """An agent of switch acme/fs-paris with these `[[source]]` tables, enrolled, not started."""
    agent = AgentProcess(workdir / "agent", workdir, collector.url, sources=sources)
    agent.enroll(collector.url, collector.create_token("acme", "fs-paris"))
    return agent


@pytest.fixture
def fs_pg(pg_admin_url: str) -> Iterator[str]:
    name = create_database(pg_admin_url)
    url = with_dbname(pg_admin_url, name)
    from freeswitch_testkit import REFERENCE

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((REFERENCE / "mod_cdr_pg_csv_create.sql").read_text())
    try:
        yield url
    finally:
        drop_database(pg_admin_url, name)


def write_csv(directory: Path, numbers: range) -> None:
    template = TEMPLATES["example"]
    append_lines(directory / "Master.csv", [render(template, variables(n)) for n in numbers])


def write_sqlite(db: Path, numbers: range) -> None:
    conn = sqlite3.connect(db)
    with conn:
        for n in numbers:
            v = {**variables(n), "account_code": variables(n)["accountcode"]}
            conn.execute(
                f"INSERT INTO cdr ({', '.join(SQLITE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(SQLITE_COLUMNS))})",
                [v[c] for c in SQLITE_COLUMNS],
            )
    conn.close()


def write_pg(url: str, numbers: range) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Europe/Paris'")
        for n in numbers:
            v: dict[str, Any] = {**variables(n), "local_ip_v4": "192.0.2.250", "ani": "1000"}
            v["sip_hangup_disposition"] = "send_bye"
            values = [v[f] or None for f in PG_FIELDS]
            conn.execute(
                f"INSERT INTO cdr ({', '.join(PG_FIELDS)}) "
                f"VALUES ({', '.join(['%s'] * len(PG_FIELDS))})",
                values,
            )


def json_cdr(n: int) -> bytes:
    """A mod_json_cdr document with encode-values (the default) and `encode = true`."""
    v = variables(n)
    profile = {k: v.pop(k) for k in ("caller_id_number", "destination_number")}
    doc = {
        "core-uuid": "c0ffee00-0000-0000-0000-000000000000",
        "variables": {k: quote(val, safe="") for k, val in v.items()},
        "callflow": [{"caller_profile": profile}],
    }
    return b"cdr=" + quote(json.dumps(doc), safe="").encode()


def stored(database_url: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT *, host(src_ip) AS src_host FROM cdr").fetchall()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    return by_key


def wait_rows(
    database_url: str, count: int, agent: AgentProcess
) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + 90
    while True:
        rows = stored(database_url)
        if sum(len(r) for r in rows.values()) >= count:
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"{len(rows)} of {count} CDRs stored; agent log:\n{agent.log_tail()}")
        time.sleep(0.2)


def post_all(port: int, numbers: range) -> None:
    with httpx.Client(timeout=30) as client:
        for n in numbers:
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = client.post(
                        f"http://127.0.0.1:{port}/cdr?uuid={variables(n)['uuid']}",
                        content=json_cdr(n),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    if response.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the agent did not take CDR {n}")
                time.sleep(0.1)  # FreeSWITCH retries likewise (`retries`, `delay`)


def test_every_store_arrives_once_field_by_field(
    tmp_path: Path, collector_server: CollectorServer, fs_pg: str
) -> None:
    csv_dir = tmp_path / "cdr-csv"
    csv_dir.mkdir()
    db = tmp_path / "cdr.db"
    reference_db(db, with_rows=False)
    port = free_port()
    halves = {k: (r[: len(r) // 2], r[len(r) // 2 :]) for k, r in RANGES.items()}
    write_csv(csv_dir, halves["csv"][0])
    write_sqlite(db, halves["sqlite"][0])
    write_pg(fs_pg, halves["pg"][0])
    common = 'plugin = "freeswitch"\ntimezone = "Europe/Paris"\ncountry_code = "33"\n'
    agent = enrolled_agent(
        tmp_path,
        collector_server,
        f'[[source]]\nname = "csv"\nstore = "csv"\npath = "{csv_dir}"\ninterval = 0.05\n{common}\n'
        f'[[source]]\nname = "sqlite"\nstore = "sqlite"\npath = "{db}"\ninterval = 0.05\n'
        f"{common}\n"
        f'[[source]]\nname = "pg"\nstore = "pg"\ndsn = "{fs_pg}"\ninterval = 0.05\n{common}\n'
        f'[[source]]\nname = "http"\nstore = "http"\nport = {port}\n{common}',
    )
    agent.start()
    try:
        post_all(port, halves["http"][0])
        first = sum(len(h[0]) for h in halves.values())
        wait_rows(collector_server.database_url, first, agent)
        agent.stop()  # a restart in the middle: nothing read twice, nothing skipped
        write_csv(csv_dir, halves["csv"][1])
        write_sqlite(db, halves["sqlite"][1])
        write_pg(fs_pg, halves["pg"][1])
        agent.start()
        post_all(port, halves["http"][1])
        post_all(port, range(300, 301))  # the switch re-posts a CDR it was not sure of
        total = sum(len(r) for r in RANGES.values())
        rows = wait_rows(collector_server.database_url, total, agent)
        time.sleep(1.0)  # anything doubled would have arrived by now
        rows = stored(collector_server.database_url)
    finally:
        agent.stop()
    expected = {variables(n)["uuid"]: (store, n) for store, r in RANGES.items() for n in r}
    assert set(rows) == set(expected)
    doubled = [k for k, r in rows.items() if len(r) > 1]
    assert not doubled, f"stored twice: {doubled}"
    for key, (store, n) in expected.items():
        (got,) = rows[key]
        v = variables(n)
        answered = n % 4 != 0
        want = {
            "start_time": datetime.fromtimestamp(int(v["start_epoch"]), UTC),
            "answer_time": datetime.fromtimestamp(int(v["answer_epoch"]), UTC)
            if answered
            else None,
            "end_time": datetime.fromtimestamp(int(v["end_epoch"]), UTC),
            "duration": int(v["duration"]),
            "billsec": int(v["billsec"]),
            "disposition": "ANSWERED" if answered else "NO_ANSWER",
            "hangup_cause": 16 if answered else 19,
            "caller": v["caller_id_number"],
            "caller_name": v["caller_id_name"],
            "callee": v["destination_number"],
            "callee_e164": "+33" + v["destination_number"][1:],
            "accountcode": v["accountcode"],
            "call_group": key,
        }
        assert {k: got[k] for k in want} == want, (store, n)
        if store in ("csv", "pg"):
            assert (got["read_codec"], got["write_codec"]) == ("PCMA", "PCMA")
        if store == "http":
            assert got["src_host"] == v["sip_received_ip"]
            assert got["user_agent"] == "Yealink SIP-T46S"
        if store == "pg":
            assert got["extra"]["local_ip_v4"] == "192.0.2.250"
        if answered and store != "sqlite":
            assert got["extra"]["bleg_uuid"] == v["bleg_uuid"]


def test_a_2xx_means_stored_even_if_the_agent_is_killed_right_after(
    tmp_path: Path, collector_server: CollectorServer
) -> None:
    """Each post answered 200 is in the spool: SIGKILL just after the last 200 loses none."""
    port = free_port()
    agent = enrolled_agent(
        tmp_path,
        collector_server,
        f'[[source]]\nname = "http"\nplugin = "freeswitch"\nstore = "http"\nport = {port}\n',
    )
    # The collector is down while the posts arrive: the CDRs can only be in the spool.
    collector_server.stop()
    agent.start()
    numbers = range(400, 420)
    try:
        post_all(port, numbers)
        agent.kill()
        collector_server.start()
        agent.start()
        rows = wait_rows(collector_server.database_url, len(numbers), agent)
    finally:
        agent.stop()
    assert sorted(rows) == sorted(variables(n)["uuid"] for n in numbers)
    assert all(len(r) == 1 for r in rows.values())


def live_calls(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT *, host(src_ip) AS src_host FROM live_call").fetchall()
    return {row["call_id"]: row for row in rows}


def wait_live(
    database_url: str, condition: Any, what: str, agent: AgentProcess
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        calls = live_calls(database_url)
        if condition(calls):
            return calls
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {calls}; agent log:\n{agent.log_tail()}")
        time.sleep(0.2)


def test_live_calls_from_the_event_socket_reach_the_collector(
    tmp_path: Path, collector_server: CollectorServer
) -> None:
    from freeswitch_testkit import REFERENCE, EslPeer, parse_plain

    recorded = parse_plain(
        (REFERENCE / "event_plain_CHANNEL_HANGUP_COMPLETE_cgrates.txt").read_text()
    )
    call_id = recorded["Unique-ID"]
    now_us = str(int(time.time() * 1_000_000))

    def event(name: str) -> dict[str, str]:
        headers = {**recorded, "Event-Name": name, "Event-Date-Timestamp": now_us}
        headers["Caller-Channel-Created-Time"] = now_us
        if name != "CHANNEL_HANGUP_COMPLETE":
            headers.pop("Hangup-Cause")
        return headers

    peer = EslPeer(password="s3cret")
    csv_dir = tmp_path / "cdr-csv"
    csv_dir.mkdir()
    agent = enrolled_agent(
        tmp_path,
        collector_server,
        f'[[source]]\nname = "fs"\nplugin = "freeswitch"\nstore = "csv"\npath = "{csv_dir}"\n'
        f'[source.esl]\nport = {peer.port}\npassword = "s3cret"\nsnapshot_s = 1.0\n',
    )
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while peer.subscribed() < 1:
            assert time.monotonic() < deadline, f"no ESL subscription; log:\n{agent.log_tail()}"
            time.sleep(0.1)
        peer.send_event(event("CHANNEL_CREATE"))
        peer.send_event(event("CHANNEL_ANSWER"))
        calls = wait_live(
            collector_server.database_url,
            lambda c: c.get(call_id, {}).get("state") == "answered",
            "the answered call",
            agent,
        )
        row = calls[call_id]
        assert (row["caller"], row["callee"], row["src_host"]) == ("1001", "1003", "127.0.0.1")
        assert (row["read_codec"], row["source"]) == ("SPEEX", "fs")
        peer.send_event(event("CHANNEL_HANGUP_COMPLETE"))
        wait_live(collector_server.database_url, lambda c: call_id not in c, "the hangup", agent)
        # A call only the snapshot knows about (its events were missed) appears with it.
        peer.calls = [
            {
                "uuid": "snap-1",
                "direction": "inbound",
                "cid_num": "2000",
                "dest": "3000",
                "callstate": "ACTIVE",
                "created_epoch": str(int(time.time())),
            }
        ]
        calls = wait_live(
            collector_server.database_url, lambda c: "snap-1" in c, "the snapshot's call", agent
        )
        assert calls["snap-1"]["state"] == "answered" and calls["snap-1"]["caller"] == "2000"
    finally:
        agent.stop()
        peer.stop()
