"""The agent's resident memory and CPU under a switch's load (targets: RSS <= 60 MB, <= 5 % of
one core).

    .venv/bin/python bench/agent_footprint.py [--quick] [--seconds 60] [--database-url URL]
        [--packaged /opt/cdrstats-agent]     # the installed .deb's agent on /usr/bin/python3

The agent runs as its own process (what `cdrstats-agent run` runs: config, runner, spool,
uplink, live channel) with two sources:
- the real csv plugin following an Asterisk `Master.csv` to which this script appends
  200 calls per second (20 every 0.1 s), as Asterisk would;
- a live source keeping 1,000 calls in progress: a snapshot at start and every 30 s, and
  200 calls started, answered and ended per second (600 live events/s).
It sends to a real `cdrstats serve` (PostgreSQL embedded under var/bench-pg unless given).
After a warm-up, RSS is sampled every second (the maximum is reported) and CPU is the process's
user+system time over the measured window divided by the wall time.

The last line is one JSON object: rss_mb, cpu_percent, cdr_per_s, live_events_per_s,
cdrs_stored, live_messages_sent, targets and meets_target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if "--tree" in sys.argv:  # the child of --packaged: the installed package's libraries only
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])
else:
    sys.path.insert(0, str(ROOT))

from cdrstats_agent.config import load_config  # noqa: E402
from cdrstats_agent.identity import enroll  # noqa: E402
from cdrstats_agent.plugin import LiveEvent, ReadResult  # noqa: E402

TARGET_RSS_MB = 60.0
TARGET_CPU_PERCENT = 5.0
CALLS = 1000
CDR_PER_S = 200
TICK_S = 0.1
SNAPSHOT_EVERY_S = 30.0


# --- the child: the agent with a live source -------------------------------------------------


class LiveCalls:
    """A source with no CDRs of its own whose live() keeps CALLS calls in progress."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0

    async def check(self) -> None:
        pass

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        while True:
            await asyncio.sleep(3600)
            yield ReadResult([], checkpoint or "0")  # never reached

    def _call(self, now: float) -> tuple[str, dict[str, Any]]:
        self.n += 1
        data = {"caller": f"1{self.n % 1000:03d}", "callee": f"3314227{self.n % 10000:04d}",
                "direction": "outbound", "state": "ringing", "start": now}  # fmt: skip
        return f"call-{self.n}", data

    async def live(self) -> AsyncIterator[LiveEvent]:
        now = time.time()
        calls: dict[str, dict[str, Any]] = {}
        ringing: deque[str] = deque()
        for _ in range(CALLS):
            call_id, data = self._call(now)
            calls[call_id] = {**data, "state": "answered", "answer": now}
        last_snapshot = 0.0
        per_tick = int(CDR_PER_S * TICK_S)
        while True:
            now = time.time()
            if now - last_snapshot >= SNAPSHOT_EVERY_S:
                last_snapshot = now
                snapshot = tuple({"call_id": k, **v} for k, v in calls.items())
                yield LiveEvent("snapshot", at=now, calls=snapshot)
            for _ in range(per_tick):  # the oldest calls end ...
                call_id = next(iter(calls))
                del calls[call_id]
                yield LiveEvent("ended", call_id, now, {"hangup_cause": 16, "sip_code": 200})
            for _ in range(min(per_tick, len(ringing))):  # ... the last tick's are answered ...
                call_id = ringing.popleft()
                calls[call_id].update(state="answered", answer=now)
                yield LiveEvent("answered", call_id, now, {"answer": now})
            for _ in range(per_tick):  # ... and new ones start ringing
                call_id, data = self._call(now)
                calls[call_id] = data
                ringing.append(call_id)
                yield LiveEvent("started", call_id, now, data)
            await asyncio.sleep(TICK_S)

    async def close(self) -> None:
        pass


class LivePlugin:
    name = "bench-live"
    description = "1,000 calls in progress"
    sample_config = ""

    def create_source(self, name: str, options: Mapping[str, Any]) -> LiveCalls:
        return LiveCalls(name)


def child(config_path: str) -> int:
    from cdrstats_agent.logs import setup
    from cdrstats_agent.runner import run_agent
    from cdrstats_csv.plugin import CsvPlugin

    setup("warning")
    config = load_config(config_path, plugins={"csv": CsvPlugin(), "bench-live": LivePlugin()})
    asyncio.run(run_agent(config, handle_signals=True))
    return 0


