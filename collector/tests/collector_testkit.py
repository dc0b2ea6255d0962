"""Helpers for the collector tests: CDRs, signed batches, database snapshots."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from nacl.signing import SigningKey

NOW = datetime.now(UTC).replace(microsecond=123456)


def full_cdr(i: int, start: datetime | None = None) -> CDR:
    start = start or NOW - timedelta(minutes=10 + i)
    return CDR(
        key=f"call-{i}",
        start=start,
        answer=start + timedelta(seconds=4, microseconds=1),
        end=start + timedelta(seconds=64, microseconds=999_999),
        duration=64,
        billsec=60,
        disposition=Disposition.ANSWERED,
        direction=Direction.OUTBOUND,
        caller="1001",
        caller_name="Zoë «Ω» O'Brien",
        callee="0033123456789",
        caller_e164="+15551001",
        callee_e164="+33123456789",
        accountcode="acme-42",
        hangup_cause=16,
        sip_code=200,
        ring_time=4,
        src_ip="2001:db8::1" if i % 2 else f"192.0.2.{i % 250}",
        read_codec="PCMA",
        write_codec="G722",
        trunk="gw-orange",
        user_agent="FreeSWITCH-mod_sofia/1.10.11",
        call_group="sales",
        extra={"uuid": f"u-{i}", "nested": {"list": [1, 2.5, None, True], "s": "é"}, "n": i},
    )


def bare_cdr(i: int, start: datetime | None = None) -> CDR:
    """A CDR with every optional field left empty (NULLs in the database)."""
    return CDR(
        key=f"bare-{i}",
        start=start or NOW - timedelta(minutes=30 + i),
        disposition=Disposition.NO_ANSWER,
    )


def body_of(cdrs: list[CDR]) -> bytes:
    return wire.build_body([wire.pack_cdr(c) for c in cdrs])


def batch(
    agent_id: str, key: SigningKey, seq: int, body: bytes, sent_at: int | None = None
) -> bytes:
    return wire.seal_batch(agent_id, seq, body, key, sent_at=sent_at)


def post(url: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/api/v1/ingest",
        content=data,
        headers={"content-type": "application/msgpack", **headers},
        timeout=30,
    )


def expected_row(cdr: CDR) -> tuple[Any, ...]:
    """What `cdr` must look like when read back from the cdr table (CDR columns only)."""
    return (
        cdr.key,
        cdr.start,
        cdr.answer,
        cdr.end,
        cdr.duration,
        cdr.billsec,
        str(cdr.disposition),
        str(cdr.direction),
        cdr.caller,
        cdr.caller_name,
        cdr.callee,
        cdr.caller_e164,
        cdr.callee_e164,
        cdr.accountcode,
        cdr.hangup_cause,
        cdr.sip_code,
        cdr.ring_time,
        None if cdr.src_ip is None else ipaddress.ip_address(cdr.src_ip),
        cdr.read_codec,
        cdr.write_codec,
        cdr.trunk,
        cdr.user_agent,
        cdr.call_group,
        cdr.extra,
    )


CDR_SELECT = (
    "SELECT key, start_time, answer_time, end_time, duration, billsec, disposition,"
    " direction, caller, caller_name, callee, caller_e164, callee_e164, accountcode,"
    " hangup_cause, sip_code, ring_time, src_ip, read_codec, write_codec, trunk, user_agent,"
    " call_group, extra FROM cdr"
)


def stored_rows(database_url: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return {r[0]: tuple(r) for r in conn.execute(CDR_SELECT).fetchall()}


def snapshot(database_url: str) -> tuple[Any, ...]:
    """Everything an ingest may change: CDR rows, batch records, agents' seq and last seen."""
    with psycopg.connect(database_url) as conn:
        return (
            conn.execute("SELECT count(*), coalesce(sum(hashtext(key)), 0) FROM cdr").fetchone(),
            conn.execute("SELECT agent_id, seq, ack FROM ingest_batch ORDER BY 1, 2").fetchall(),
            conn.execute("SELECT id, last_seq, last_seen_at FROM agent ORDER BY id").fetchall(),
        )
