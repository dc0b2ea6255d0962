"""Account codes mapped to tenants (migration 0010), applied in the ingest transaction, and
the spool status agents send with their batches."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from analytics_testkit import add_agent, aggregate_snapshot, checked
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Disposition
from cdrstats_collector import aggregates, search, store, tenants

T0 = datetime(2026, 3, 10, 22, 30, tzinfo=UTC)  # the 10th in UTC, the 11th in Asia/Tokyo


def call(key: str, code: str, minutes: int = 0, billsec: int = 30) -> CDR:
    start = T0 + timedelta(minutes=minutes)
    return CDR(
        key=key,
        start=start,
        answer=start + timedelta(seconds=5),
        end=start + timedelta(seconds=5 + billsec),
        duration=5 + billsec,
        billsec=billsec,
        disposition=Disposition.ANSWERED,
        callee="+33612345678",
        accountcode=code,
    )


@pytest.fixture
def world(database_url: str) -> dict[str, Any]:
    """acme owns sw1 and sw2 (UTC); bravo (Asia/Tokyo) has no switch, only mapped codes."""
    with psycopg.connect(database_url) as conn:
        agent = add_agent(conn, "acme", "sw1", "UTC")
        other = add_agent(conn, "acme", "sw2", "UTC")
        tenants.add_tenant(conn, "bravo", "Asia/Tokyo")
        on_sw1 = tenants.add_accountcode(conn, "B-1", "bravo", agent.switch_id)
        tenants.add_accountcode(conn, "B-ANY", "bravo")
        tenants.add_accountcode(conn, "ONLY-SW2", "bravo", other.switch_id)
        tenants.add_accountcode(conn, "MINE", "bravo")  # any switch ...
        tenants.add_accountcode(conn, "MINE", "acme", agent.switch_id)  # ... but sw1's wins
        conn.commit()
        bravo = tenants.tenant_id(conn, "bravo")
    return {"agent": agent, "bravo": bravo, "on_sw1": on_sw1}


def ingest(
    database_url: str,
    agent: store.AgentRef,
    batches: list[tuple[int, list[CDR]]],
    spool: wire.SpoolStatus | None = None,
) -> list[store.Outcome]:
    async def run() -> list[store.Outcome]:
        ingestor = store.Ingestor()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return [
                await ingestor.ingest(
                    conn, agent, seq, seq.to_bytes(32, "big"), checked(cdrs), spool=spool
                )
                for seq, cdrs in batches
            ]

    return asyncio.run(run())


def tenant_of_keys(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT key, tenant_id FROM cdr").fetchall())


def rebuilt_equals_ingested(database_url: str, *tenant_ids: int) -> None:
    """The aggregates kept at ingest equal a rebuild from the stored CDRs, tenant by tenant."""
    with psycopg.connect(database_url) as conn:
        kept = aggregate_snapshot(conn)
        for tid in tenant_ids:
            aggregates.rebuild(conn, tid, T0 - timedelta(days=1), T0 + timedelta(days=2))
        assert aggregate_snapshot(conn) == kept


def test_mapped_codes_go_to_their_tenant_with_their_aggregates(
    database_url: str, world: dict[str, Any]
) -> None:
    agent, bravo = world["agent"], world["bravo"]
    acme = agent.tenant_id
    first = [
        call("plain", ""),
        call("b1", "B-1"),
        call("bany", "B-ANY", minutes=40),  # 23:10 UTC: the 11th in Tokyo, the 10th in UTC
        call("sw2only", "ONLY-SW2"),  # mapped on another switch: stays with acme
        call("mine", "MINE"),  # sw1's own mapping wins over the any-switch one
    ]
    (out,) = ingest(database_url, agent, [(1, first)])
    assert isinstance(out, store.Stored) and out.ack.accepted == 5
    assert tenant_of_keys(database_url) == {
        "plain": acme,
        "b1": bravo,
        "bany": bravo,
        "sw2only": acme,
        "mine": acme,
    }
    with psycopg.connect(database_url) as conn:
        calls = dict(
            conn.execute("SELECT tenant_id, sum(calls) FROM agg_kpi_hour GROUP BY 1").fetchall()
        )
        assert calls == {acme: 3, bravo: 2}
        days = conn.execute(
            "SELECT day, calls FROM agg_kpi_day WHERE tenant_id = %s ORDER BY day", (bravo,)
        ).fetchall()
        assert [(d.isoformat(), n) for d, n in days] == [("2026-03-11", 2)]  # Tokyo days
        peaks = conn.execute(
            "SELECT max(calls) FROM agg_conc_minute WHERE tenant_id = %s AND switch_id = 0",
            (bravo,),
        ).fetchone()
        assert peaks == (1,)
    rebuilt_equals_ingested(database_url, acme, bravo)

    # a second batch with duplicates takes the dedup path: only new rows count, per tenant
    (out,) = ingest(database_url, agent, [(2, [*first, call("b1-2", "B-1", minutes=1)])])
    assert isinstance(out, store.Stored)
    assert (out.ack.accepted, out.ack.duplicates) == (1, 5)
    assert tenant_of_keys(database_url)["b1-2"] == bravo
    rebuilt_equals_ingested(database_url, acme, bravo)


def test_a_change_of_mapping_applies_to_the_next_batch_of_a_running_ingestor(
    database_url: str, world: dict[str, Any]
) -> None:
    agent, bravo = world["agent"], world["bravo"]

    async def run() -> None:
        ingestor = store.Ingestor()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await ingestor.ingest(conn, agent, 1, b"1" * 32, checked([call("k1", "B-1")]))
            with psycopg.connect(database_url) as admin:
                tenants.remove_accountcode(admin, world["on_sw1"])
                tenants.add_accountcode(admin, "NEW", "bravo", agent.switch_id)
            batch = [call("k2", "B-1", 1), call("k3", "NEW", 2)]
            await ingestor.ingest(conn, agent, 2, b"2" * 32, checked(batch))

    asyncio.run(run())
    assert tenant_of_keys(database_url) == {"k1": bravo, "k2": agent.tenant_id, "k3": bravo}


def test_each_tenant_sees_only_its_calls_and_the_switch_they_came_from(
    database_url: str, world: dict[str, Any]
) -> None:
    agent, bravo = world["agent"], world["bravo"]
    ingest(database_url, agent, [(1, [call("a-call", "ACME-1"), call("b-call", "B-1")])])
    with psycopg.connect(database_url) as conn:  # a switch no mapping names
        sw3 = add_agent(conn, "acme", "sw3", "UTC")
    ingest(database_url, sw3, [(1, [call("b-any", "B-ANY", minutes=1)])])

    async def seen(tenant: int) -> tuple[set[str], list[tuple[str, str | None]], set[str]]:
        """Calls (with switch names) and mappings a tenant reads under row-level security."""
        async with (
            await psycopg.AsyncConnection.connect(database_url) as conn,
            conn.transaction(),
        ):
            await conn.execute("SET LOCAL ROLE cdrstats_reader")
            await conn.execute("SELECT set_config('cdrstats.tenant_id', %s, true)", (str(tenant),))
            # no tenant condition of our own: the policy alone must hide the other's
            cur = await conn.execute("SELECT key FROM cdr")
            keys = {r[0] for r in await cur.fetchall()}
            doc = await search.search(conn, tenant, ZoneInfo("UTC"), {}, 100, None)
            cur = await conn.execute("SELECT accountcode FROM accountcode_map")
            maps = {r[0] for r in await cur.fetchall()}
        return keys, [(item["key"], item["switch"]) for item in doc["items"]], maps

    assert asyncio.run(seen(bravo)) == (
        {"b-call", "b-any"},
        [("b-any", "sw3"), ("b-call", "sw1")],
        {"B-1", "B-ANY", "ONLY-SW2", "MINE"},
    )
    assert asyncio.run(seen(agent.tenant_id)) == ({"a-call"}, [("a-call", "sw1")], {"MINE"})


def test_notify_names_every_tenant_that_got_calls(database_url: str, world: dict[str, Any]) -> None:
    agent, bravo = world["agent"], world["bravo"]
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        ingest(database_url, agent, [(1, [call("a", ""), call("b", "B-1"), call("c", "B-ANY", 1)])])
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    counts = {json.loads(p)["tenant_id"]: json.loads(p)["accepted"] for p in got}
    assert counts == {agent.tenant_id: 1, bravo: 2}


def test_mapping_administration_names_what_is_wrong(
    database_url: str, world: dict[str, Any]
) -> None:
    agent = world["agent"]
    with psycopg.connect(database_url) as conn:
        with pytest.raises(tenants.InvalidArgument, match="accountcode"):
            tenants.add_accountcode(conn, "  ", "bravo")
        with pytest.raises(tenants.InvalidArgument, match="accountcode"):
            tenants.add_accountcode(conn, "x" * 101, "bravo")
        with pytest.raises(tenants.UnknownTenant):
            tenants.add_accountcode(conn, "C", "nobody")
        with pytest.raises(tenants.InvalidArgument, match="no switch with id 999999"):
            tenants.add_accountcode(conn, "C", "bravo", 999_999)
        with pytest.raises(tenants.AdminError, match="already mapped on switch"):
            tenants.add_accountcode(conn, "B-1", "acme", agent.switch_id)
        with pytest.raises(tenants.AdminError, match="already mapped on any switch"):
            tenants.add_accountcode(conn, "B-ANY", "acme")
        with pytest.raises(tenants.InvalidArgument, match="no account-code mapping"):
            tenants.remove_accountcode(conn, 999_999)
        listed = tenants.accountcodes(conn)
        assert len(listed) == 5
        assert {(m["accountcode"], m["switch"], m["tenant"]) for m in listed} >= {
            ("B-1", "acme / sw1", "bravo"),
            ("B-ANY", None, "bravo"),
        }
        removed = tenants.remove_accountcode(conn, world["on_sw1"])
        assert removed["accountcode"] == "B-1" and removed["tenant"] == "bravo"
        assert len(tenants.accountcodes(conn)) == 4


def test_the_spool_status_of_a_batch_is_kept_on_the_agent_row(
    database_url: str, world: dict[str, Any]
) -> None:
    agent = world["agent"]
    status = wire.SpoolStatus(batches=4, cdrs=12_000, lag_s=37.5)
    ingest(database_url, agent, [(1, [call("s1", "")])], spool=status)
    query = (
        "SELECT spool_batches, spool_cdrs, spool_lag_s, status_at IS NOT NULL"
        " FROM agent WHERE id = %s"
    )
    with psycopg.connect(database_url) as conn:
        assert conn.execute(query, (agent.id,)).fetchone() == (4, 12_000, 37.5, True)
    # an agent that does not report it (an older one) leaves the last figures as they were
    ingest(database_url, agent, [(2, [call("s2", "")])])
    with psycopg.connect(database_url) as conn:
        assert conn.execute(query, (agent.id,)).fetchone() == (4, 12_000, 37.5, True)
