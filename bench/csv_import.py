"""CSV import: a large carrier file through `cdrstats import`, rate and peak memory.

    .venv/bin/python bench/csv_import.py [--quick] [--rows N] [--database-url URL]

A file of N rows (default 1,000,000; --quick 100,000) is written in the shape of a carrier
export: `;`-separated, a header, day-first dates, decimal-comma durations, quoted names with
Latin-1 letters and the odd `;` inside quotes, one bad row in 1,000. It is then imported twice
with the real command line (`cdrstats import`, a subprocess; mapping with a saved profile,
the collector's ingest transaction, batches of 5,000): the first run stores every valid row,
the second finds them all already stored (duplicates skipped). Peak memory is the largest
sum of PSS (RSS with shared pages counted once) over the import process and its mapping
processes, sampled every 50 ms.

Baselines, same run: a raw binary COPY of the same rows (the CDRs the import stored, dumped
with `COPY ... TO STDOUT (FORMAT BINARY)`) into the same, emptied `cdr` table: no parsing,
no mapping, no dedup, no aggregates (`ratio_to_raw_copy`); and `csv.reader` alone reading
the file (no mapping, no database).

Last line: one JSON object with rows_per_s (first import), peak_rss_mb, reimport_rows_per_s,
reimport_peak_rss_mb, raw_copy_rows_per_s, ratio_to_raw_copy, csv_reader_rows_per_s, the
load average before and after (the machine is shared), and the targets (issue 9:
≥ 30,000 rows/s, < 300 MB). The database is embedded (var/bench-pg) unless --database-url
or CDRSTATS_BENCH_DATABASE_URL names a server where the user may create databases.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdrstats_collector import csvimport, embedded, migrate, store, tenants  # noqa: E402

from tests.fix_db import create_database, drop_database, with_dbname  # noqa: E402

TARGET_ROWS_PER_S = 30_000
TARGET_RSS_MB = 300
NAMES = ["Zoë Ångström", "François Dupont", '"Le Bistrot; Paris"', "Jürgen Müller", "Ana"]
PROFILE = {
    "delimiter": ";",
    "header": True,
    "decimal_comma": True,
    "encoding": "latin-1",
    "time_format": ["%d/%m/%Y %H:%M:%S"],
    "key": "CallID",
    "fields": {
        "start": "Date",
        "caller": "Caller",
        "caller_name": "Name",
        "callee": "Called",
        "duration": "Duration",
        "disposition": "Status",
        "accountcode": "Account",
        "src_ip": "IP",
    },
}


def write_file(path: Path, rows: int) -> None:
    """A carrier-like export (see the module doc), written as a stream."""
    end = datetime.now(UTC) - timedelta(hours=1)
    step = timedelta(seconds=20 * 86_400 / rows)
    with open(path, "w", encoding="latin-1", newline="") as fh:
        fh.write("CallID;Date;Caller;Name;Called;Duration;Status;Account;IP;Rate\r\n")
        for i in range(rows):
            when = (end - step * i).strftime("%d/%m/%Y %H:%M:%S")
            if i % 1000 == 999:
                when = "not a date"
            name = NAMES[i % len(NAMES)]
            name = name if name.startswith('"') else f'"{name}"'
            status = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED")[i % 4]
            fh.write(
                f"c{i:09d};{when};0142{i % 100000:06d};{name};0033{600000000 + i % 9999999};"
                f"{(i % 600)},{i % 10};{status};acct-{i % 50};10.{i % 250}.{i % 200}.{i % 100};"
                f"0,{i % 1000:03d}\r\n"
            )


def csv_reader_rate(path: Path) -> float:
    started = time.perf_counter()
    n = 0
    with open(path, encoding="latin-1", newline="") as fh:
        for _ in csv.reader(fh, delimiter=";"):
            n += 1
    return n / (time.perf_counter() - started)


def run_import(database_url: str, path: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, its summary line) of one `cdrstats import`.

    Peak memory is the largest sum of PSS (shared pages counted once), sampled every 50 ms,
    over the import process and its mapping processes (not PostgreSQL).
    """
    import psutil

    argv = [
        str(Path(sys.executable).parent / "cdrstats"),
        "import",
        str(path),
        "--profile",
        "carrier",
        "--tenant",
        "bench",
        "--switch",
        "carrier-sw",
        "--database-url",
        database_url,
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_full_info().pss  # shared pages counted once
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"cdrstats import failed: {err.strip()}")
    return elapsed, peak / 1048576, out.splitlines()[0]


