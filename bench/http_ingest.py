"""End-to-end HTTP ingest rate: real `cdrstats serve` subprocess, N agents sending at once.

    .venv/bin/python bench/http_ingest.py [--agents 2] [--batches 40] [--size 1000]

Bodies are built and signed before the clock starts, so this measures the collector and
PostgreSQL (HTTP, verify, decode, check, COPY, commit), not the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from cdrstats_agent import wire
from cdrstats_collector import embedded, migrate
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_copy import make_cdrs

from tests.fix_db import CollectorServer


async def send_all(url: str, envelopes: list[bytes]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for env in envelopes:
            r = await client.post(
                url + "/api/v1/ingest",
                content=env,
                headers={"content-type": "application/msgpack"},
            )
            assert r.status_code == 200, r.text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    server = None
    try:
        url = conninfo.make_conninfo(admin, dbname=name)
        migrate.upgrade(url)
        server = CollectorServer(url, Path(tempfile.mkdtemp()))
        server.start()
        base = datetime.now(UTC) - timedelta(hours=2)
        work = []
        for a in range(args.agents):
            agent = server.enroll(switch=f"sw{a}")
            envs = []
            for b in range(args.batches):
                cdrs = make_cdrs(args.size, base, (a * args.batches + b) * args.size)
                body = wire.build_body([wire.pack_cdr(c) for c in cdrs])
                envs.append(wire.seal_batch(agent.agent_id, b + 1, body, agent.key))
            work.append(envs)

        async def run() -> None:
            await asyncio.gather(*(send_all(server.url, envs) for envs in work))

        t0 = time.perf_counter()
        asyncio.run(run())
        elapsed = time.perf_counter() - t0
        total = args.agents * args.batches * args.size
        print(f"http ingest {total / elapsed:10.0f} CDR/s ({args.agents} agents, {total} CDRs)")
    finally:
        if server is not None:
            server.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


if __name__ == "__main__":
    main()
