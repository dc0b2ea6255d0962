"""Property: whatever stream of batches arrives (duplicates inside a batch, CDRs sent again
with new content, redeliveries, late CDRs, several tenants, switches and timezones), every
aggregate the ingest path maintained equals a from-scratch recomputation over `cdr`.

Two references: `aggregates.rebuild` (set-based SQL over the cdr table), and, for the
headline KPIs and concurrent calls, queries written here from the definitions alone.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from analytics_testkit import add_agent, aggregate_snapshot, checked
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import aggregates, store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE = datetime(2026, 3, 29, 0, 40, 12, 345678, tzinfo=UTC)  # Europe's DST night
AGENTS = (
    ("acme", "sw1", "Asia/Kolkata", None),  # +05:30: local days cut UTC hours
    ("acme", "sw2", "Asia/Kolkata", "IN"),
    ("globex", "sbc", "America/St_Johns", None),  # -03:30 with DST
    ("initech", "pbx", "Europe/Paris", "FR"),
)
CALLEES = (
    "0033612345678",
    "0612345678",
    "+442071234567",
    "0044 20 7123 4567",
    "1001",
    "",
    "0800123456",
    "9",
)


@st.composite
def cdrs(draw: Any) -> CDR:
    minutes_back = draw(
        st.one_of(st.integers(0, 300), st.integers(0, 60 * 24 * 50))  # recent, or late
    )
    start = BASE - timedelta(minutes=minutes_back, seconds=draw(st.integers(0, 59)))
    duration = draw(st.one_of(st.integers(0, 400), st.integers(0, 200_000)))
    billsec = draw(st.integers(0, duration))
    end_mode = draw(st.sampled_from(["none", "exact", "fraction", "before"]))
    end = {
        "none": None,
        "exact": start + timedelta(seconds=duration),
        "fraction": start + timedelta(seconds=duration, microseconds=654321),
        "before": start - timedelta(seconds=5),
    }[end_mode]
    return CDR(
        key=f"k{draw(st.integers(0, 12))}",
        start=start,
        end=end,
        duration=duration,
        billsec=billsec,
        disposition=draw(st.sampled_from(list(Disposition))),
        direction=draw(st.sampled_from(list(Direction))),
        callee=draw(st.sampled_from(CALLEES)),
        callee_e164=draw(st.sampled_from([None, None, "+15551234567", "+33123456789"])),
        hangup_cause=draw(st.sampled_from([None, 16, 17, 19, 21, 34, 487])),
        sip_code=draw(st.sampled_from([None, 200, 404, 486, 503])),
        ring_time=draw(st.one_of(st.none(), st.integers(0, 60))),
        trunk=draw(st.sampled_from([None, "gw-a", "gw-b"])),
    )


def variant(cdr: CDR, disposition: Disposition, billsec: int) -> CDR:
    """The same call (natural key and start) with other content: must stay a duplicate."""
    return CDR(
        key=cdr.key,
        start=cdr.start,
        end=cdr.end,
        duration=cdr.duration + 7,
        billsec=billsec,
        disposition=disposition,
        direction=cdr.direction,
        callee="+5511987654321",
        trunk="gw-other",
    )


@pytest.fixture
def agents(database_url: str) -> list[store.AgentRef]:
    with psycopg.connect(database_url) as conn:
        return [
            add_agent(conn, tenant, switch, tz, country=country)
            for tenant, switch, tz, country in AGENTS
        ]


def _reset(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE cdr, ingest_batch, " + ", ".join(aggregates.ALL_TABLES))
        conn.execute("UPDATE agent SET last_seq = 0")


_KPI_REFERENCE = """
SELECT tenant_id, date_trunc('hour', start_time, 'UTC'), switch_id, direction,
       count(*), count(*) FILTER (WHERE disposition = 'ANSWERED'),
       count(*) FILTER (WHERE disposition IN ('ANSWERED', 'BUSY', 'NO_ANSWER', 'CANCELLED')
                              OR hangup_cause IN (17, 18, 19, 20, 21)),
       sum(duration), sum(billsec), coalesce(sum(ring_time), 0), count(ring_time)
