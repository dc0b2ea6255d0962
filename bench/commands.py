"""Remote block latency: from `POST /api/v1/blocks` to the address being in the kernel's set.

    sudo .venv/bin/python bench/commands.py [--quick] [--commands 200]

(The issue's `bench/commands.py`: target p99 <= 1 s on loopback, over 200 commands.)

Real parts end to end: `cdrstats serve` (subprocess) over PostgreSQL, a real `cdrstats-agent
run` (subprocess) long-polling it, with the nftables backend working inside a network
namespace made here (the host's ruleset is not touched). Enforcement is observed by
`nft monitor` in that namespace: the time its "add element" line for the address arrives.
Commands are issued one after the other (each waits for the previous one to be enforced).

Baseline, same run: the same nftables transaction run directly (`nft -f -` in the namespace),
i.e. the floor for any path that ends in nft. Needs root. Last line: JSON with `p50_ms`,
`p99_ms` (issued -> enforced) and the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
from cdrstats_collector import auth, embedded, migrate, users
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fix_agent import AgentProcess
from tests.fix_db import CollectorServer
from tests.fix_netns import NetnsPair, unavailable_reason


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Monitor:
    """`nft monitor` in a namespace; records when each address first appears."""

    def __init__(self, netns: str) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "nft", "monitor", "elements"],
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            if "add element" not in line or "{" not in line:
                continue
            ip = line.split("{", 1)[1].split()[0]
            with self.cond:
                self.seen.setdefault(ip, now)
                self.cond.notify_all()

    def wait(self, ip: str, timeout: float = 30.0) -> float:
        deadline = time.perf_counter() + timeout
        with self.cond:
            while ip not in self.seen:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"{ip} was not enforced in {timeout} s")
                self.cond.wait(left)
            return self.seen[ip]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def ips(n: int, third: int) -> list[str]:
    return [f"198.18.{third + i // 250}.{1 + i % 250}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("CDRSTATS_TEST_DATABASE_URL"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.commands = 30
    reason = unavailable_reason("nft")
    if reason:
        sys.exit(f"commands: {reason}")
    admin = args.database_url or embedded.start("var/test-pg")
    name = f"cdrstats_bench_cmd_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    server = agent = monitor = None
    work = Path(tempfile.mkdtemp())
    try:
        with NetnsPair.create() as pair:
            db = conninfo.make_conninfo(admin, dbname=name)
            migrate.upgrade(db)
            server = CollectorServer(db, work / "collector", log_level="warning")
            server.start()
            (work / "cdr").mkdir()
            agent = AgentProcess(work / "agent", work / "cdr", server.url, log_level="warning")
            with agent.config_path.open("a") as f:
                f.write(
                    f'\n[actions]\npoll_wait_s = 25\n[firewall]\nbackend = "nftables"\n'
                    f'netns = "{pair.switch}"\n'
                )
            agent.enroll(server.url, server.create_token("bench", "sw1"))
            with psycopg.connect(db, autocommit=True) as conn:
                users.add_user(conn, "noc", "tenant_admin", "correct horse battery", "bench")
                token = auth.create_token(conn, "noc")
            agent.start()
            monitor = Monitor(pair.switch)
            headers = {"Authorization": f"Bearer {token}"}
            posted: list[float] = []
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:

                def issue(ip: str) -> float:
                    t0 = time.perf_counter()
                    r = client.post("/api/v1/blocks", json={"switch": "sw1", "ip": ip, "ttl": 600})
                    r.raise_for_status()
                    posted.append(time.perf_counter() - t0)
                    return monitor.wait(ip) - t0 if monitor else 0.0

                for ip in ips(5, 200):  # warm-up: nft table created, connections, plans
                    issue(ip)
                posted.clear()
                latencies = [issue(ip) for ip in ips(args.commands, 0)]
                # The floor: the same nft transaction, run directly.
                direct = []
                for ip in ips(args.commands, 100):
                    script = (
                        f"add element inet cdrstats blocked4 {{ {ip} timeout 1s }}\n"
                        f"delete element inet cdrstats blocked4 {{ {ip} }}\n"
                        f"add element inet cdrstats blocked4 {{ {ip} timeout 600s }}\n"
                    )
                    t0 = time.perf_counter()
                    subprocess.run(
                        ["ip", "netns", "exec", pair.switch, "nft", "-f", "-"],
                        input=script,
                        text=True,
                        check=True,
                    )
                    direct.append(monitor.wait(ip) - t0)
    finally:
        if monitor is not None:
            monitor.close()
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
    p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
    d50 = statistics.median(direct)
    print(
        f"issued -> enforced   p50 {1000 * p50:7.1f} ms   p99 {1000 * p99:7.1f} ms"
        f"   max {1000 * max(latencies):7.1f} ms   ({len(latencies)} blocks, one at a time)"
    )
    print(
        f"POST /api/v1/blocks  p50 {1000 * statistics.median(posted):7.1f} ms   (created,"
        " checked, signed, queued, audited: the answer)"
    )
    print(f"nft -f - directly    p50 {1000 * d50:7.1f} ms   (the floor)")
    print(f"ratio p50 / floor    {p50 / d50:7.1f}")
    print(
        json.dumps(
            {
                "commands": len(latencies),
                "p50_ms": round(1000 * p50, 1),
                "p99_ms": round(1000 * p99, 1),
                "max_ms": round(1000 * max(latencies), 1),
                "api_post_p50_ms": round(1000 * statistics.median(posted), 1),
                "nft_direct_p50_ms": round(1000 * d50, 1),
                "ratio_p50_vs_nft_direct": round(p50 / d50, 2),
                "target_p99_ms": 1000,
                "meets_target": p99 <= 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
