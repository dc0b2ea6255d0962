"""Kamailio acc pairing: acc events read from MariaDB and paired into CDRs in the agent's spool.

    .venv/bin/python bench/kamailio.py [--calls 60000] [--quick]

A scratch MariaDB database gets the Kamailio schema (../shared/reference/kamailio) plus the
usual db_extra columns, and `calls` answered calls as Kamailio's acc module writes them (an
INVITE row and a BYE row each, about 300 calls up at any time, a third hung up by the callee,
tags swapped), plus one missed call per ten. Measured in the same run:

1. baseline: the same pages (`SELECT * ... WHERE id > ? ORDER BY id LIMIT batch_rows`) fetched
   with pymysql and nothing else;
2. the plugin: `KamailioSource.read()` (fetch + gap guard + pairing + checkpoint with the
   open INVITEs) with every ReadResult committed to a real spool (sync=normal, as a test agent).

Prints events/s for both and the ratio, and the agent process's CPU time per event (steadier
than wall time on a shared machine); the last line is JSON with `acc_events_per_s`.
Needs MariaDB on 127.0.0.1:3306 (root, no password), as in the test rig.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "kamailio" / "tests"))

import pymysql
from cdrstats_agent.spool import Spool
from cdrstats_kamailio.plugin import KamailioPlugin
from kamailio_testkit import KamailioDB

BATCH_ROWS = 2000


def fill(db: KamailioDB, calls: int, seed: int = 7) -> tuple[int, int]:
    """Insert the calls; returns (acc rows, missed_calls rows)."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    start = now - timedelta(seconds=calls // 20 + 600)
    events: list[tuple[float, tuple[Any, ...]]] = []
    for n in range(calls):
        at = n / 20.0  # 20 new calls a second, each 1 to 30 s long: ~300 open at a time
        seconds = rng.randint(1, 30)
        cid, ft, tt = f"{n:08x}-{rng.getrandbits(32):08x}@10.0.0.1", f"as{n:x}", f"bs{n:x}"
        user, dest = f"10{n % 100:02d}", f"3361234{n % 10000:04d}"
        invite = ("INVITE", ft, tt, cid, "200", "OK", start + timedelta(seconds=at),
                  user, "10.0.0.1", "192.0.2.7", dest, dest, "10.0.0.1", "bench-ua")  # fmt: skip
        bye_tags = (ft, tt) if n % 3 else (tt, ft)
        bye = ("BYE", *bye_tags, cid, "200", "OK", start + timedelta(seconds=at + seconds),
               user, "10.0.0.1", "192.0.2.7", dest, "", "10.0.0.1", "")  # fmt: skip
        events.append((at, invite))
        events.append((at + seconds, bye))
    events.sort(key=lambda e: e[0])
    cols = ("method, from_tag, to_tag, callid, sip_code, sip_reason, time, src_user, src_domain,"
            " src_ip, dst_ouser, dst_user, dst_domain, ua")  # fmt: skip
    conn = db.connect()
    with conn.cursor() as cur:
        rows = [e[1] for e in events]
        for i in range(0, len(rows), 5000):
            cur.executemany(
                f"INSERT INTO acc ({cols}) VALUES ({', '.join(['%s'] * 14)})", rows[i : i + 5000]
            )
        missed = [
            ("INVITE", f"m{n:x}", f"mt{n:x}", f"miss-{n}@10.0.0.1", "486", "Busy Here",
             start + timedelta(seconds=n / 2.0), "1001", "10.0.0.1", "192.0.2.7", "3361", "3361",
             "10.0.0.1", "ua")
            for n in range(calls // 10)
        ]  # fmt: skip
        cur.executemany(
            f"INSERT INTO missed_calls ({cols}) VALUES ({', '.join(['%s'] * 14)})", missed
        )
    conn.close()
    return len(rows), len(missed)


def raw_select(db: KamailioDB) -> tuple[int, float]:
    """Baseline: the same pages the source fetches, with pymysql, nothing else done."""
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=db.name,
                           autocommit=True)  # fmt: skip
    t = time.perf_counter()
    total = 0
    for table in ("acc", "missed_calls"):
        last = 0
        while True:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT * FROM {table} WHERE id > %s ORDER BY id LIMIT %s", (last, BATCH_ROWS)
                )
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            if not rows:
                break
            total += len(rows)
            last = rows[-1]["id"]
    elapsed = time.perf_counter() - t
    conn.close()
    return total, elapsed


async def through_plugin(
    db: KamailioDB, events: int, spool_dir: Path
) -> tuple[int, int, float, float]:
    """(events, CDRs committed, seconds, CPU seconds of this process) for read() -> spool."""
    source = KamailioPlugin().create_source(
        "kam",
        {"db_url": db.url, "timezone": "UTC", "batch_rows": BATCH_ROWS, "poll_s": 0.05},
    )
    spool = await Spool.open(spool_dir / "spool.sqlite", sync="normal", max_bytes=1 << 40)
    cdrs = 0
    t = time.perf_counter()
    cpu = time.process_time()
    gen = source.read(None)
    try:
        async for result in gen:
            await spool.commit("kam", result.cdrs, result.checkpoint, result.rejected)
            cdrs += len(result.cdrs)
            doc = json.loads(result.checkpoint)
            if doc["acc"] + doc["missed"] >= events:
                break
    finally:
        await gen.aclose()
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    await spool.close()
    await source.close()
    return events, cdrs, elapsed, cpu


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=60_000)
    parser.add_argument("--quick", action="store_true", help="25,000 calls")
    args = parser.parse_args()
    calls = 25_000 if args.quick else args.calls
    db = KamailioDB(f"cdrstats_bench_kam_{os.getpid()}")
    try:
        acc_rows, missed_rows = fill(db, calls)
        events = acc_rows + missed_rows
        print(f"{calls:,} calls: {acc_rows:,} acc rows + {missed_rows:,} missed_calls rows")
        base_n, base_s = raw_select(db)
        assert base_n == events, (base_n, events)
        base_rate = base_n / base_s
        print(f"raw SELECT pages (pymysql, dict rows): {base_rate:,.0f} events/s")
        with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
            n, cdrs, seconds, cpu = await through_plugin(db, events, Path(tmp))
        rate = n / seconds
        print(
            f"acc pairing -> spool: {rate:,.0f} events/s, {cdrs:,} CDRs"
            f" ({cdrs / seconds:,.0f} CDR/s), {rate / base_rate:.2f}x the raw SELECT;"
            f" agent CPU {cpu / n * 1e6:.0f} us per event ({n / cpu:,.0f} events per CPU-second,"
            f" load average {os.getloadavg()[0]:.1f})"
        )
        expected_cdrs = calls + missed_rows
        if cdrs != expected_cdrs:
            print(f"WARNING: {cdrs} CDRs, expected {expected_cdrs}")
        print(
            json.dumps(
                {
                    "acc_events_per_s": round(rate),
                    "raw_select_events_per_s": round(base_rate),
                    "ratio_vs_raw_select": round(rate / base_rate, 3),
                    "events_per_cpu_s": round(n / cpu),
                    "cdrs": cdrs,
                    "events": n,
                }
            )
        )
    finally:
        db.drop()


if __name__ == "__main__":
    asyncio.run(main())
