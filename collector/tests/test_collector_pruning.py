"""Maintenance prunes the history tables: old finished rows go, recent and active ones stay
(commands and blocks, live counts per minute, CSV import jobs and rejects, resolved alerts)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdrstats_collector import cli, maintenance, settings, tenants

from collector.tests.collector_api_testkit import add_agent

OLD = "now() - interval '40 days'"
RECENT = "now() - interval '2 days'"


def _command(
    conn: psycopg.Connection[Any], agent: Any, seq: int, status: str, at: str
) -> uuid.UUID:
    cid = uuid.uuid4()
    conn.execute(
        "INSERT INTO command (id, tenant_id, switch_id, agent_id, seq, verb, args, envelope,"
        " issued_by, issued_at, expires_at, status, finished_at)"
        f" VALUES (%s, %s, %s, %s, %s, 'block_ip', '{{}}', '\\x00', 'test', {at},"
        f" {at} + interval '5 minutes', %s, CASE WHEN %s <> 'pending' THEN {at} END)",
        (cid, agent.tenant_id, agent.switch_id, agent.id, seq, status, status),
    )
    return cid


def _seed(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    tid = tenants.add_tenant(conn, "prune")
    agent = add_agent(conn, tid, "sw1")
    ids = {
        "old_done": _command(conn, agent, 1, "done", OLD),
        "old_failed": _command(conn, agent, 2, "failed", OLD),
        "old_expired": _command(conn, agent, 3, "pending", OLD),  # never delivered
        "old_blocking": _command(conn, agent, 4, "done", OLD),  # its block is still active
        "old_ended_block": _command(conn, agent, 5, "done", OLD),  # its block ended long ago
        "recent_done": _command(conn, agent, 6, "done", RECENT),
        "pending": _command(conn, agent, 7, "pending", "now()"),
    }
    for ip, cmd, expires in (
        ("192.0.2.1", "old_blocking", "now() + interval '1 day'"),
        ("192.0.2.2", "old_ended_block", OLD),
        ("192.0.2.3", "recent_done", RECENT),
    ):
        conn.execute(
            "INSERT INTO ip_block (tenant_id, switch_id, ip, blocked_at, expires_at, command_id)"
            f" VALUES (%s, %s, %s, {OLD}, {expires}, %s)",
            (tid, agent.switch_id, ip, ids[cmd]),
        )
    for when in (OLD, RECENT, "now()"):
        conn.execute(
            "INSERT INTO live_count_minute (tenant_id, switch_id, minute, calls_max)"
            f" VALUES (%s, %s, date_trunc('minute', {when}), 3)",
            (tid, agent.switch_id),
        )
    jobs = {}
    for name, status, when in (
        ("old_done", "done", OLD),
        ("old_failed", "failed", OLD),
        ("old_running", "running", OLD),  # still running (or stuck): left for an operator
        ("recent_done", "done", RECENT),
    ):
        jobs[name] = job = uuid.uuid4()
        conn.execute(
            "INSERT INTO import_job (tenant_id, id, switch_id, agent_id, profile, options,"
            " file_name, file_size, status, started_at, updated_at, finished_at)"
            f" VALUES (%s, %s, %s, %s, 'asterisk', '{{}}', 'f.csv', 1, %s, {when}, {when},"
            f" CASE WHEN %s <> 'running' THEN {when} END)",
            (tid, job, agent.switch_id, agent.id, status, status),
        )
        for line in (1, 2):
            conn.execute(
                "INSERT INTO import_reject (tenant_id, job_id, line, reason) VALUES (%s, %s, %s,"
                " 'bad')",
                (tid, job, line),
            )
    alerts = {}
    for name, state, resolved in (
        ("old_resolved", "resolved", OLD),
        ("recent_resolved", "resolved", RECENT),
        ("old_open", "open", None),
    ):
        cur = conn.execute(
            "INSERT INTO alert (tenant_id, episode_key, state, severity, title, opened_at,"
            f" resolved_at) VALUES (%s, %s, %s, 'warning', 't', {OLD},"
            f" {'NULL' if resolved is None else resolved}) RETURNING id",
            (tid, name, state),
        )
        row = cur.fetchone()
        assert row is not None
        alerts[name] = int(row[0])
    return {"tenant": tid, "commands": ids, "jobs": jobs, "alerts": alerts}


async def test_prune_deletes_old_finished_rows_and_keeps_the_rest(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seeded = _seed(conn)
    keep = maintenance.Keep(commands_days=30, live_counts_days=30, imports_days=30, alerts_days=30)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
        report = await maintenance.run(aconn, history=keep)
        again = await maintenance.prune(aconn, keep)
    assert report.pruned == maintenance.Pruned(
        commands=4, ip_blocks=1, live_counts=1, import_jobs=2, import_rejects=4, alerts=1
    )
    assert again == maintenance.Pruned()  # nothing left to prune
    with psycopg.connect(database_url) as conn:
        left = {str(r[0]) for r in conn.execute("SELECT id FROM command")}
        cmds = seeded["commands"]
        assert left == {str(cmds[k]) for k in ("old_blocking", "recent_done", "pending")}
        blocks = {r[0] for r in conn.execute("SELECT host(ip) FROM ip_block")}
        assert blocks == {"192.0.2.1", "192.0.2.3"}
        counts = conn.execute("SELECT count(*) FROM live_count_minute").fetchone()
        assert counts == (2,)
        jobs = {r[0] for r in conn.execute("SELECT id FROM import_job")}
        assert jobs == {seeded["jobs"]["old_running"], seeded["jobs"]["recent_done"]}
        rejects = {r[0] for r in conn.execute("SELECT DISTINCT job_id FROM import_reject")}
        assert rejects == jobs
        alerts = {r[0] for r in conn.execute("SELECT id FROM alert")}
        assert alerts == {seeded["alerts"]["recent_resolved"], seeded["alerts"]["old_open"]}
    # defaults keep everything seeded here (40 days is within 90 and 180)
    assert maintenance.Keep() == maintenance.Keep.from_settings(settings.Settings("x"))


async def test_prune_without_an_alert_table(database_url: str) -> None:
    """A schema without `alert` (older collector): everything else is still pruned."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS notify_delivery")
        conn.execute("DROP TABLE alert CASCADE")
        tid = tenants.add_tenant(conn, "noalert")
        agent = add_agent(conn, tid, "sw1")
        conn.execute(
            "INSERT INTO live_count_minute (tenant_id, switch_id, minute, calls_max)"
            f" VALUES (%s, %s, date_trunc('minute', {OLD}), 1)",
            (tid, agent.switch_id),
        )
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
        pruned = await maintenance.prune(aconn, maintenance.Keep(live_counts_days=30))
    assert pruned == maintenance.Pruned(live_counts=1)


def test_db_maintain_reports_the_history_pruned(
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed(conn)
    config = tmp_path / "c.toml"
    config.write_text("[maintenance]\ncommands_keep_days = 30\nalerts_keep_days = 30\n")
    monkeypatch.delenv("CDRSTATS_DATABASE_URL", raising=False)
    argv = ["db", "maintain", "--database-url", database_url, "--config", str(config)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # imports and live counts are kept 90 days by default: the 40-day-old ones stay
    assert (
        "history: 4 commands, 1 ended blocks, 0 live counts, 0 import jobs (0 rejected rows),"
        " 1 resolved alerts pruned"
    ) in out
