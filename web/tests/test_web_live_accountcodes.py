"""Calls in progress follow the account-code mapping (migration 0012): a real collector
process; each tenant reads its calls through GET /api/v1/live/calls and its event stream."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent.plugin import LiveEvent
from cdrstats_collector import maintenance, tenants
from web_testkit import Fresh, LiveFeed, SSEReader, fresh_tenant, login, shared_server

from tests.fix_db import CollectorServer


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("lac")) as s:
        yield s


def now() -> float:
    return datetime.now(UTC).timestamp()


def started(call: str, **data: Any) -> LiveEvent:
    return LiveEvent("started", call, now(), {"caller": "1001", "callee": "2002", **data})


def answered(call: str, **data: Any) -> LiveEvent:
    return LiveEvent("answered", call, now(), data)


def snapshot(*calls: dict[str, Any]) -> LiveEvent:
    return LiveEvent("snapshot", at=now(), calls=calls)


def live_calls(client: httpx.Client) -> tuple[dict[str, tuple[Any, ...]], dict[str, int]]:
    """call_id -> (switch name, accountcode), and the counts per switch, as the API answers."""
    r = client.get("/api/v1/live/calls")
    assert r.status_code == 200, r.text
    doc = r.json()
    return {c["call_id"]: (c["switch"], c["accountcode"]) for c in doc["calls"]}, doc["counts"]


def stored(database_url: str, switch_id: int) -> dict[str, tuple[int, str | None, str | None]]:
    """call_id -> (tenant, accountcode, caller) of the switch's calls, all tenants."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT call_id, tenant_id, accountcode, caller FROM live_call WHERE switch_id = %s",
            (switch_id,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def source_tenants(database_url: str, switch_id: int) -> set[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant_id FROM live_source WHERE switch_id = %s", (switch_id,)
        ).fetchall()
    return {r[0] for r in rows}


def shared_switch(server: CollectorServer) -> tuple[Fresh, Fresh, LiveFeed, int, str]:
    """An owner's switch on which the code CUST is mapped to a customer."""
    owner, customer = fresh_tenant(server.database_url), fresh_tenant(server.database_url)
    name = "shared-" + secrets.token_hex(3)
    feed = LiveFeed(server, server.enroll(owner.name, name))
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM switch WHERE name = %s", (name,)).fetchone()
        assert row is not None
        tenants.add_accountcode(conn, "CUST", customer.name, row[0])
    return owner, customer, feed, row[0], name


def test_a_mapped_call_in_progress_is_its_tenants_alone(server: CollectorServer) -> None:
    db = server.database_url
    owner, customer, feed, sid, name = shared_switch(server)
    other, bystander = fresh_tenant(db), fresh_tenant(db)
    code_any = "ANY-" + secrets.token_hex(3)
    with psycopg.connect(db, autocommit=True) as conn:
        tenants.add_accountcode(conn, code_any, other.name)  # on any switch: names none
    elsewhere = LiveFeed(server, server.enroll(bystander.name, "own-pbx"))
    clients = {t.id: login(server.url, t.viewer) for t in (owner, customer, other, bystander)}

    with (
        SSEReader(clients[owner.id], f"/t/{owner.id}/events") as s_owner,
        SSEReader(clients[customer.id], f"/t/{customer.id}/events") as s_customer,
        SSEReader(clients[other.id], f"/t/{other.id}/events") as s_other,
        SSEReader(clients[bystander.id], f"/t/{bystander.id}/events") as s_bystander,
    ):
        feed.send(
            started("own1"), started("c1", accountcode="CUST"), started("x1", accountcode=code_any)
        )
        assert live_calls(clients[owner.id]) == ({"own1": (name, None)}, {str(sid): 1})
        assert live_calls(clients[customer.id]) == ({"c1": (name, "CUST")}, {str(sid): 1})
        # the switch is named to a tenant mapped on any switch too, while it carries its calls
        assert live_calls(clients[other.id]) == ({"x1": (name, code_any)}, {str(sid): 1})

        # an event that leaves the code out keeps the call's tenant; a new code moves it
        feed.send(answered("c1", caller_name="Zoë"), answered("own1", accountcode="CUST"))
        assert live_calls(clients[owner.id]) == ({}, {str(sid): 0})
        assert live_calls(clients[customer.id]) == (
            {"c1": (name, "CUST"), "own1": (name, "CUST")},
            {str(sid): 2},
        )
        feed.send(answered("x1", accountcode="NOT-MAPPED"))  # back to the switch's tenant
        assert live_calls(clients[owner.id]) == ({"x1": (name, "NOT-MAPPED")}, {str(sid): 1})
        assert live_calls(clients[other.id]) == ({}, {})  # its last call there ended: no row
        assert source_tenants(db, sid) == {owner.id, customer.id}

        # a mapping added while the collector runs applies to the next live message
        with psycopg.connect(db, autocommit=True) as conn:
            tenants.add_accountcode(conn, "LATE", other.name, sid)
        feed.send(started("late1", accountcode="LATE"))
        assert live_calls(clients[other.id]) == ({"late1": (name, "LATE")}, {str(sid): 1})
        elsewhere.started("b1", "3003", "4004")

        # one event per message for each tenant with calls on the switch (0: its last ended)
        def counts(stream: SSEReader, n: int, tenant: int, switch: int = sid) -> list[int]:
            out = []
            for _ in range(n):
                _id, kind, data = stream.next_event()
                assert (kind, data["tenant_id"], data["switch_id"]) == ("live", tenant, switch)
                out.append(data["count"])
            return out

        assert counts(s_owner, 4, owner.id) == [1, 0, 1, 1]
        assert counts(s_customer, 4, customer.id) == [1, 2, 2, 2]
        assert counts(s_other, 4, other.id) == [1, 1, 0, 1]
        # the bystander's first event is its own switch's: none of the shared switch's came
        with psycopg.connect(db) as conn:
            own = conn.execute(
                "SELECT id FROM switch WHERE tenant_id = %s", (bystander.id,)
            ).fetchone()
        assert own is not None
        assert counts(s_bystander, 1, bystander.id, own[0]) == [1]
    assert live_calls(clients[bystander.id]) == ({"b1": ("own-pbx", None)}, {str(own[0]): 1})

    # the per-minute peaks, per tenant (what concurrency rules read)
    with psycopg.connect(db) as conn:
        peaks = conn.execute(
            "SELECT tenant_id, max(calls_max) FROM live_count_minute WHERE switch_id = %s"
            " GROUP BY tenant_id",
            (sid,),
        ).fetchall()
    assert dict(peaks) == {owner.id: 1, customer.id: 2, other.id: 1}


def test_snapshot_and_expiry_span_every_tenant_of_a_source(server: CollectorServer) -> None:
    db = server.database_url
    owner, customer, feed, sid, _name = shared_switch(server)
    c_view = login(server.url, customer.viewer)
    feed.send(started("a"), started("b", accountcode="CUST"))
    assert {k: v[0] for k, v in stored(db, sid).items()} == {"a": owner.id, "b": customer.id}

    # a snapshot resynchronises both tenants' calls: those it leaves out end, a call it shows
    # without its code keeps its tenant (and code), the others go where their codes say
    feed.send(
        snapshot(
            {"call_id": "b", "caller": "snap-b", "state": "answered"},
            {"call_id": "c", "caller": "snap-c", "accountcode": "CUST"},
            {"call_id": "d", "caller": "snap-d"},
        )
    )
    assert stored(db, sid) == {
        "b": (customer.id, "CUST", "snap-b"),
        "c": (customer.id, "CUST", "snap-c"),
        "d": (owner.id, None, "snap-d"),
    }
    feed.send(snapshot({"call_id": "d", "caller": "snap-d"}))
    assert set(stored(db, sid)) == {"d"}
    assert source_tenants(db, sid) == {owner.id}  # the customer's source row went with its calls
    assert live_calls(c_view) == ({}, {})

    # a source that stops reporting expires for every tenant at once
    feed.send(started("e", accountcode="CUST"))
    assert source_tenants(db, sid) == {owner.id, customer.id}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE live_source SET expires_at = now() - interval '1 second' WHERE switch_id = %s",
            (sid,),
        )
    assert live_calls(c_view) == ({}, {})
    # events alone do not bring an expired source's calls back, whichever tenant they had
    feed.send(started("f"))
    assert {k: v[0] for k, v in stored(db, sid).items()} == {"f": owner.id}
    assert source_tenants(db, sid) == {owner.id}
    feed.send(started("g", accountcode="CUST"))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE live_source SET expires_at = now() - interval '1 second' WHERE switch_id = %s",
            (sid,),
        )

    async def maintain() -> maintenance.Report:
        async with await psycopg.AsyncConnection.connect(db) as conn:
            return await maintenance.run(conn)

    assert asyncio.run(maintain()).live_sources_pruned >= 2
    assert stored(db, sid) == {} and source_tenants(db, sid) == set()
