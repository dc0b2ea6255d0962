"""A rule closes the loop end to end: a replayed CDR stream (a scanner's failed calls, written to
a CSV file a real agent follows) is ingested by a real collector, whose background evaluator
fires a `scanner` rule with the `block_source_ip` action; the command reaches the agent, which
adds the address to the nftables set inside a network namespace made by the test; TCP from that
address is dropped, from another address of the same host it is not; the block expires (short
ttl) and traffic flows again. The rule, the alert and its action are read back via the API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cdrstats_collector import auth, users

from tests.fix_agent import AgentFactory
from tests.fix_db import CollectorServer
from tests.fix_netns import NetnsPair, netns_pair

__all__ = ["netns_pair"]
PASSWORD = "correct horse battery"
HEADER = "key,start,duration,billsec,disposition,caller,callee,src_ip,sip_code\n"


def _source(cdr_dir: Path) -> str:
    """A csv source mapping the replayed file's columns by name."""
    return f"""[[source]]
name = "replay"
plugin = "csv"
path = "{cdr_dir}"
header = true
timezone = "UTC"
key = "key"
interval = 0.05

[source.fields]
start = "start"
duration = "duration"
billsec = "billsec"
disposition = "disposition"
caller = "caller"
callee = "callee"
src_ip = "src_ip"
sip_code = "sip_code"
"""


def _rows(prefix: str, ip: str, n: int, disposition: str, sip: int, billsec: int) -> str:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=90)
    lines = []
    for i in range(n):
        at = (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{prefix}-{i},{at},{billsec + 2},{billsec},{disposition},"
            f"1{i:03d},+3319000{i:04d},{ip},{sip}\n"
        )
    return "".join(lines)


def _until(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout} s\n{log()}")
        time.sleep(0.1)


def test_scanner_rule_blocks_the_source_until_the_block_expires(
    netns_pair: NetnsPair,
    collector_server: CollectorServer,
    agent_factory: AgentFactory,
    tmp_path: Path,
) -> None:
    pair = netns_pair
    port = pair.serve_tcp()
    cdr_dir = tmp_path / "cdr"
    cdr_dir.mkdir()
    agent = agent_factory(
        tmp_path / "agent", cdr_dir, collector_server.url, sources=_source(cdr_dir)
    )
    with agent.config_path.open("a") as f:
        f.write(
            "\n[actions]\npoll_wait_s = 20\n"
            f'[firewall]\nbackend = "nftables"\nnetns = "{pair.switch}"\n'
        )
    agent.enroll(collector_server.url, collector_server.create_token("acme", "sw1"))
    with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
        users.add_user(conn, "noc", "tenant_admin", PASSWORD, "acme")
        token = auth.create_token(conn, "noc")

    def api(method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(
            method,
            collector_server.url + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kw,
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    rule = api(
        "POST",
        "/api/v1/rules",
        json={
            "name": "sip scanner",
            "kind": "scanner",
            "window_s": 300,
            "params": {"count": 10},
            "severity": "critical",
            "action": "block_source_ip",
            "block_ttl_s": 4,
        },
    )
    assert pair.can_connect(pair.peer_v4, port) and pair.can_connect(pair.other_v4, port)

    # The replayed stream: a scanner's 12 failed calls, and normal calls from a neighbour.
    (cdr_dir / "replay.csv").write_text(
        HEADER
        + _rows("scan", pair.peer_v4, 12, "FAILED", 404, 0)
        + _rows("ok", pair.other_v4, 5, "ANSWERED", 200, 30)
    )
    agent.start()

    def log() -> str:
        return agent.log_tail() + "\n" + collector_server.log_tail()

    def alert() -> Any:
        found = api("GET", "/api/v1/alerts")["alerts"]
        return found[0] if found and (found[0]["action"] or {}).get("command_id") else None

    opened = _until("the rule's alert with its block command", alert, 30, log)
    assert opened["rule_id"] == rule["id"] and opened["state"] == "open"
    assert opened["detail"]["source_ip"] == pair.peer_v4 and opened["detail"]["value"] == 12
    assert opened["action"]["ip"] == pair.peer_v4 and opened["action"]["ttl"] == 4

    def command() -> Any:
        for c in api("GET", "/api/v1/commands")["commands"]:
            if c["id"] == opened["action"]["command_id"] and c["status"] != "pending":
                return c
        return None

    done = _until("the agent's result", command, 30, log)
    assert done["status"] == "done" and done["issued_by"] == "rule:sip scanner", done
    assert done["args"] == {"ip": pair.peer_v4, "ttl": 4}
    assert not pair.can_connect(pair.peer_v4, port)  # dropped by nftables in the namespace
    assert pair.can_connect(pair.other_v4, port)  # the neighbour is not
    # The block expires in the kernel: traffic flows again; one alert, one command.
    assert pair.wait_connect(pair.peer_v4, port, expected=True, timeout=20)
    assert len(api("GET", "/api/v1/alerts")["alerts"]) == 1
    commands = api("GET", "/api/v1/commands")["commands"]
    assert [c["verb"] for c in commands] == ["block_ip"]
