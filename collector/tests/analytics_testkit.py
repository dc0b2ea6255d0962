"""Helpers for the analytics tests: tenants/switches/agents, checked rows, aggregate snapshots."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR
from cdrstats_collector import aggregates, store
from collector_testkit import body_of


def checked(cdrs: list[CDR]) -> list[list[Any]]:
    """Rows as the collector's ingest route hands them to the store."""
    body = wire.parse_body(body_of(cdrs))
    return wire.check_rows(body.fields, body.rows)


def add_agent(
    conn: psycopg.Connection[Any],
    tenant: str = "t",
    switch: str = "sw",
    timezone: str = "UTC",
    *,
    country: str | None = None,
    international_prefix: str = "00",
    national_prefix: str = "0",
) -> store.AgentRef:
    """An enrolled agent for `switch` of `tenant` (both created when missing)."""
    row = conn.execute(
        "INSERT INTO tenant (name, timezone) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET timezone = EXCLUDED.timezone RETURNING id",
        (tenant, timezone),
    ).fetchone()
    assert row is not None
    tenant_id = int(row[0])
    row = conn.execute(
        "INSERT INTO switch (tenant_id, name, country, international_prefix, national_prefix)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO UPDATE"
        " SET country = EXCLUDED.country RETURNING id",
        (tenant_id, switch, country, international_prefix, national_prefix),
    ).fetchone()
    assert row is not None
    switch_id = int(row[0])
    agent_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO agent (id, tenant_id, switch_id, public_key) VALUES (%s, %s, %s, %s)",
        (agent_id, tenant_id, switch_id, b"\x01" * 32),
    )
    conn.commit()
    return store.AgentRef(agent_id, tenant_id, switch_id)


def aggregate_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every aggregate table's rows, sorted by primary key."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in aggregates.ALL_TABLES:
        order = ", ".join(aggregates.primary_key(table))
        out[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    return out


def table_dicts(conn: psycopg.Connection[Any], table: str) -> list[dict[str, Any]]:
    order = ", ".join(aggregates.primary_key(table))
    cur = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
