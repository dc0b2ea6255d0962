"""CSV files on disk → real agent process → real collector process → PostgreSQL, field by field.

The expected values are computed here from the generated calls (or, for the reference file,
read from the file with the standard csv module), not by the code under test.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from cdrstats_agent.model import CDR
from cdrstats_agent.synthetic import (
    DEMO_SWITCHES,
    CallGenerator,
    asterisk_csv_line,
    asterisk_csv_row,
)
from psycopg.rows import dict_row

from tests.fix_agent import AgentFactory, AgentProcess
from tests.fix_db import CollectorServer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def start_agent(
    tmp_path: Path, agent_factory: AgentFactory, collector_server: CollectorServer
) -> Iterator[Callable[[str], AgentProcess]]:
    """`start_agent(source)`: an agent of switch acme/pbx-paris with that `[[source]]` body,
    stopped (SIGTERM) before the collector is."""
    started: list[AgentProcess] = []

    def start(source: str) -> AgentProcess:
        agent = agent_factory(
            tmp_path / "agent",
            tmp_path,
            collector_server.url,
            batch_max_cdrs=500,
            sources=f"[[source]]\n{source}",
        )
        agent.enroll(collector_server.url, collector_server.create_token("acme", "pbx-paris"))
        agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def wait_for_rows(database_url: str, expected: int, agent: AgentProcess) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    count = -1
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            count = conn.execute("SELECT count(*) FROM cdr").fetchone()[0]  # type: ignore[index]
            if count >= expected:
                cur = conn.cursor(row_factory=dict_row)
                return cur.execute(
                    "SELECT cdr.*, host(src_ip) AS src_host, t.name AS tenant, s.name AS switch"
                    " FROM cdr JOIN tenant t ON t.id = cdr.tenant_id"
                    " JOIN switch s ON s.id = cdr.switch_id ORDER BY key"
                ).fetchall()
        time.sleep(0.2)
    pytest.fail(f"{count} of {expected} CDRs arrived within 60 s; agent log:\n{agent.log_tail()}")


def _second(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(microsecond=0)


def expected_row(cdr: CDR, row: list[str]) -> dict[str, Any]:
    """What PostgreSQL must hold for a synthetic call written as an Asterisk Master.csv line."""
    uniqueid = row[16]
    return {
        "tenant": "acme",
        "switch": "pbx-paris",
        "key": f"{uniqueid}:0",
        "start_time": _second(cdr.start),
        "answer_time": _second(cdr.answer),
        "end_time": _second(cdr.end),
        "duration": int(row[12]),
        "billsec": int(row[13]),
        "disposition": str(cdr.disposition),
        "caller": cdr.caller,
        "caller_name": cdr.caller_name,
        "callee": cdr.callee,
        "callee_e164": cdr.callee_e164,
        "accountcode": cdr.accountcode,
        "ring_time": int((_second(cdr.answer or cdr.end) - _second(cdr.start)).total_seconds()),  # type: ignore[operator]
        "trunk": cdr.trunk,
        "call_group": uniqueid,
        "hangup_cause": None,
        "sip_code": None,
        "src_host": None,
        "extra": {
            "dcontext": row[3],
            "channel": row[5],
            "dstchannel": row[6],
            "lastapp": row[7],
            "lastdata": row[8],
            "amaflags": row[15],
            "uniqueid": uniqueid,
            "userfield": "",
            "peeraccount": "",
            "sequence": "0",
        },
    }


def test_synthetic_master_csv_arrives_field_by_field(
    tmp_path: Path, start_agent: Callable[[str], AgentProcess], collector_server: CollectorServer
) -> None:
    switch = DEMO_SWITCHES[0]
    gen = CallGenerator(switch, seed=11)
    end = datetime.now(UTC) - timedelta(minutes=1)
    cdrs = list(gen.calls_between(end - timedelta(hours=36), end, 120))
    rows = [asterisk_csv_row(c, PARIS, switch) for c in cdrs]
    cdr_dir = tmp_path / "cdr-csv"
    cdr_dir.mkdir()
    master = cdr_dir / "Master.csv"
    half = len(rows) // 2
    master.write_text("".join(asterisk_csv_line(r) for r in rows[:half]))
    agent = start_agent(
        f'name = "master"\nplugin = "csv"\npreset = "asterisk"\npath = "{cdr_dir}"\n'
        f'timezone = "Europe/Paris"\ncountry_code = "33"\ninterval = 0.05\n'
    )
    wait_for_rows(collector_server.database_url, half, agent)
    with master.open("a") as f:  # the switch keeps writing while the agent follows the file
        f.writelines(asterisk_csv_line(r) for r in rows[half:])
    stored = wait_for_rows(collector_server.database_url, len(rows), agent)

    assert len(stored) == len(rows) > 200
    expected = sorted(
        (expected_row(c, r) for c, r in zip(cdrs, rows, strict=True)), key=lambda e: e["key"]
    )
    for got, want in zip(stored, expected, strict=True):
        assert {k: got[k] for k in want} == want
        assert got["direction"] == "unknown"
        assert got["read_codec"] is None and got["user_agent"] is None


def test_reference_asterisk_master_csv(
    tmp_path: Path, start_agent: Callable[[str], AgentProcess], collector_server: CollectorServer
) -> None:
    """The Asterisk testsuite's Master.csv (18 columns, UTC stamps) stored as written."""
    source = REFERENCE / "asterisk" / "testsuite_self_test_Master.csv"
    if not source.exists():
        pytest.skip(f"reference data not found at {source}")
    cdr_dir = tmp_path / "cdr-csv"
    cdr_dir.mkdir()
    (cdr_dir / "Master.csv").write_bytes(source.read_bytes())
    with source.open(newline="") as f:
        lines = [r for r in csv.reader(f) if r]
    agent = start_agent(
        f'name = "master"\nplugin = "csv"\npreset = "asterisk"\npath = "{cdr_dir}"\n'
        "usegmtime = true\ninterval = 0.05\n"
    )
    stored = {
        row["key"]: row for row in wait_for_rows(collector_server.database_url, len(lines), agent)
    }

    assert len(stored) == len(lines)
    utc = ZoneInfo("UTC")
    for line in lines:
        got = stored[line[16]]  # 18 columns: the natural key is the uniqueid
        assert got["accountcode"] == line[0]
        assert got["caller"] == line[1]
        assert got["callee"] == line[2]
        assert got["start_time"] == datetime.fromisoformat(line[9]).replace(tzinfo=utc)
        assert got["end_time"] == datetime.fromisoformat(line[11]).replace(tzinfo=utc)
        assert (got["duration"], got["billsec"]) == (int(line[12]), int(line[13]))
        assert got["disposition"] == line[14].replace(" ", "_")
        assert got["extra"]["channel"] == line[5]
