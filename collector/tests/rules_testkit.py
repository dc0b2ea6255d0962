"""Helpers for the rules and alerts tests: crafted CDR streams stored by the real ingest."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from analytics_testkit import add_agent, checked
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import evaluator, rules, store

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
"""Evaluations in the tests happen at NOW + offsets (explicit `now`: deterministic)."""
_keys = itertools.count(1)


def call(
    start: datetime,
    *,
    disposition: Disposition = Disposition.ANSWERED,
    billsec: int = 60,
    callee: str = "+33123456789",
    src_ip: str | None = "203.0.113.9",
    trunk: str | None = "gw1",
    sip_code: int | None = None,
    hangup_cause: int | None = None,
    ring: int = 5,
) -> CDR:
    """One outbound call starting at `start`."""
    answered = disposition is Disposition.ANSWERED
    billsec = billsec if answered else 0
    causes = {"ANSWERED": 16, "BUSY": 17, "NO_ANSWER": 19, "FAILED": 34, "CANCELLED": 16}
    return CDR(
        key=f"k{next(_keys)}",
        start=start,
        answer=start + timedelta(seconds=ring) if answered else None,
        end=start + timedelta(seconds=ring + billsec),
        duration=ring + billsec,
        billsec=billsec,
        disposition=disposition,
        direction=Direction.OUTBOUND,
        caller="1001",
        callee=callee,
        callee_e164=callee if callee.startswith("+") else None,
        hangup_cause=hangup_cause if hangup_cause is not None else causes[str(disposition)],
        sip_code=sip_code if sip_code is not None else (200 if answered else 480),
        src_ip=src_ip,
        trunk=trunk,
    )


def spread(start: datetime, n: int, span_s: int = 240, **kw: Any) -> list[CDR]:
    """`n` calls spread over `span_s` seconds from `start`."""
    step = span_s / max(n, 1)
    return [call(start + timedelta(seconds=i * step), **kw) for i in range(n)]


class Switch:
    """A tenant's switch with an enrolled agent; `store()` ingests CDRs through the Ingestor."""

    def __init__(self, database_url: str, tenant: str = "acme", switch: str = "sw1") -> None:
        self.database_url = database_url
        with psycopg.connect(database_url) as conn:
            self.agent = add_agent(conn, tenant, switch)
        self.tenant_id = self.agent.tenant_id
        self.name = switch
        self._seq = itertools.count(1)

    async def store(self, cdrs: list[CDR]) -> None:
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            seq = next(self._seq)
            out = await store.Ingestor().ingest(
                conn, self.agent, seq, seq.to_bytes(32, "big"), checked(cdrs)
            )
        assert isinstance(out, store.Stored), out


async def connect(database_url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(database_url, autocommit=True)


async def add_rule(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, **doc: Any
) -> dict[str, Any]:
    doc.setdefault("window_s", 300)
    doc.setdefault("name", f"rule-{next(_keys)}")
    return await rules.create_rule(conn, tenant_id, doc, "tester")


async def run(
    conn: psycopg.AsyncConnection[Any], at: datetime, tenant_id: int | None = None, **kw: Any
) -> list[tuple[str, str, str]]:
    """One evaluation at `at`: [(rule name, episode key, change)] sorted."""
    changes = await evaluator.evaluate(conn, at, tenant_id=tenant_id, **kw)
    return sorted((c.rule, c.episode_key, c.change) for c in changes)


async def alert_rows(conn: psycopg.AsyncConnection[Any], tenant_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT a.id, r.name, a.episode_key, a.state, a.detail, a.action, a.notify_state,"
        " a.title FROM alert a LEFT JOIN rule r ON r.id = a.rule_id"
        " WHERE a.tenant_id = %s ORDER BY a.id",
        (tenant_id,),
    )
    names = ["id", "rule", "key", "state", "detail", "action", "notify_state", "title"]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