def raw_copy_rate(database_url: str, work: Path) -> tuple[float, int]:
    """(rows/s, rows) of one binary COPY into the emptied `cdr` of the rows it held."""
    columns = ", ".join(store.COPY_COLUMNS)
    dump = work / "cdr.copy"
    with psycopg.connect(database_url) as conn:
        with (
            open(dump, "wb") as out,
            conn.cursor().copy(
                f"COPY (SELECT {columns} FROM cdr) TO STDOUT (FORMAT BINARY)"
            ) as copy,
        ):
            for block in copy:
                out.write(block)
        counted = conn.execute("SELECT count(*) FROM cdr").fetchone()
        rows = int(counted[0]) if counted else 0
        conn.execute("TRUNCATE cdr")
        conn.commit()
        started = time.perf_counter()
        with (
            open(dump, "rb") as src,
            conn.cursor().copy(f"COPY cdr ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            while block := src.read(1 << 20):
                copy.write(block)
        conn.commit()
        elapsed = time.perf_counter() - started
        again = conn.execute("SELECT count(*) FROM cdr").fetchone()
    if again is None or again[0] != rows:
        raise RuntimeError(f"raw COPY stored {again} rows, expected {rows}")
    return rows / elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--rows", type=int, help="rows in the file (default 1,000,000)")
    parser.add_argument(
        "--database-url", default=os.environ.get("CDRSTATS_BENCH_DATABASE_URL"), help="admin URL"
    )
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    load_before = os.getloadavg()
    admin = args.database_url or embedded.start(ROOT / "var" / "bench-pg")
    name = create_database(admin)
    database_url = with_dbname(admin, name)
    try:
        migrate.upgrade(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            tid = tenants.add_tenant(conn, "bench")
            csvimport.save_profile(conn, tid, "carrier", PROFILE)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "carrier.csv"
            write_file(path, rows)
            size_mb = path.stat().st_size / 1048576
            print(f"{rows:,} rows, {size_mb:.0f} MB file")
            reader = csv_reader_rate(path)
            print(f"csv.reader alone: {reader:,.0f} rows/s")
            first_s, first_rss, summary = run_import(database_url, path)
            print(f"import: {rows / first_s:,.0f} rows/s, peak RSS {first_rss:.0f} MB: {summary}")
            again_s, again_rss, summary2 = run_import(database_url, path)
            print(f"re-import: {rows / again_s:,.0f} rows/s: {summary2}")
            load_after = os.getloadavg()
            expected = rows - rows // 1000
            raw, stored = raw_copy_rate(database_url, Path(tmp))
            if stored != expected:
                raise RuntimeError(f"{stored} CDRs stored, expected {expected}")
            print(f"raw binary COPY of the same {stored:,} rows: {raw:,.0f} rows/s")
    finally:
        drop_database(admin, name)
    rate = rows / first_s
    result = {
        "rows": rows,
        "rows_per_s": round(rate),
        "peak_rss_mb": round(first_rss, 1),
        "reimport_rows_per_s": round(rows / again_s),
        "reimport_peak_rss_mb": round(again_rss, 1),
        "raw_copy_rows_per_s": round(raw),
        "ratio_to_raw_copy": round(rate / raw, 3),
        "csv_reader_rows_per_s": round(reader),
        "ratio_to_csv_reader": round(rate / reader, 3),
        "loadavg_before": round(load_before[0], 2),
        "loadavg_after": round(load_after[0], 2),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "target_rss_mb": TARGET_RSS_MB,
        "meets_target": rate >= TARGET_ROWS_PER_S and first_rss < TARGET_RSS_MB,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
