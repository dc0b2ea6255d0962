"""Live calls, agent → collector: event throughput and latency.

    .venv/bin/python bench/live.py [--quick] [--events 20000] [--rate 200] [--seconds 10]

A real `cdrstats serve` subprocess and PostgreSQL; the agent side is the real `LiveChannel`
(conversion, buffer, signed messages, HTTP) in this process, fed as fast as it takes events.

- throughput: started/ended events (about 100 calls in progress) pushed through the channel
  until the collector has applied them all, in events/s; baseline: the same events in
  messages sealed beforehand and posted back to back (collector and PostgreSQL alone).
- latency: events at `--rate`/s; for each, from `accept()` in the agent to the collector's
  `NOTIFY cdrstats_live` (committed) received by a listener — with the default
  `flush_interval_s` (0.5 s) and with 0.05 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cdrstats_agent import wire
from cdrstats_agent.config import LiveSettings
from cdrstats_agent.live import LiveChannel
from cdrstats_agent.plugin import LiveEvent
from cdrstats_collector import embedded, migrate
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fix_db import CollectorServer, EnrolledAgent

DATA = {"caller": "1001", "callee": "33142278000", "direction": "outbound", "src_ip": "192.0.2.1"}
IN_PROGRESS = 100


def events(n: int, prefix: str) -> list[LiveEvent]:
    """`n` started events and the ended events that keep ~IN_PROGRESS calls going."""
    out: list[LiveEvent] = []
    now = time.time()
    for i in range(n):
        out.append(LiveEvent("started", f"{prefix}{i}", now, DATA))
        if i >= IN_PROGRESS:
            out.append(LiveEvent("ended", f"{prefix}{i - IN_PROGRESS}", now, {"hangup_cause": 16}))
    return out


def channel_for(url: str, agent: EnrolledAgent, interval: float, flush_max: int) -> LiveChannel:
    settings = LiveSettings(
        flush_interval_s=interval, flush_max_events=flush_max, queue_max_events=10**7
    )
    return LiveChannel(settings, urls=[url], agent_id=agent.agent_id, key=agent.key)


async def wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def throughput(url: str, agent: EnrolledAgent, n: int) -> float:
    todo = events(n, "tp")
    channel = channel_for(url, agent, 0.5, 200)
    sender = asyncio.create_task(channel.run_sender())
    t0 = time.perf_counter()
    for i, event in enumerate(todo):
        channel.accept("tp", event)
        if i % 200 == 199:
            await asyncio.sleep(0)
    await wait(lambda: channel.sent_events >= len(todo), 600, "the events to be applied")
    elapsed = time.perf_counter() - t0
    sender.cancel()
    assert channel.lost_messages == 0 and channel.buffer.dropped == 0
    return len(todo) / elapsed


async def collector_only(url: str, agent: EnrolledAgent, n: int) -> float:
    todo = [wire.live_event_to_wire(e)[0] for e in events(n, "co")]
    chunks = [todo[i : i + 200] for i in range(0, len(todo), 200)]
    sealed = [
        wire.seal_live(agent.agent_id, "bench", seq, [wire.LiveStream("co", c)], agent.key)
        for seq, c in enumerate(chunks, 1)
    ]
    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.perf_counter()
        for data in sealed:
            r = await client.post(
                url + "/api/v1/live", content=data, headers={"content-type": "application/msgpack"}
            )
            assert r.status_code == 200, r.text
        elapsed = time.perf_counter() - t0
    return len(todo) / elapsed


async def latency(
    url: str, db: str, agent: EnrolledAgent, rate: float, seconds: float, interval: float
) -> list[float]:
    total = max(10, int(rate * seconds))
    accepted: list[float] = []
    seen: list[float] = []
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await conn.execute("LISTEN cdrstats_live")
        cur = await conn.execute("SELECT switch_id FROM agent WHERE id = %s", (agent.agent_id,))
        row = await cur.fetchone()
        assert row is not None
        switch_id = row[0]
        channel = channel_for(url, agent, interval, 200)
        sender = asyncio.create_task(channel.run_sender())
        prefix = f"lat{interval}-"
        channel.accept(prefix, LiveEvent("snapshot", at=time.time(), calls=()))

        async def listen() -> None:
            async for note in conn.notifies():
                doc = json.loads(note.payload)
                if doc["switch_id"] != switch_id:
                    continue
                now = time.perf_counter()
                while len(seen) < min(doc["count"], len(accepted)):
                    seen.append(now - accepted[len(seen)])
                if len(seen) >= total:
                    return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.5)  # the empty snapshot's notification passes first
        for i in range(total):
            accepted.append(time.perf_counter())
            channel.accept(prefix, LiveEvent("started", f"{prefix}{i}", time.time(), DATA))
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(listener, 60)
        sender.cancel()
    return seen


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds = 3000, 3.0
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_live_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    server = None
    try:
        db = conninfo.make_conninfo(admin, dbname=name)
        migrate.upgrade(db)
        server = CollectorServer(db, Path(tempfile.mkdtemp()), log_level="warning")
        server.start()
        url = server.url
        agents = [server.enroll(switch=f"sw{i}") for i in range(5)]

        async def run() -> dict[str, Any]:
            await throughput(url, agents[4], 500)  # warm-up: connections, caches, plans
            through = await throughput(url, agents[0], args.events)
            alone = await collector_only(url, agents[1], args.events)
            slow = await latency(url, db, agents[2], args.rate, args.seconds, 0.5)
            fast = await latency(url, db, agents[3], args.rate, args.seconds, 0.05)
            return {"through": through, "alone": alone, "slow": slow, "fast": fast}

        r = asyncio.run(run())
        print(f"agent -> collector   {r['through']:10.0f} events/s (LiveChannel, 200 per message)")
        print(f"collector alone      {r['alone']:10.0f} events/s (messages sealed beforehand)")
        print(f"ratio                {r['through'] / r['alone']:10.2f}")
        for values, interval in ((r["slow"], 0.5), (r["fast"], 0.05)):
            print(
                f"latency at {args.rate:.0f} ev/s, flush_interval_s {interval}:"
                f" p50 {1000 * statistics.median(values):.0f} ms,"
                f" p95 {1000 * pct(values, 0.95):.0f} ms, max {1000 * max(values):.0f} ms"
                f" ({len(values)} events)"
            )
        figures = {
            "live_events_per_s": round(r["through"]),
            "collector_only_events_per_s": round(r["alone"]),
            "ratio_vs_collector_only": round(r["through"] / r["alone"], 3),
            "latency_rate_events_per_s": args.rate,
            "latency_p50_ms_flush_0_5": round(1000 * statistics.median(r["slow"]), 1),
            "latency_p95_ms_flush_0_5": round(1000 * pct(r["slow"], 0.95), 1),
            "latency_p50_ms_flush_0_05": round(1000 * statistics.median(r["fast"]), 1),
            "latency_p95_ms_flush_0_05": round(1000 * pct(r["fast"], 0.95), 1),
        }
        print(json.dumps(figures))
    finally:
        if server is not None:
            server.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
