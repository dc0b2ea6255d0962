"""Helpers for the API tests: two tenants with users, tokens and CDRs stored by the real ingest.

Tenant A ("acme", Europe/Paris) calls French numbers (+33...), tenant B ("bravo",
America/New_York) calls US numbers (+1...): a B number seen in an A answer is a leak.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import auth, store, tenants, users
from collector_testkit import body_of

from tests.fix_db import CollectorServer, create_database, drop_database, with_dbname

PASSWORD = "correct horse battery"
BASE = datetime(2026, 3, 5, 8, 0, tzinfo=UTC)
"""Seeded calls start here, one every 317 minutes (26 days for 120 calls): both tenants' DST
changes (America/New_York 2026-03-08, Europe/Paris 2026-03-29) are inside."""


@dataclass
class Seed:
    tenant_a: int
    tenant_b: int
    switches: dict[str, int]
    tokens: dict[str, str]  # "admin", "a_viewer", "a_admin", "b_viewer"
    cdrs: dict[int, list[CDR]] = field(default_factory=dict)


def make_cdrs(prefix: str, callee_cc: str, count: int, start: datetime = BASE) -> list[CDR]:
    """`count` varied CDRs: every disposition, causes, trunks, directions, ring times."""
    dispositions = [
        Disposition.ANSWERED,
        Disposition.ANSWERED,
        Disposition.NO_ANSWER,
        Disposition.BUSY,
        Disposition.FAILED,
        Disposition.CANCELLED,
    ]
    causes = {
        Disposition.ANSWERED: 16,
        Disposition.NO_ANSWER: 19,
        Disposition.BUSY: 17,
        Disposition.FAILED: 34,
        Disposition.CANCELLED: 487,
    }
    out: list[CDR] = []
    for i in range(count):
        t0 = start + timedelta(minutes=317 * i)
        disp = dispositions[i % len(dispositions)]
        answered = disp is Disposition.ANSWERED
        ring = 2 + i % 7
        billsec = 30 + (i * 37) % 600 if answered else 0
        duration = ring + billsec
        answer = t0 + timedelta(seconds=ring) if answered else None
        out.append(
            CDR(
                key=f"{prefix}-{i}",
                start=t0,
                answer=answer,
                end=t0 + timedelta(seconds=duration),
                duration=duration,
                billsec=billsec,
                disposition=disp,
                direction=Direction.OUTBOUND if i % 4 else Direction.INBOUND,
                caller=f"{prefix}10{i % 10}",
                caller_name=f"{prefix} user {i % 10}",
                callee=f"{callee_cc}{600000000 + i * 7919 % 99999999}",
                caller_e164=None,
                callee_e164=f"+{callee_cc}{600000000 + i * 7919 % 99999999}",
                accountcode=f"{prefix}-acct-{i % 3}",
                hangup_cause=causes[disp] if causes[disp] < 128 else 31,
                sip_code=200 if answered else 486,
                ring_time=ring,
                src_ip="192.0.2.10",
                trunk=f"{prefix}-gw-{i % 2}",
                extra={"raw_uuid": f"{prefix}-uuid-{i}", "sip_hangup_disposition": "send_bye"},
            )
        )
    return out


def _checked(cdrs: list[CDR]) -> list[list[Any]]:
    body = wire.parse_body(body_of(cdrs))
    rows: list[list[Any]] = wire.check_rows(body.fields, body.rows)
    return rows


async def ingest(database_url: str, agent: store.AgentRef, cdrs: list[CDR], seq: int = 1) -> None:
    """Store `cdrs` through the collector's real ingest transaction (aggregates included)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        out = await store.Ingestor().ingest(
            conn, agent, seq, seq.to_bytes(32, "big"), _checked(cdrs)
        )
    assert isinstance(out, store.Stored), out


def add_agent(conn: psycopg.Connection[Any], tenant: int, switch: str) -> store.AgentRef:
    sid = tenants.ensure_switch(conn, tenant, switch)
    agent_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO agent (id, tenant_id, switch_id, public_key) VALUES (%s, %s, %s, %s)",
        (agent_id, tenant, sid, b"\x01" * 32),
    )
    return store.AgentRef(agent_id, tenant, sid)


def seed_two_tenants(database_url: str, per_switch: int = 120) -> Seed:
    with psycopg.connect(database_url, autocommit=True) as conn:
        a = tenants.add_tenant(conn, "acme", "Europe/Paris")
        b = tenants.add_tenant(conn, "bravo", "America/New_York")
        agents = {
            "a-sw1": add_agent(conn, a, "a-sw1"),
            "a-sw2": add_agent(conn, a, "a-sw2"),
            "b-sw1": add_agent(conn, b, "b-sw1"),
        }
        conn.execute(
            "INSERT INTO dial_prefix (prefix, name, country, kind) VALUES"
            " ('336', 'France mobile', 'FR', 'mobile'), ('1', 'North America', NULL, NULL)"
        )
        users.add_user(conn, "root", "superadmin", PASSWORD)
        users.add_user(conn, "a_viewer", "tenant_viewer", PASSWORD, "acme")
        users.add_user(conn, "a_admin", "tenant_admin", PASSWORD, "acme")
        users.add_user(conn, "b_viewer", "tenant_viewer", PASSWORD, "bravo")
        tokens = {
            "admin": auth.create_token(conn, "root"),
            "a_viewer": auth.create_token(conn, "a_viewer"),
            "a_admin": auth.create_token(conn, "a_admin"),
            "b_viewer": auth.create_token(conn, "b_viewer"),
        }
    seed = Seed(a, b, {k: v.switch_id for k, v in agents.items()}, tokens)
    plan = {
        "a-sw1": make_cdrs("a1", "33", per_switch),
        "a-sw2": make_cdrs("a2", "44", per_switch // 2),
        "b-sw1": make_cdrs("b1", "1", per_switch),
    }

    async def load() -> None:
        for name, cdrs in plan.items():
            await ingest(database_url, agents[name], cdrs)

    asyncio.run(load())
    seed.cdrs = {a: plan["a-sw1"] + plan["a-sw2"], b: plan["b-sw1"]}
    return seed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- a real collector process over a seeded database (one per test module) -----------------


@dataclass
class ApiServer:
    url: str
    database_url: str
    seed: Seed

    def get(self, path: str, token: str | None, **params: Any) -> httpx.Response:
        headers = bearer(token) if token else {}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def api_server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    name = create_database(pg_admin_url, migrated_template)
    url = with_dbname(pg_admin_url, name)
    server = CollectorServer(url, tmp_path_factory.mktemp("api-collector"), log_level="info")
    try:
        seed = seed_two_tenants(url)
        server.start()
        yield ApiServer(server.url, url, seed)
    finally:
        server.stop()
        drop_database(pg_admin_url, name)
