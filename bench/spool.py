"""Measure the agent's spool and uplink on this machine (prints figures, asserts nothing).

    .venv/bin/python bench/spool.py [--cdrs 200000]

1. spool commits through the asyncio face (worker thread), sync=full, 100 and 1000 CDRs each
2. batch formation (5000 CDRs a batch) + ack
3. the whole agent side: a source committing while the uplink forms, seals and POSTs batches
   to a minimal HTTP peer in another process that answers 200 without checking (so the figure
   is the agent's ceiling, not the collector's)
4. event-loop stalls while the spool works (largest gap seen by a 1 ms ticker)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent" / "tests"))

from agent_testkit import make_cdr
from cdrstats_agent.spool import Spool
from cdrstats_agent.uplink import Uplink
from nacl.signing import SigningKey

PEER = """
import json, sys
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    body = json.dumps({"seq": 0, "accepted": 0, "duplicates": 0, "redelivery": False}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


class Ticker:
    def __init__(self) -> None:
        self.gaps: list[float] = []

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def summary(self) -> str:
        gaps = sorted(self.gaps)
        p99 = gaps[int(len(gaps) * 0.99)] if gaps else 0.0
        worst = gaps[-1] if gaps else 0.0
        return f"event-loop gaps p99 {p99 * 1000:.1f} ms, worst {worst * 1000:.1f} ms"


async def bench_commits(d: Path, total: int, per_commit: int) -> float:
    spool = await Spool.open(d / f"c{per_commit}.sqlite", sync="full", max_bytes=1 << 40)
    pool = [make_cdr(i) for i in range(per_commit)]
    t = time.perf_counter()
    for n in range(0, total, per_commit):
        await spool.commit("src", pool, str(n))
    rate = total / (time.perf_counter() - t)
    t = time.perf_counter()
    batches = 0
    while (b := await spool.form_batch(5000)) is not None:
        await spool.ack(b.seq)
        batches += 1
    brate = batches / (time.perf_counter() - t)
    await spool.close()
    print(f"commit {per_commit:>5} CDRs/txn: {rate:>9,.0f} CDR/s  ", end="")
    print(f"form+ack: {brate:,.0f} batches/s ({brate * 5000:,.0f} CDR/s)")
    return rate


async def bench_pipeline(d: Path, total: int) -> None:
    port = 18000 + int(time.time()) % 1000
    peer = await asyncio.create_subprocess_exec(sys.executable, "-c", PEER, str(port))
    try:
        await asyncio.sleep(1.5)
        spool = await Spool.open(d / "pipe.sqlite", sync="full", max_bytes=1 << 40)
        uplink = Uplink(
            spool,
            urls=[f"http://127.0.0.1:{port}"],
            agent_id="bench",
            key=SigningKey.generate(),
            batch_max_cdrs=5000,
            batch_max_age_s=1.0,
        )
        ticker = Ticker()
        tick = asyncio.create_task(ticker.run())
        task = asyncio.create_task(uplink.run())
        pool = [make_cdr(i) for i in range(500)]
        t = time.perf_counter()
        for n in range(0, total, 500):
            await spool.commit("src", pool, str(n))
            await spool.wait_for_room()
        committed = time.perf_counter() - t
        while uplink.acked_cdrs < total:  # noqa: ASYNC110 - polling a counter is the point
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t
        task.cancel()
        tick.cancel()
        await asyncio.gather(task, tick, return_exceptions=True)
        await spool.close()
        print(
            f"pipeline (read->spool->batch->seal->POST->ack), {total:,} CDRs:"
            f" {total / elapsed:,.0f} CDR/s end to end"
            f" (commits alone {total / committed:,.0f} CDR/s),"
            f" {ticker.summary()}"
        )
    finally:
        peer.terminate()
        await peer.wait()


async def main() -> None:
    logging.getLogger("cdrstats.agent.uplink").setLevel(logging.ERROR)  # the peer acks seq 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--cdrs", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        d = Path(tmp)
        results = {}
        for per in (100, 1000):
            results[per] = await bench_commits(d, args.cdrs, per)
        await bench_pipeline(d, args.cdrs)
        print(json.dumps({"commit_cdr_per_s": {str(k): round(v) for k, v in results.items()}}))


if __name__ == "__main__":
    asyncio.run(main())
