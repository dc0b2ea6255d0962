"""Realtime latency: CDR ingest (and a live call event) -> the event at SSE clients.

    .venv/bin/python bench/realtime.py [--clients 100] [--rounds 40] [--quick]

A real `cdrstats serve` subprocess and PostgreSQL; `--clients` browsers' worth of event
streams (`GET /t/{tenant}/events`, logged-in session cookie) held open by this process. Each
round posts one signed batch of 10 CDRs to /api/v1/ingest (or one signed live message to
/api/v1/live) and waits until every client has received the matching `cdr` (`live`) event.
Latency is measured per client from just before the POST to the event's arrival, so it
includes the HTTP request, the ingest transaction, NOTIFY at commit, the broker's fan-out and
the SSE write. Targets (issue 8): p99 <= 1000 ms for CDRs, <= 500 ms for live events.
Last line: JSON with cdr_p50_ms, cdr_p99_ms, live_p50_ms, live_p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from cdrstats_agent import wire
from cdrstats_agent.model import CDR, Direction, Disposition
from cdrstats_agent.plugin import LiveEvent
from cdrstats_collector import embedded, migrate, tenants, users
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fix_db import CollectorServer, EnrolledAgent

PASSWORD = "bench-password-123"


def _cdrs(round_: int, n: int = 10) -> list[CDR]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    return [
        CDR(
            key=f"rt-{round_}-{i}-{secrets.token_hex(4)}",
            start=start,
            answer=start + timedelta(seconds=2),
            end=start + timedelta(seconds=62),
            duration=62,
            billsec=60,
            disposition=Disposition.ANSWERED,
            direction=Direction.OUTBOUND,
            caller="1001",
            callee="+33142278000",
            hangup_cause=16,
        )
        for i in range(n)
    ]


class Clients:
    """N SSE streams; `arrivals[name]` collects (round marker, perf_counter) per event."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.times: dict[str, list[float]] = {}
        self.opened = 0
        self.all_open = asyncio.Event()

    def expect(self, marker: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[marker] = fut
        self.times[marker] = []
        return fut

    def arrived(self, marker: str, at: float) -> None:
        times = self.times.get(marker)
        if times is None:
            return
        times.append(at)
        if len(times) == self.n and not self.waiters[marker].done():
            self.waiters[marker].set_result(None)

    async def stream(self, client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as r:
            assert r.status_code == 200, r.status_code
            event = ""
            data = ""
            async for line in r.aiter_lines():
                if line == ": connected":
                    self.opened += 1
                    if self.opened == self.n:
                        self.all_open.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and event:
                    now = time.perf_counter()
                    doc = json.loads(data)
                    if event == "cdr":
                        self.arrived(f"cdr:{doc.get('accepted')}:{doc.get('agent_id')}", now)
                    elif event == "live":
                        self.arrived(f"live:{doc.get('count')}", now)
                    event = data = ""


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(
    server: CollectorServer, agent: EnrolledAgent, tenant: int, args: argparse.Namespace
) -> dict[str, float]:
    clients = Clients(args.clients)
    limits = httpx.Limits(
        max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10
    )
    async with httpx.AsyncClient(
        base_url=server.url, timeout=httpx.Timeout(30, read=None), limits=limits
    ) as http:
        page = await http.get("/login")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert token
        r = await http.post(
            "/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token[1]}
        )
        assert r.status_code == 303, r.text
        tasks = [
            asyncio.create_task(clients.stream(http, f"/t/{tenant}/events"))
            for _ in range(args.clients)
        ]
        await asyncio.wait_for(clients.all_open.wait(), 60)
        cdr_ms: list[float] = []
        live_ms: list[float] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as poster:
            for rnd in range(1, args.rounds + 1):
                # A CDR batch: accepted count + agent id identify its event (rounds are serial).
                cdrs = _cdrs(rnd)
                body = wire.build_body([wire.pack_cdr(c) for c in cdrs])
                sealed = wire.seal_batch(agent.agent_id, rnd, body, agent.key)
                fut = clients.expect(f"cdr:{len(cdrs)}:{agent.agent_id}")
                t0 = time.perf_counter()
                r = await poster.post(
                    "/api/v1/ingest",
                    content=sealed,
                    headers={"content-type": "application/msgpack"},
                )
                assert r.status_code == 200, r.text
                await asyncio.wait_for(fut, 30)
                cdr_ms.extend(
                    (t - t0) * 1000 for t in clients.times.pop(f"cdr:{len(cdrs)}:{agent.agent_id}")
                )
                # A live event: a call starts on odd rounds and ends on even ones (count 1 / 0).
                now = datetime.now(UTC).timestamp()
                event = (
                    LiveEvent("started", "bench-call", now, {"caller": "1001", "callee": "2002"})
                    if rnd % 2
                    else LiveEvent("ended", "bench-call", now, {})
                )
                stream = wire.LiveStream("bench", [wire.live_event_to_wire(event)[0]])
                sealed = wire.seal_live(agent.agent_id, "bench-stream", rnd, [stream], agent.key)
                marker = f"live:{rnd % 2}"
                fut = clients.expect(marker)
                t0 = time.perf_counter()
                r = await poster.post(
                    "/api/v1/live", content=sealed, headers={"content-type": "application/msgpack"}
                )
                assert r.status_code == 200, r.text
                await asyncio.wait_for(fut, 30)
                live_ms.extend((t - t0) * 1000 for t in clients.times.pop(marker))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "cdr_p50_ms": round(statistics.median(cdr_ms), 1),
        "cdr_p99_ms": round(_pct(cdr_ms, 99), 1),
        "live_p50_ms": round(statistics.median(live_ms), 1),
        "live_p99_ms": round(_pct(live_ms, 99), 1),
        "samples": len(cdr_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 10)
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_rt_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    server = None
    try:
        url = conninfo.make_conninfo(admin, dbname=name)
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            tenant = tenants.add_tenant(conn, "bench")
            users.add_user(conn, "bench", "tenant_viewer", PASSWORD, "bench")
        server = CollectorServer(url, Path(tempfile.mkdtemp()), log_level="info")
        server.start()
        agent = server.enroll("bench", "sw-bench")
        figures = asyncio.run(run(server, agent, tenant, args))
        n, samples = args.clients, figures["samples"]
        print(f"clients            {n}")
        print(f"rounds             {args.rounds} (x{n} = {samples} samples each)")
        for kind, target in (("cdr", 1000), ("live", 500)):
            p50, p99 = figures[f"{kind}_p50_ms"], figures[f"{kind}_p99_ms"]
            print(
                f"{kind:4} -> SSE  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   (target p99 <= {target})"
            )
        print(json.dumps({"clients": args.clients, "rounds": args.rounds, **figures}))
    finally:
        if server is not None:
            server.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
