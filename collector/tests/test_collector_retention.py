"""Retention: partitions dropped whole, shorter per-tenant retention by rows, aggregates kept
longer; settings and commands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from analytics_testkit import add_agent, checked
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.model import CDR, Disposition
from cdrstats_collector import cli, maintenance, partitions, retention, settings, store

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
# one call on the 20th of each month, January to June 2026
STARTS = [datetime(2026, m, 20, 10, 0, tzinfo=UTC) for m in range(1, 6)] + [
    datetime(2026, 6, 14, 10, 0, tzinfo=UTC)
]


def _load(database_url: str, agents: list[store.AgentRef]) -> None:
    async def run() -> None:
        ingestor = store.Ingestor()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            for agent in agents:
                cdrs = [
                    CDR(
                        key=f"c{i}",
                        start=s,
                        duration=60,
                        billsec=50,
                        disposition=Disposition.ANSWERED,
                    )
                    for i, s in enumerate(STARTS)
                ]
                await ingestor.ingest(conn, agent, 1, b"x" * 32, checked(cdrs))

    asyncio.run(run())


def _run(database_url: str, policy: retention.Policy) -> retention.Done:
    async def run() -> retention.Done:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await retention.run(conn, policy, now=NOW)

    return asyncio.run(run())


def _months(conn: psycopg.Connection[Any], tenant: str) -> list[int]:
    rows = conn.execute(
        "SELECT extract(month FROM start_time)::int FROM cdr JOIN tenant t ON t.id = tenant_id"
        " WHERE t.name = %s ORDER BY 1",
        (tenant,),
    ).fetchall()
    return [r[0] for r in rows]


def _agg_months(conn: psycopg.Connection[Any], table: str, bucket: str) -> list[int]:
    rows = conn.execute(
        f"SELECT DISTINCT extract(month FROM {bucket})::int FROM {table} ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_global_retention_drops_partitions_and_shorter_tenants_lose_rows(
    database_url: str,
) -> None:
    with psycopg.connect(database_url) as conn:
        agents = [add_agent(conn, "short"), add_agent(conn, "normal")]
        conn.execute("UPDATE tenant SET cdr_retention_days = 30 WHERE name = 'short'")
        conn.commit()
    _load(database_url, agents)
    done = _run(database_url, retention.Policy(cdr_days=90, aggregate_days=120))
    # kept from 2026-03-17 on: January and February end before, so their partitions go
    assert done.partitions_dropped == ("cdr_y2026m01", "cdr_y2026m02")
    assert done.cdr_rows_deleted == 2  # short: March and April (before 2026-05-16)
    with psycopg.connect(database_url) as conn:
        assert _months(conn, "normal") == [3, 4, 5, 6]  # March is partly within 90 days
        assert _months(conn, "short") == [5, 6]
        existing = partitions.existing(conn)
        assert "cdr_y2026m01" not in existing and "cdr_y2026m03" in existing
        # aggregates: kept 120 days (from 2026-02-15): January goes, February stays
        assert _agg_months(conn, "agg_kpi_hour", "hour") == [2, 3, 4, 5, 6]
        assert _agg_months(conn, "agg_kpi_day", "day") == [2, 3, 4, 5, 6]
        assert _agg_months(conn, "agg_conc_minute", "minute") == [2, 3, 4, 5, 6]
        assert conn.execute("SELECT sum(calls) FROM agg_kpi_hour").fetchone() == (10,)
    # a second run has nothing left to do
    assert _run(database_url, retention.Policy(90, 120)) == retention.Done()


def test_a_longer_tenant_retention_keeps_partitions(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        agents = [add_agent(conn, "archive"), add_agent(conn, "normal")]
        conn.execute("UPDATE tenant SET cdr_retention_days = 400 WHERE name = 'archive'")
        conn.commit()
    _load(database_url, agents)
    done = _run(database_url, retention.Policy(cdr_days=60))
    assert done.partitions_dropped == ()
    assert done.cdr_rows_deleted == 3  # normal: January to March
    assert done.aggregate_rows_deleted == 0  # aggregate_days = 0: kept for ever
    with psycopg.connect(database_url) as conn:
        assert _months(conn, "archive") == [1, 2, 3, 4, 5, 6]
        assert _months(conn, "normal") == [4, 5, 6]
        assert _agg_months(conn, "agg_kpi_hour", "hour") == [1, 2, 3, 4, 5, 6]


def test_no_global_retention_keeps_everything_but_tenant_overrides(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        agents = [add_agent(conn, "short"), add_agent(conn, "normal")]
        conn.execute("UPDATE tenant SET cdr_retention_days = 100 WHERE name = 'short'")
        conn.commit()
    _load(database_url, agents)
    done = _run(database_url, retention.Policy())
    assert done == retention.Done((), 2, 0)  # short: January and February
    with psycopg.connect(database_url) as conn:
        assert _months(conn, "normal") == [1, 2, 3, 4, 5, 6]
        assert _months(conn, "short") == [3, 4, 5, 6]


def test_ingest_after_a_drop_recreates_the_partition(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        agent = add_agent(conn, "t")
    cache = partitions.PartitionCache()
    ingestor = store.Ingestor(cache)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            old = [CDR(key="a", start=STARTS[0])]
            await ingestor.ingest(conn, agent, 1, b"a" * 32, checked(old))
            done = await retention.run(conn, retention.Policy(30), now=NOW, cache=cache)
            assert done.partitions_dropped == ("cdr_y2026m01",)
            late = [CDR(key="b", start=STARTS[0])]
            out = await ingestor.ingest(conn, agent, 2, b"b" * 32, checked(late))
            assert isinstance(out, store.Stored) and out.ack.accepted == 1

    asyncio.run(run())


def test_maintenance_applies_retention(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        add_agent(conn, "t")

    async def run() -> maintenance.Report:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute("SELECT cdr_ensure_partition('2001-01-01')")
            await conn.commit()
            return await maintenance.run(conn, keep=retention.Policy(30, 60))

    report = asyncio.run(run())
    assert report.retention_done.partitions_dropped == ("cdr_y2001m01",)


def test_retention_settings(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text("[retention]\ncdr_days = 90\naggregate_days = 400\n")
    cfg = settings.load("postgresql://x/y", path, env={})
    assert (cfg.cdr_retention_days, cfg.aggregate_retention_days) == (90, 400)
    path.write_text("[retention]\ncdr_days = 90\naggregate_days = 30\n")
    with pytest.raises(ConfigError, match=r"retention\.aggregate_days: must be 0 or at least"):
        settings.load("postgresql://x/y", path, env={})
    path.write_text("[retention]\ncdr_days = -1\n")
    with pytest.raises(ConfigError, match=r"retention\.cdr_days: must be at least 0"):
        settings.load("postgresql://x/y", path, env={})
    path.write_text("[retention]\ncdr_dayz = 3\n")
    with pytest.raises(ConfigError, match="cdr_dayz"):
        settings.load("postgresql://x/y", path, env={})
    with pytest.raises(ValueError, match="retention days must be 0"):
        retention.Policy(-1)


def test_retention_commands(database_url: str, tmp_path: Path, capsys: Any) -> None:
    with psycopg.connect(database_url) as conn:
        add_agent(conn, "acme")
    url = ["--database-url", database_url]
    assert cli.main(["tenant", "retention", "acme", "--cdr-days", "45", *url]) == 0
    assert "raw CDRs kept 45 days" in capsys.readouterr().out
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT cdr_retention_days FROM tenant WHERE name = 'acme'")
        assert row.fetchone() == (45,)
    assert cli.main(["tenant", "retention", "acme", "--default", *url]) == 0
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT cdr_retention_days FROM tenant WHERE name = 'acme'")
        assert row.fetchone() == (None,)
    assert cli.main(["tenant", "retention", "acme", "--cdr-days", "0", *url]) == 2
    assert "--cdr-days must be a positive number of days, got 0" in capsys.readouterr().err
    assert cli.main(["tenant", "retention", "acme", *url]) == 2
    assert "give either --cdr-days N or --default" in capsys.readouterr().err
    assert cli.main(["tenant", "retention", "nobody", "--cdr-days", "3", *url]) == 2
    config = tmp_path / "c.toml"
    config.write_text("[retention]\ncdr_days = 30\naggregate_days = 60\n")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT cdr_ensure_partition('2001-01-01')")
    capsys.readouterr()
    assert cli.main(["db", "maintain", "--config", str(config), *url]) == 0
    out = capsys.readouterr().out
    assert "retention: 1 cdr partitions dropped (cdr_y2001m01), 0 CDRs deleted" in out


def test_partition_names_that_are_not_months_are_left_alone() -> None:
    assert retention._month_end("cdr_y2026m02") == datetime(2026, 3, 1, tzinfo=UTC)
    assert retention._month_end("cdr_y2026m12") == datetime(2027, 1, 1, tzinfo=UTC)
    assert retention._month_end("cdr_y2026m13") is None
    assert retention._month_end("cdr_default") is None
    assert retention._month_end("cdr_yabcdm01") is None
