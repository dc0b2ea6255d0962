"""FreeSWITCH plugin: mod_cdr_csv and mod_cdr_sqlite sources read into the agent's spool.

    .venv/bin/python bench/freeswitch.py [--quick] [--cdrs 100000]

For each store, the source's `read()` runs as the agent's runner drives it: every ReadResult
(1000 CDRs) is committed to a real spool (SQLite, sync=full) before the next is asked for.
Baselines measured in the same run on the same data: `csv.reader` over the file (no CDR
built) and a bare `SELECT * FROM cdr` (no CDR built). Target: >= 20,000 CDR/s each. The
machine is shared: CDRs per CPU second (all threads) and the load average are printed too.
Last line: JSON with csv_cdr_per_s and sqlite_cdr_per_s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "freeswitch" / "tests"))

from cdrstats_agent.spool import Spool  # noqa: E402
from cdrstats_freeswitch.plugin import FreeswitchPlugin  # noqa: E402
from freeswitch_testkit import TEMPLATES, call_variables, render  # noqa: E402
from test_freeswitch_sqlite import COLUMNS, reference_db  # noqa: E402


async def into_spool(
    options: dict[str, object], total: int, spool_path: Path
) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) for the source to deliver `total` CDRs, each result
    committed to the spool."""
    source = FreeswitchPlugin().create_source("bench", {**options, "chunk_cdrs": 1000})
    spool = await Spool.open(spool_path, max_bytes=4 << 30)
    reader = source.read(None)
    count = rejected = 0
    started = time.perf_counter()
    cpu = time.process_time()
    try:
        async for result in reader:
            await spool.commit("bench", result.cdrs, result.checkpoint, result.rejected)
            count += len(result.cdrs)
            rejected += len(result.rejected)
            if count + rejected >= total:
                break
    finally:
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await reader.aclose()
        await source.close()
        await spool.close()
    if count != total:
        raise SystemExit(f"read {count} CDRs and {rejected} rejected rows, expected {total} CDRs")
    return elapsed, cpu


def raw_csv(path: Path) -> float:
    started = time.perf_counter()
    with path.open(newline="") as fh:
        rows = sum(1 for _ in csv.reader(fh))
    elapsed = time.perf_counter() - started
    assert rows > 0
    return elapsed


def raw_sqlite(path: Path) -> float:
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    rows = len(conn.execute("SELECT rowid, * FROM cdr ORDER BY rowid").fetchall())
    conn.close()
    elapsed = time.perf_counter() - started
    assert rows > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cdrs", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 CDRs")
    args = parser.parse_args()
    total = 20_000 if args.quick else args.cdrs
    with tempfile.TemporaryDirectory(prefix="bench-fs-") as tmp:
        work = Path(tmp)
        csv_dir = work / "cdr-csv"
        csv_dir.mkdir()
        master = csv_dir / "Master.csv"
        rows = [call_variables(n, answered=n % 3 != 0) for n in range(total)]
        template = TEMPLATES["example"]
        master.write_text("".join(render(template, v) + "\n" for v in rows))
        db = work / "cdr.db"
        reference_db(db, with_rows=False)
        conn = sqlite3.connect(db)
        with conn:
            conn.executemany(
                f"INSERT INTO cdr ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [[{**v, "account_code": v["accountcode"]}[c] for c in COLUMNS] for v in rows],
            )
        conn.close()

        common = {"timezone": "Europe/Paris", "country_code": "33", "interval": 0.01}
        csv_s, csv_cpu = asyncio.run(
            into_spool({"store": "csv", "path": str(csv_dir), **common}, total, work / "s1.sqlite")
        )
        sqlite_s, sqlite_cpu = asyncio.run(
            into_spool({"store": "sqlite", "path": str(db), **common}, total, work / "s2.sqlite")
        )
        csv_raw_s = raw_csv(master)
        sqlite_raw_s = raw_sqlite(db)

    figures = {
        "cdrs": total,
        "csv_cdr_per_s": round(total / csv_s),
        "sqlite_cdr_per_s": round(total / sqlite_s),
        "csv_cdr_per_cpu_s": round(total / csv_cpu),
        "sqlite_cdr_per_cpu_s": round(total / sqlite_cpu),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "csv_raw_reader_rows_per_s": round(total / csv_raw_s),
        "sqlite_raw_select_rows_per_s": round(total / sqlite_raw_s),
        "csv_vs_raw_ratio": round(csv_raw_s / csv_s, 4),
        "sqlite_vs_raw_ratio": round(sqlite_raw_s / sqlite_s, 4),
        "target_cdr_per_s": 20_000,
    }
    print(f"load average (1 min): {figures['load_avg_1m']} on {os.cpu_count()} CPUs")
    print(f"mod_cdr_csv -> spool:    {figures['csv_cdr_per_s']:>9,} CDR/s", end="")
    print(f" ({figures['csv_cdr_per_cpu_s']:,} per CPU second)")
    print(f"  csv.reader baseline:   {figures['csv_raw_reader_rows_per_s']:>9,} rows/s")
    print(f"  ratio (source/raw):    {figures['csv_vs_raw_ratio']}")
    print(f"mod_cdr_sqlite -> spool: {figures['sqlite_cdr_per_s']:>9,} CDR/s", end="")
    print(f" ({figures['sqlite_cdr_per_cpu_s']:,} per CPU second)")
    print(f"  SELECT * baseline:     {figures['sqlite_raw_select_rows_per_s']:>9,} rows/s")
    print(f"  ratio (source/raw):    {figures['sqlite_vs_raw_ratio']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
