"""Cost of one rules evaluation (collector/cdrstats_collector/evaluator.py) at modest volume.

Loads N CDRs over the last 24 h of one tenant (3 switches, 200 source addresses, six
destinations, some of them on the risk list) plus N/4 in the same hours of each of the four
weeks before (the baselines), through the collector's real ingest transaction. Then 8 rules of
every kind on each of the windows 300 s, 3600 s and 86400 s, evaluated at a fixed `now`
(alerts opened on the first run, held on the next ones, as in production).

Figures: median ms of one evaluation per window (8 rules), of all 24, and the ratio of the
24-hour evaluation to a bare `count(*)` over the same 24 hours of the tenant's CDRs (same run).
`--quick`: 20,000 CDRs. Last line: one JSON object.

    .venv/bin/python bench/rules.py [--cdrs 100000] [--quick] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_collector import embedded, evaluator, migrate, rules, store
from psycopg import conninfo

CALLEES = ["+33612345678", "+442071234567", "+4915112345678", "+12125550100", "+88213456789"]
DISPOSITIONS = [Disposition.ANSWERED] * 5 + [
    Disposition.NO_ANSWER,
    Disposition.BUSY,
    Disposition.FAILED,
]


def make(rnd: random.Random, start: datetime, i: int) -> CDR:
    disp = rnd.choice(DISPOSITIONS)
    answered = disp is Disposition.ANSWERED
    billsec = rnd.randint(1, 600) if answered else 0
    callee = rnd.choice(CALLEES)
    return CDR(
        key=f"b{i}",
        start=start,
        answer=start + timedelta(seconds=4) if answered else None,
        end=start + timedelta(seconds=4 + billsec),
        duration=4 + billsec,
        billsec=billsec,
        disposition=disp,
        direction=Direction.OUTBOUND,
        caller="1001",
        callee=callee,
        callee_e164=callee,
        hangup_cause=16 if answered else 19,
        sip_code=200 if answered else rnd.choice([404, 480, 486]),
        src_ip=f"198.51.100.{rnd.randint(1, 200)}",
        trunk=f"gw{rnd.randint(1, 4)}",
    )


async def load(url: str, n: int, now: datetime) -> int:
    rnd = random.Random(1)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        tid = int((await (await conn.execute(
            "INSERT INTO tenant (name) VALUES ('bench') RETURNING id"
        )).fetchone() or (0,))[0])  # fmt: skip
        agents = []
        for s in range(3):
            row = await (
                await conn.execute(
                    "INSERT INTO switch (tenant_id, name) VALUES (%s, %s) RETURNING id",
                    (tid, f"sw{s}"),
                )
            ).fetchone()
            assert row is not None
            agent = store.AgentRef(uuid.uuid4(), tid, int(row[0]))
            await conn.execute(
                "INSERT INTO agent (id, tenant_id, switch_id, public_key) VALUES (%s, %s, %s, %s)",
                (agent.id, tid, agent.switch_id, b"\x01" * 32),
            )
            agents.append(agent)
    ingestor = store.Ingestor()
    seqs = [0, 0, 0]
    i = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for shift, count in [(0, n)] + [(k, n // 4) for k in range(1, 5)]:
            batch: list[CDR] = []
            for _ in range(count):
                at = now - timedelta(days=7 * shift, seconds=rnd.uniform(60, 86400))
                batch.append(make(rnd, at, i))
                i += 1
                if len(batch) == 5000 or _ == count - 1:
                    s = rnd.randrange(3)
                    seqs[s] += 1
                    body = wire.parse_body(wire.build_body([wire.pack_cdr(c) for c in batch]))
                    rows = wire.check_rows(body.fields, body.rows)
                    out = await ingestor.ingest(
                        conn, agents[s], seqs[s], seqs[s].to_bytes(32, "big"), rows
                    )
                    assert isinstance(out, store.Stored), out
                    batch = []
    return tid


async def run(url: str, n: int) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.monotonic()
    tid = await load(url, n, now)
    loaded_s = time.monotonic() - started
    out: dict[str, Any] = {"cdrs_24h": n, "cdrs_baseline": 4 * (n // 4), "rules": 24}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ANALYZE")
        for w in (300, 3600, 86400):
            docs: list[dict[str, Any]] = [
                {"kind": "asr", "params": {"op": "below", "threshold": 40, "per": "switch"}},
                {"kind": "calls", "params": {"op": "drops_by_pct", "threshold": 50}},
                {"kind": "acd", "params": {"op": "rises_by_pct", "threshold": 50, "per": "trunk"}},
                {"kind": "concurrent", "params": {"op": "above", "threshold": 1000}},
                {"kind": "scanner"},
                {"kind": "risk_destination"},
                {"kind": "new_country"},
                {"kind": "short_calls"},
            ]
            for doc in docs:
                doc.update(name=f"{doc['kind']} {w}", window_s=w)
                await rules.create_rule(conn, tid, doc, "bench")

        async def timed(enabled: str, args: tuple[Any, ...] = ()) -> float:
            await conn.execute(f"UPDATE rule SET enabled = ({enabled})", args)
            await evaluator.evaluate(conn, now)  # opens the alerts: not measured
            times = []
            for _ in range(5):
                t = time.perf_counter()
                await evaluator.evaluate(conn, now)
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000

        for w in (300, 3600, 86400):
            out[f"eval_{w}s_ms"] = round(await timed("window_s = %s", (w,)), 1)
        out["eval_all_ms"] = round(await timed("true"), 1)
        raw = []
        for _ in range(5):
            t = time.perf_counter()
            await conn.execute(
                "SELECT count(*) FROM cdr WHERE tenant_id = %s AND start_time >= %s"
                " AND start_time < %s",
                (tid, now - timedelta(days=1), now),
            )
            raw.append(time.perf_counter() - t)
        out["raw_count_24h_ms"] = round(statistics.median(raw) * 1000, 1)
        out["eval_86400s_vs_raw"] = round(out["eval_86400s_ms"] / out["raw_count_24h_ms"], 1)
        cur = await conn.execute("SELECT count(*) FROM alert")
        out["alerts"] = int((await cur.fetchone() or (0,))[0])
    out["load_s"] = round(loaded_s, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--cdrs", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.cdrs
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_rules_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        url = conninfo.make_conninfo(admin, dbname=name)
        migrate.upgrade(url)
        print(json.dumps(asyncio.run(run(url, n))))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