FROM cdr GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
_KPI_STORED = """
SELECT tenant_id, hour, switch_id, direction, calls, answered, ner_ok, duration_sum,
       billsec_sum, ring_time_sum, ring_count
FROM agg_kpi_hour ORDER BY 1, 2, 3, 4
"""


def _concurrency_reference(conn: psycopg.Connection[Any]) -> dict[tuple[int, int, int], int]:
    """Calls in progress per (tenant, switch or 0, minute), from the definition."""
    out: dict[tuple[int, int, int], int] = {}
    rows = conn.execute(
        "SELECT tenant_id, switch_id, start_time, end_time, duration FROM cdr"
    ).fetchall()
    for tenant, switch, start, end, duration in rows:
        end = end if end is not None else start + timedelta(seconds=duration)
        first = int(start.timestamp()) // 60
        last = first
        while last + 1 < first + aggregates.MAX_SPAN_MINUTES and end > datetime.fromtimestamp(
            (last + 1) * 60, UTC
        ):
            last += 1
        for m in range(first, last + 1):
            for s in (switch, 0):
                out[(tenant, s, m)] = out.get((tenant, s, m), 0) + 1
    return out


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_aggregates_equal_a_recomputation(
    database_url: str, agents: list[store.AgentRef], data: st.DataObject
) -> None:
    _reset(database_url)
    sent: list[tuple[int, int, bytes, list[CDR]]] = []  # agent index, seq, digest, cdrs
    last_seq = [0] * len(agents)
    plan: list[tuple[int, int, bytes, list[CDR]]] = []
    for _ in range(data.draw(st.integers(1, 7), label="batches")):
        mine = sent + plan
        action = data.draw(
            st.sampled_from(["new", "new", "again", "redeliver"] if mine else ["new"])
        )
        if action == "redeliver":
            plan.append(data.draw(st.sampled_from(mine)))
            continue
        a = data.draw(st.integers(0, len(agents) - 1), label="agent")
        batch = data.draw(st.lists(cdrs(), max_size=10), label="cdrs")
        if action == "again":
            earlier = [c for (i, _, _, cs) in mine if i == a for c in cs]
            if earlier:
                picked = data.draw(st.lists(st.sampled_from(earlier), max_size=5))
                batch += picked
                batch += [
                    variant(c, data.draw(st.sampled_from(list(Disposition))), 1) for c in picked
                ]
        duplicate_inside: bool = data.draw(st.booleans(), label="duplicate inside")
        if batch and duplicate_inside:
            batch.append(batch[0])
        last_seq[a] += 1
        digest = hashlib.sha256(repr((a, last_seq[a], batch)).encode()).digest()
        plan.append((a, last_seq[a], digest, batch))

    async def run() -> None:
        ingestor = store.Ingestor()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            for a, seq, digest, batch in plan:
                out = await ingestor.ingest(conn, agents[a], seq, digest, checked(batch))
                assert isinstance(out, store.Stored | store.Redelivery), out

    asyncio.run(run())

    with psycopg.connect(database_url) as conn:
        maintained = aggregate_snapshot(conn)
        kpi = conn.execute(_KPI_STORED).fetchall()
        assert kpi == conn.execute(_KPI_REFERENCE).fetchall()
        minutes = {
            (t, s, int(m.timestamp()) // 60): c
            for t, s, m, c in conn.execute("SELECT * FROM agg_conc_minute").fetchall()
        }
        assert minutes == _concurrency_reference(conn)
        total = conn.execute("SELECT count(*) FROM cdr").fetchone()
        assert total is not None
        assert sum(r[4] for r in kpi) == total[0]
        conn.execute("TRUNCATE " + ", ".join(aggregates.ALL_TABLES))
        aggregates.rebuild_all(conn)
        conn.commit()
        rebuilt = aggregate_snapshot(conn)
    for table in aggregates.ALL_TABLES:
        assert maintained[table] == rebuilt[table], table
