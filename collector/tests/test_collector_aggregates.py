"""Aggregates maintained at ingest: hand-computed values, duplicates, late CDRs, rebuild."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from analytics_testkit import add_agent, aggregate_snapshot, checked, table_dicts
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import aggregates, cli, store

T0 = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)  # 23:30 in Asia/Kolkata (+05:30)


def calls() -> list[CDR]:
    out = Direction.OUTBOUND
    return [
        CDR(  # 23:50 local on the 10th; minutes 18:20 and 18:21
            key="c1",
            start=T0 + timedelta(minutes=20),
            answer=T0 + timedelta(minutes=20, seconds=10),
            end=T0 + timedelta(minutes=21, seconds=40),
            duration=100,
            billsec=90,
            ring_time=10,
            disposition=Disposition.ANSWERED,
            direction=out,
            callee="0612345678",
            hangup_cause=16,
            sip_code=200,
            trunk="gw1",
        ),
        CDR(  # 00:10 local on the 11th
            key="c2",
            start=T0 + timedelta(minutes=40),
            duration=5,
            disposition=Disposition.BUSY,
            direction=out,
            callee="0612345678",
            hangup_cause=17,
            sip_code=486,
            trunk="gw1",
        ),
        CDR(  # no length: counts in its start minute only
            key="c3",
            start=T0 + timedelta(minutes=50),
            end=T0 + timedelta(minutes=50),
            disposition=Disposition.FAILED,
            direction=out,
            callee="1001",
            hangup_cause=34,
            sip_code=503,
        ),
        CDR(  # no end time: start + duration; overlaps c1 in minute 18:21
            key="c4",
            start=T0 + timedelta(minutes=21, seconds=30),
            duration=60,
            billsec=50,
            ring_time=4,
            disposition=Disposition.ANSWERED,
            direction=Direction.INBOUND,
            callee="+442071234567",
            callee_e164="+442071234567",
        ),
    ]


@pytest.fixture
def agent(database_url: str) -> store.AgentRef:
    with psycopg.connect(database_url) as conn:
        return add_agent(conn, "acme", "sw1", "Asia/Kolkata", country="FR")


def ingest(database_url: str, agent: store.AgentRef, *batches: tuple[int, list[CDR]]) -> list[Any]:
    async def run() -> list[Any]:
        ingestor = store.Ingestor()
        outs = []
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            for seq, cdrs in batches:
                digest = seq.to_bytes(32, "big")
                outs.append(await ingestor.ingest(conn, agent, seq, digest, checked(cdrs)))
        return outs

    return asyncio.run(run())


def test_counters_match_hand_computed_values(database_url: str, agent: store.AgentRef) -> None:
    ingest(database_url, agent, (1, calls()))
    s, t = agent.switch_id, agent.tenant_id
    with psycopg.connect(database_url) as conn:
        kpi = table_dicts(conn, "agg_kpi_hour")
        assert kpi == [
            dict(
                tenant_id=t, hour=T0, switch_id=s, direction="inbound", calls=1, answered=1,
                busy=0, no_answer=0, failed=0, cancelled=0, ner_ok=1, duration_sum=60,
                billsec_sum=50, ring_time_sum=4, ring_count=1,
            ),
            dict(
                tenant_id=t, hour=T0, switch_id=s, direction="outbound", calls=3, answered=1,
                busy=1, no_answer=0, failed=1, cancelled=0, ner_ok=2, duration_sum=105,
                billsec_sum=90, ring_time_sum=10, ring_count=1,
            ),
        ]  # fmt: skip
        days = {(r["day"], r["direction"]): r["calls"] for r in table_dicts(conn, "agg_kpi_day")}
        assert days == {
            (date(2026, 3, 10), "outbound"): 1,
            (date(2026, 3, 11), "outbound"): 2,
            (date(2026, 3, 10), "inbound"): 1,
        }
        dest = {
            (r["direction"], r["dest_country"], r["dest_kind"]): (r["calls"], r["billsec_sum"])
            for r in table_dicts(conn, "agg_dest_hour")
        }
        assert dest == {
            ("outbound", "FR", "mobile"): (2, 90),  # 0612345678 read with the French plan
            ("outbound", "", ""): (1, 0),  # an extension has no destination
            ("inbound", "GB", "fixed"): (1, 50),
        }
        causes = {
            (r["disposition"], r["hangup_cause"], r["sip_code"]): r["calls"]
            for r in table_dicts(conn, "agg_cause_hour")
        }
        assert causes == {
            ("ANSWERED", 16, 200): 1,
            ("BUSY", 17, 486): 1,
            ("FAILED", 34, 503): 1,
            ("ANSWERED", 0, 0): 1,
        }
        trunks = {
            (r["direction"], r["trunk"]): r["calls"] for r in table_dicts(conn, "agg_trunk_hour")
        }
        assert trunks == {("outbound", "gw1"): 2, ("outbound", ""): 1, ("inbound", ""): 1}
        minutes = {
            (r["switch_id"], r["minute"]): r["calls"] for r in table_dicts(conn, "agg_conc_minute")
        }
        per_minute = {
            T0 + timedelta(minutes=m): c for m, c in {20: 1, 21: 2, 22: 1, 40: 1, 50: 1}.items()
        }
        assert minutes == {(sw, m): c for sw in (0, s) for m, c in per_minute.items()}
        peaks = {(r["switch_id"], r["hour"]): r["peak"] for r in table_dicts(conn, "agg_conc_hour")}
        assert peaks == {(0, T0): 2, (s, T0): 2}
        day_peaks = {
            (r["switch_id"], r["day"]): r["peak"] for r in table_dicts(conn, "agg_conc_day")
        }
        assert day_peaks == {
            (sw, d): p for sw in (0, s) for d, p in ((date(2026, 3, 10), 2), (date(2026, 3, 11), 1))
        }
        row = conn.execute(
            "SELECT dest_country, dest_kind, dest_prefix FROM cdr WHERE key = 'c1'"
        ).fetchone()
        assert row == ("FR", "mobile", None)


def test_duplicates_and_redeliveries_never_count_twice(
    database_url: str, agent: store.AgentRef
) -> None:
    first = calls()
    changed = [
        CDR(key=c.key, start=c.start, duration=999, billsec=999, disposition=Disposition.FAILED)
        for c in first
    ]
    ingest(database_url, agent, (1, first))
    with psycopg.connect(database_url) as conn:
        once = aggregate_snapshot(conn)
    outs = ingest(
        database_url,
        agent,
        (1, first),  # redelivery: same seq and digest
        (2, first + first),  # sent again, and twice inside the batch
        (3, changed),  # same calls with other content: still duplicates
    )
    assert isinstance(outs[0], store.Redelivery)
    assert [o.ack.duplicates for o in outs[1:]] == [8, 4]
    with psycopg.connect(database_url) as conn:
        assert aggregate_snapshot(conn) == once


def test_late_cdr_lands_in_its_own_hour(database_url: str, agent: store.AgentRef) -> None:
    ingest(database_url, agent, (1, calls()))
    with psycopg.connect(database_url) as conn:
        before = table_dicts(conn, "agg_kpi_hour")
    late = CDR(
        key="late",
        start=T0 - timedelta(days=40, minutes=-5),
        duration=30,
        billsec=20,
        disposition=Disposition.ANSWERED,
        direction=Direction.OUTBOUND,
    )
    ingest(database_url, agent, (2, [late]))
    with psycopg.connect(database_url) as conn:
        after = table_dicts(conn, "agg_kpi_hour")
        minutes = conn.execute(
            "SELECT minute FROM agg_conc_minute WHERE switch_id = 0 ORDER BY minute LIMIT 1"
        ).fetchone()
    assert after[1:] == before
    assert after[0]["hour"] == T0 - timedelta(days=40) and after[0]["billsec_sum"] == 20
    assert minutes == (T0 - timedelta(days=40, minutes=-5),)


def test_rebuild_restores_a_range_and_checks_its_arguments(
    database_url: str, agent: store.AgentRef
) -> None:
    ingest(database_url, agent, (1, calls()))
    with psycopg.connect(database_url) as conn:
        maintained = aggregate_snapshot(conn)
        for table in aggregates.ALL_TABLES:
            conn.execute(f"UPDATE {table} SET " + (
                "peak = peak + 5" if table in ("agg_conc_hour", "agg_conc_day")
                else "calls = calls + 7"
            ))  # fmt: skip
        conn.commit()
        done = aggregates.rebuild(conn, agent.tenant_id, T0, T0 + timedelta(minutes=1))
        assert done.hours == (T0, T0 + timedelta(hours=1))
        assert done.days == (date(2026, 3, 10), date(2026, 3, 10))
        # the hour is whole again; the 11th (local) was not in the range
        assert aggregate_snapshot(conn)["agg_kpi_hour"] == maintained["agg_kpi_hour"]
        assert aggregate_snapshot(conn)["agg_kpi_day"] != maintained["agg_kpi_day"]
        aggregates.rebuild(conn, agent.tenant_id, T0, T0 + timedelta(hours=8))
        assert aggregate_snapshot(conn) == maintained
        with pytest.raises(ValueError, match="timezone-aware"):
            aggregates.rebuild(conn, agent.tenant_id, T0.replace(tzinfo=None), T0)
        with pytest.raises(ValueError, match="must be after"):
            aggregates.rebuild(conn, agent.tenant_id, T0, T0)
        with pytest.raises(ValueError, match="no tenant with id 999"):
            aggregates.rebuild(conn, 999, T0, T0 + timedelta(hours=1))


def test_rebuild_command(database_url: str, agent: store.AgentRef, capsys: Any) -> None:
    ingest(database_url, agent, (1, calls()))
    with psycopg.connect(database_url) as conn:
        maintained = aggregate_snapshot(conn)
        conn.execute("TRUNCATE " + ", ".join(aggregates.ALL_TABLES))
    assert cli.main(["db", "rebuild-aggregates", "--database-url", database_url]) == 0
    assert "local days 2026-03-10 to" in capsys.readouterr().out
    with psycopg.connect(database_url) as conn:
        assert aggregate_snapshot(conn) == maintained
    args = ["db", "rebuild-aggregates", "--database-url", database_url, "--tenant", "acme"]
    assert cli.main([*args, "--since", "2026-03-10"]) == 2
    assert "give both --since and --until" in capsys.readouterr().err
    assert cli.main([*args, "--since", "yesterday", "--until", "2026-03-11"]) == 2
    assert "'yesterday' is not an ISO date" in capsys.readouterr().err
    assert cli.main([*args, "--since", "2026-03-10", "--until", "2026-03-11T00:00+05:30"]) == 0
    assert cli.main([*args[:-1], "nobody"]) == 2
    assert "unknown tenant 'nobody'" in capsys.readouterr().err


def test_concurrent_collectors_of_one_tenant(database_url: str) -> None:
    """Two switches of one tenant ingest at once: shared rows (destinations, tenant-wide
    concurrency) are updated by both without deadlock or lost update."""
    with psycopg.connect(database_url) as conn:
        agents = [add_agent(conn, "acme", f"sw{i}", "Europe/Paris") for i in range(3)]

    def batch(i: int, seq: int) -> list[CDR]:
        base = T0 + timedelta(seconds=seq)
        return [
            CDR(
                key=f"{i}-{seq}-{n}",
                start=base + timedelta(seconds=n),
                duration=120 + n,
                billsec=100,
                disposition=Disposition.ANSWERED,
                direction=Direction.OUTBOUND,
                callee_e164=f"+3361234{n:04d}",
            )
            for n in range(40)
        ]

    async def one(agent: store.AgentRef, i: int) -> None:
        ingestor = store.Ingestor()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            for seq in range(1, 16):
                out = await ingestor.ingest(
                    conn, agent, seq, bytes([i, seq]) * 16, checked(batch(i, seq))
                )
                assert isinstance(out, store.Stored) and out.ack.accepted == 40

    async def run() -> None:
        await asyncio.gather(*(one(a, i) for i, a in enumerate(agents)))

    asyncio.run(run())
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT sum(calls) FROM agg_dest_hour").fetchone() == (3 * 15 * 40,)
        maintained = aggregate_snapshot(conn)
        conn.execute("TRUNCATE " + ", ".join(aggregates.ALL_TABLES))
        aggregates.rebuild_all(conn)
        assert aggregate_snapshot(conn) == maintained


def test_ingest_without_aggregates_then_rebuild(database_url: str, agent: store.AgentRef) -> None:
    """`[ingest] aggregates = false` (bulk backfill): CDRs stored and classified, no aggregate
    row; a rebuild then gives exactly what ingest with aggregates maintains."""

    async def run(ingestor: store.Ingestor) -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await ingestor.ingest(conn, agent, 1, (1).to_bytes(32, "big"), checked(calls()))

    asyncio.run(run(store.Ingestor(aggregates=False)))
    with psycopg.connect(database_url) as conn:
        assert all(rows == [] for rows in aggregate_snapshot(conn).values())
        stored = conn.execute("SELECT count(*), count(dest_country) FROM cdr").fetchone()
        assert stored is not None and stored[0] == len(calls()) and stored[1] > 0
        aggregates.rebuild_all(conn)
        rebuilt = aggregate_snapshot(conn)
        conn.execute("TRUNCATE cdr, ingest_batch, " + ", ".join(aggregates.ALL_TABLES))
        conn.commit()
    ingest(database_url, agent, (2, calls()))  # the agent's next batch, aggregates maintained
    with psycopg.connect(database_url) as conn:
        assert aggregate_snapshot(conn) == rebuilt
