"""How fast the asterisk plugin reads CDRs into the agent's spool (prints figures, asserts nothing).

    .venv/bin/python bench/asterisk.py [--quick] [--cdrs 100000]

Synthetic calls (cdrstats_agent.synthetic, 21-column layout, Europe/Paris local time) are
written once to a Master.csv and once to the reference `cdr` table in a scratch MariaDB
database (127.0.0.1:3306, root). Each is then read by the plugin's source (store = "csv",
then store = "mysql" with its default end + lookback cursor) and every ReadResult is
committed to a real spool (sync=normal), as the agent does. Baselines in the same run, same
data: the standard csv module reading the file, and a streaming `SELECT *` of the table with
PyMySQL (the driver's ceiling). The last line is one JSON object: csv_cdr_per_s,
mariadb_cdr_per_s (wall clock), the baselines, the ratios (plugin / baseline), and the rates
per CPU second of this process (less sensitive to other load on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pymysql
import pymysql.cursors
from cdrstats_agent.spool import Spool
from cdrstats_agent.synthetic import (
    DEMO_SWITCHES,
    CallGenerator,
    asterisk_csv_line,
    asterisk_csv_row,
)
from cdrstats_asterisk.plugin import AsteriskPlugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "asterisk" / "tests"))

from asterisk_testkit import (  # noqa: E402
    COLUMNS_21,
    create_reference_mysql_cdr,
    mysql_database,
)

PARIS = ZoneInfo("Europe/Paris")
TARGET = 20_000


def make_rows(n: int) -> list[list[str]]:
    switch = DEMO_SWITCHES[0]
    gen = CallGenerator(switch, seed=5)
    end = datetime(2026, 11, 20, tzinfo=UTC)
    # about 300 calls an hour: n calls span n/300 hours, like a busy PBX
    calls = gen.calls_between(end - timedelta(hours=n / 150), end, 300)
    rows = []
    for i, cdr in enumerate(calls):
        if i >= n:
            break
        r = asterisk_csv_row(cdr, PARIS, switch)
        r[20] = str(i)  # sequence: unique, as Asterisk's counter is
        rows.append(r)
    return rows


async def into_spool(source: Any, spool: Spool, total: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) for the source's read() to hand
    `total` CDRs to the spool."""
    t = time.perf_counter()
    cpu = time.process_time()
    got = 0
    agen = source.read(None)
    try:
        async for result in agen:
            await spool.commit(source.name, result.cdrs, result.checkpoint, result.rejected)
            got += len(result.cdrs) + len(result.rejected)
            if got >= total:
                break
    finally:
        await agen.aclose()
    return time.perf_counter() - t, time.process_time() - cpu


def raw_csv(path: Path) -> float:
    t = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as fh:
        n = sum(1 for _ in csv.reader(fh))
    assert n > 0
    return time.perf_counter() - t


def raw_mysql(db: Any) -> float:
    t = time.perf_counter()
    conn = db.connect()
    try:
        cur = conn.cursor(pymysql.cursors.SSCursor)
        cur.execute("SELECT * FROM cdr WHERE `end` IS NOT NULL ORDER BY `end`")
        while cur.fetchmany(1000):
            pass
        cur.close()
    finally:
        conn.close()
    return time.perf_counter() - t


async def bench(n: int) -> dict[str, Any]:
    rows = make_rows(n)
    n = len(rows)
    out: dict[str, Any] = {"cdrs": n}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        master = d / "Master.csv"
        master.write_text("".join(asterisk_csv_line(r) for r in rows), encoding="utf-8")
        spool = await Spool.open(d / "csv-spool.sqlite", sync="normal", max_bytes=1 << 40)
        source = AsteriskPlugin().create_source(
            "bench-csv",
            {"store": "csv", "path": str(master), "timezone": "Europe/Paris",
             "chunk_cdrs": 2000},
        )  # fmt: skip
        csv_s, csv_cpu = await into_spool(source, spool, n)
        await spool.close()
        raw_s = raw_csv(master)
        out["csv_cdr_per_s"] = round(n / csv_s)
        out["csv_raw_rows_per_s"] = round(n / raw_s)
        out["csv_ratio"] = round(raw_s / csv_s, 3)
        out["csv_cdr_per_cpu_s"] = round(n / csv_cpu)
        print(f"csv: {n} CDRs into the spool in {csv_s:.2f} s ({n / csv_s:,.0f}/s, "
              f"{n / csv_cpu:,.0f} per CPU second); csv.reader alone {raw_s:.2f} s")  # fmt: skip

        with mysql_database() as db:
            create_reference_mysql_cdr(db)
            db.execute("CREATE INDEX cdr_end ON cdr (`end`)")
            dicts = [dict(zip(COLUMNS_21, r, strict=True)) for r in rows]
            for i in range(0, n, 5000):
                db.insert(dicts[i : i + 5000])
            spool = await Spool.open(d / "db-spool.sqlite", sync="normal", max_bytes=1 << 40)
            source = AsteriskPlugin().create_source(
                "bench-mysql",
                {"store": "mysql", "host": "127.0.0.1", "user": "root", "database": db.name,
                 "timezone": "Europe/Paris", "chunk_cdrs": 2000},
            )  # fmt: skip
            db_s, db_cpu = await into_spool(source, spool, n)
            await spool.close()
            raw_db_s = raw_mysql(db)
        out["mariadb_cdr_per_s"] = round(n / db_s)
        out["mariadb_raw_rows_per_s"] = round(n / raw_db_s)
        out["mariadb_ratio"] = round(raw_db_s / db_s, 3)
        out["mariadb_cdr_per_cpu_s"] = round(n / db_cpu)
        print(f"mariadb: {n} CDRs into the spool in {db_s:.2f} s ({n / db_s:,.0f}/s, "
              f"{n / db_cpu:,.0f} per CPU second of the agent); "
              f"streaming SELECT alone {raw_db_s:.2f} s")  # fmt: skip
    out["target_cdr_per_s"] = TARGET
    out["meets_target"] = out["csv_cdr_per_s"] >= TARGET and out["mariadb_cdr_per_s"] >= TARGET
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdrs", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 CDRs")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.cdrs
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(bench(n))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