# --- the parent: collector, switch traffic, measurement --------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    parser.add_argument("--seconds", type=float)
    parser.add_argument(
        "--database-url", default=os.environ.get("CDRSTATS_BENCH_DATABASE_URL"), help="admin URL"
    )
    parser.add_argument(
        "--packaged",
        metavar="OPT",
        help="run the agent from an installed package tree (/opt/cdrstats-agent) with"
        " /usr/bin/python3, instead of the dev venv",
    )
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    import psutil
    import psycopg
    from cdrstats_collector import embedded, migrate

    from tests.fix_agent import CallFeed
    from tests.fix_db import CollectorServer, create_database, drop_database, with_dbname

    seconds = args.seconds or (15.0 if args.quick else 60.0)
    warmup = 3.0 if args.quick else 5.0
    admin = args.database_url or embedded.start(ROOT / "var" / "bench-pg")
    name = create_database(admin)
    database_url = with_dbname(admin, name)
    work = Path(tempfile.mkdtemp(prefix="cdrstats-footprint-"))
    server = CollectorServer(database_url, work / "collector", log_level="warning")
    feed = CallFeed(work / "cdr")
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nstate_dir = "{work / "state"}"\nlog_level = "warning"\n\n'
        f'[collector]\nbatch_max_age_s = 1.0\n\n'
        f'[[source]]\nname = "master-csv"\nplugin = "csv"\npreset = "asterisk"\n'
        f'path = "{feed.path}"\ntimezone = "Europe/Paris"\n\n'
        f'[[source]]\nname = "live"\nplugin = "bench-live"\n'
    )  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None
    try:
        migrate.upgrade(database_url)
        server.start()
        token = server.create_token("acme", "pbx-footprint")
        asyncio.run(enroll(work / "state", server.url, token))
        log = (work / "agent.log").open("wb")
        command = [sys.executable, __file__, "--child", str(config)]
        if args.packaged:
            python = Path("/usr/bin/python3").resolve()
            tree = Path(args.packaged) / "lib" / python.name
            if not tree.is_dir():
                raise SystemExit(f"{tree}: no library tree for {python}")
            command = [str(python), "-I", __file__, "--child", str(config), "--tree", str(tree)]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        agent = psutil.Process(proc.pid)
        per_tick = int(CDR_PER_S * TICK_S)
        started = time.monotonic()
        next_tick = started
        rss: list[float] = []
        cpu0: Any = None
        t0 = 0.0
        next_sample = started + warmup
        while True:
            now = time.monotonic()
            if now >= next_tick:
                feed.append(per_tick)
                next_tick += TICK_S
            if now >= next_sample:
                if proc.poll() is not None:
                    raise SystemExit(f"the agent exited:\n{(work / 'agent.log').read_text()}")
                if cpu0 is None:
                    cpu0, t0 = agent.cpu_times(), now
                rss.append(agent.memory_info().rss / 1048576)
                next_sample += 1.0
            if now - started >= warmup + seconds:
                break
            time.sleep(max(0.0, min(next_tick, next_sample) - time.monotonic()))
        cpu1, t1 = agent.cpu_times(), time.monotonic()
        cpu_percent = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (t1 - t0)
        written = feed.written
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline:
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT count(*) FROM cdr").fetchone()
                stored = int(row[0]) if row else 0
            if stored >= written:
                break
            time.sleep(0.5)
        live_status = json.loads((work / "state" / "live.json").read_text()) if (
            work / "state" / "live.json").exists() else {}  # fmt: skip
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        server.stop()
        drop_database(admin, name)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bench": "agent_footprint",
        "agent": f"package {args.packaged}" if args.packaged else "dev venv",
        "seconds": seconds,
        "rss_mb": round(max(rss), 1),
        "rss_mb_last": round(rss[-1], 1),
        "cpu_percent": round(cpu_percent, 2),
        "cdr_per_s": CDR_PER_S,
        "live_calls": CALLS,
        "live_events_per_s": 3 * CDR_PER_S,
        "cdrs_written": written,
        "cdrs_stored": stored,
        "live_messages_sent": live_status.get("sent_messages"),
        "live_events_dropped": live_status.get("dropped_events"),
        "target_rss_mb": TARGET_RSS_MB,
        "target_cpu_percent": TARGET_CPU_PERCENT,
        "meets_target": max(rss) <= TARGET_RSS_MB and cpu_percent <= TARGET_CPU_PERCENT,
    }
    print(
        f"agent over {seconds:.0f} s: RSS max {max(rss):.1f} MB, CPU {cpu_percent:.1f} % of one"
        f" core; {stored} of {written} CDRs stored, live status {live_status.get('sources')}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
