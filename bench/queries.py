"""Dashboard, search and export at scale: the read API against raw SQL over `cdr`.

    .venv/bin/python bench/queries.py [--quick] [--rows N] [--keep] [--database-url URL]

1. Load N realistic CDRs (default 10,000,000; --quick 300,000) over 90 days: 4 tenants of
   unequal size in 4 timezones (one with a half-hour offset), 3 switches each, 2 trunks per
   switch, 14 destination countries with mobile/fixed prefixes, a diurnal and weekly call
   profile, realistic dispositions and Q.850 causes. Rows are generated in Python as binary
   COPY data (pre-encoded fields) and copied straight into the monthly `cdr` partitions by two
   worker processes, then `aggregates.rebuild_all` fills the aggregate tables (set-based SQL).
2. Start a real `cdrstats serve` process and measure, for the biggest tenant through its own
   API token (row-level security on), p50/p95 of every dashboard query over HTTP, and in the
   same run the raw GROUP BY over `cdr` that gives the same answer (checked equal).
3. Search p95 over a 30-day range (several filter kinds, first and second pages), and the
   `contains`/`suffix` number searches apart (not indexed, reported but not in the target).
4. Export: CSV and XLSX of a 1-day and a 30-day search; rows/s and the collector's peak RSS
   (sampled every 10 ms) for both sizes: flat memory means the two peaks are about equal.

The last line is one JSON object with dashboard_p95_ms (worst query), speedup_vs_raw (smallest
raw p50 / API p95), search_p95_ms, export_rows_per_s (CSV, 30 days), export_peak_rss_mb and
more. The database is embedded (var/bench-pg) unless --database-url or
CDRSTATS_BENCH_DATABASE_URL names a server; it is dropped at the end unless --keep (a kept
database of the same size is reused by the next run, skipping the load).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdrstats_collector import aggregates, auth, embedded, migrate, tenants, users  # noqa: E402

from tests.fix_db import CollectorServer, drop_database, with_dbname  # noqa: E402

DAYS = 90
TENANTS = (  # name, timezone, share of the calls, switch country
    ("tel-paris", "Europe/Paris", 0.50, "FR"),
    ("nyc-voice", "America/New_York", 0.25, "US"),
    ("mumbai-cc", "Asia/Kolkata", 0.15, "IN"),
    ("utc-labs", "UTC", 0.10, "GB"),
)
DESTINATIONS = (  # country, dial code, mobile prefix digits, fixed prefix digits, weight
    ("FR", "33", "6", "1", 30),
    ("GB", "44", "7", "20", 12),
    ("DE", "49", "15", "30", 10),
    ("US", "1", "212", "415", 12),
    ("ES", "34", "6", "91", 6),
    ("IT", "39", "3", "06", 5),
    ("MA", "212", "6", "522", 5),
    ("SN", "221", "77", "33", 3),
    ("IN", "91", "98", "22", 8),
    ("CN", "86", "13", "10", 3),
    ("BR", "55", "119", "113", 2),
    ("BE", "32", "47", "2", 2),
    ("CH", "41", "79", "44", 1),
    ("NL", "31", "6", "20", 1),
)
DISPOSITIONS = (  # disposition, Q.850 cause, SIP code, weight
    ("ANSWERED", 16, 200, 56),
    ("NO_ANSWER", 19, 480, 16),
    ("BUSY", 17, 486, 9),
    ("FAILED", 34, 503, 5),
    ("FAILED", 1, 404, 3),
    ("FAILED", 38, 502, 2),
    ("CANCELLED", 487, 487, 9),
)
HOURLY = (1, 1, 1, 1, 1, 2, 4, 9, 16, 20, 21, 20, 14, 15, 19, 20, 18, 14, 9, 6, 4, 3, 2, 1)
TARGET_P95_MS = 50.0
TARGET_SPEEDUP = 30.0
TARGET_SEARCH_P95_MS = 100.0
TARGET_EXPORT_ROWS_PER_S = 100_000
COPY_COLUMNS = (  # rows are: head (template) + key + times + body (template) + destination
    "tenant_id",
    "switch_id",
    "key",
    "start_time",
    "answer_time",
    "end_time",
    "duration",
    "billsec",
    "disposition",
    "direction",
    "caller",
    "caller_name",
    "caller_e164",
    "accountcode",
    "hangup_cause",
    "sip_code",
    "ring_time",
    "read_codec",
    "write_codec",
    "trunk",
    "extra",
    "agent_id",
    "callee",
    "callee_e164",
    "dest_country",
    "dest_kind",
    "dest_prefix",
)
TEMPLATES = 60_000
NUMBERS = 400_000
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch


# --- data generation (binary COPY) -----------------------------------------------------------


def _f(value: bytes | None) -> bytes:
    """One field of a binary COPY row: length + bytes (-1 for NULL)."""
    if value is None:
        return b"\xff\xff\xff\xff"
    return struct.pack(">i", len(value)) + value


def _t(us: int) -> bytes:
    return b"\x00\x00\x00\x08" + struct.pack(">q", us - PG_EPOCH_US)


def _i4(n: int) -> bytes:
    return b"\x00\x00\x00\x04" + struct.pack(">i", n)


def _hour_weights(start_us: int, tz_shift_h: int) -> list[float]:
    weights = []
    for h in range(DAYS * 24):
        local = (h + tz_shift_h) % 24
        weekday = ((start_us // 3_600_000_000 + h + tz_shift_h) // 24 + 3) % 7  # 0 = Monday
        weights.append(HOURLY[local] * (0.35 if weekday >= 5 else 1.0))
    return weights


def _templates(rng: random.Random, tenants_: list[dict[str, Any]]) -> list[Any]:
    """Pre-encoded call shapes: (head, ring µs or None, duration µs, body)."""
    tenant_weights = [t["share"] for t in tenants_]
    disp_weights = [d[3] for d in DISPOSITIONS]
    directions = [b"outbound"] * 7 + [b"inbound"] * 2 + [b"internal"]
    codec = _f(b"PCMA")
    ncols = struct.pack(">h", len(COPY_COLUMNS))
    out = []
    for _ in range(TEMPLATES):
        t = rng.choices(tenants_, tenant_weights)[0]
        sw = t["switches"][rng.randrange(3)]
        disp, cause, sip, _w = rng.choices(DISPOSITIONS, disp_weights)[0]
        answered = disp == "ANSWERED"
        ring = rng.randrange(1, 25)
        billsec = min(int(rng.expovariate(1 / 150)) + 1, 7200) if answered else 0
        duration = ring + billsec
        ext = rng.randrange(100, 400)
        head = ncols + t["tid"] + sw["sid"]
        body = (
            _i4(duration)
            + _i4(billsec)
            + _f(disp.encode())
            + _f(rng.choice(directions))
            + _f(str(ext).encode())
            + _f(b"Ext %d" % ext)
            + b"\xff\xff\xff\xff"
            + t["acct"][ext % 5]
            + _i4(cause)
            + _i4(sip)
            + _i4(ring)
            + codec
            + codec
            + sw["trunks"][rng.randrange(2)]
            + _f(b'\x01{"sip_hangup_disposition": "send_bye", "read_rate": "8000"}')
            + sw["agent"]
        )
        out.append((head, ring * 1_000_000 if answered else None, duration * 1_000_000, body))
    return out


def _numbers(rng: random.Random) -> list[bytes]:
    """Pre-encoded destinations: callee, callee_e164, dest_country, dest_kind, dest_prefix."""
    weights = [d[4] for d in DESTINATIONS]
    out = []
    for _ in range(NUMBERS):
        country, cc, mob, fix, _w = rng.choices(DESTINATIONS, weights)[0]
        mobile = rng.random() < 0.6
        prefix = cc + (mob if mobile else fix)
        number = prefix + str(rng.randrange(10_000_000, 99_999_999))
        out.append(
            _f(("00" + number).encode())
            + _f(b"+" + number.encode())
            + _f(country.encode())
            + _f(b"mobile" if mobile else b"fixed")
            + _f(prefix.encode())
        )
    return out


def generate_chunk(job: tuple[str, int, int, int, dict[str, Any]]) -> int:
    """Worker: generate hours [h0, h1) of the plan and COPY them into their partitions."""
    database_url, h0, h1, seed, plan = job
    rng = random.Random(seed)
    start_us: int = plan["start_us"]
    per_hour: list[int] = plan["per_hour"]
    templates = _templates(rng, plan["tenants"])
    numbers = _numbers(rng)
    nt, nn = len(templates), len(numbers)
    time_field = struct.Struct(">iq").pack
    null = b"\xff\xff\xff\xff"
    written = 0
    header = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2
    with psycopg.connect(database_url) as conn:
        conn.execute("SET synchronous_commit = off")
        h = h0
        while h < h1:
            month_start = datetime.fromtimestamp((start_us + h * 3_600_000_000) / 1e6, UTC)
            part = f"cdr_y{month_start:%Y}m{month_start:%m}"
            stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                sql.Identifier(part), sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
            )
            with conn.cursor() as cur, cur.copy(stmt) as copy:
                copy.write(header)
                buf: list[bytes] = []
                while h < h1:
                    hour_us = start_us + h * 3_600_000_000
                    moment = datetime.fromtimestamp(hour_us / 1e6, UTC)
                    if (moment.year, moment.month) != (month_start.year, month_start.month):
                        break
                    n = per_hour[h]
                    step = 3_600_000_000 // max(n, 1)
                    base = hour_us - PG_EPOCH_US
                    ti = rng.randrange(nt)
                    ni = rng.randrange(nn)
                    for j in range(n):
                        head, ring, dur, body = templates[(ti + j * 7919) % nt]
                        st = base + j * step + (j * 104_729) % step
                        key = b"k%d-%d" % (h, j)
                        buf.append(
                            head
                            + struct.pack(">i", len(key))
                            + key
                            + time_field(8, st)
                            + (null if ring is None else time_field(8, st + ring))
                            + time_field(8, st + dur)
                            + body
                            + numbers[(ni + j * 104_729) % nn]
                        )
                    written += n
                    h += 1
                    if len(buf) >= 20_000:
                        copy.write(b"".join(buf))
                        buf.clear()
                if buf:
                    copy.write(b"".join(buf))
                copy.write(b"\xff\xff")
            conn.commit()
    return written


def _rebuild(database_url: str, tenant_id: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        aggregates.rebuild_all(conn, tenant_id)


def load(database_url: str, rows: int, seed: int = 7) -> dict[str, Any]:
    """Create tenants, switches, users; generate and COPY `rows` CDRs; rebuild aggregates."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=DAYS)
    start_us = int(start.timestamp()) * 1_000_000
    info: dict[str, Any] = {"tenants": []}
    plan_tenants = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, tz, share, country in TENANTS:
            tid = tenants.add_tenant(conn, name, tz)
            switches = []
            for k in range(3):
                sid = tenants.ensure_switch(conn, tid, f"{name}-sw{k + 1}")
                conn.execute("UPDATE switch SET country = %s WHERE id = %s", (country, sid))
                agent_id = uuid.uuid4()
                conn.execute(
                    "INSERT INTO agent (id, tenant_id, switch_id, public_key)"
                    " VALUES (%s, %s, %s, %s)",
                    (agent_id, tid, sid, b"\x01" * 32),
                )
                switches.append(
                    {
                        "sid": _f(struct.pack(">q", sid)),
                        "agent": _f(agent_id.bytes),
                        "trunks": [_f(f"gw-{name}-{k}{x}".encode()) for x in "ab"],
                    }
                )
            plan_tenants.append(
                {
                    "tid": _f(struct.pack(">q", tid)),
                    "share": share,
                    "switches": switches,
                    "acct": [_f(f"{name}-acct{a}".encode()) for a in range(5)],
                }
            )
            users.add_user(conn, f"{name}-viewer", "tenant_viewer", "bench-password-1", name)
            info["tenants"].append(
                {
                    "id": tid,
                    "name": name,
                    "timezone": tz,
                    "token": auth.create_token(conn, f"{name}-viewer"),
                }
            )
        month = date(start.year, start.month, 1)
        while month <= now.date():
            conn.execute("SELECT cdr_ensure_partition(%s)", (month,))
            month = (month + timedelta(days=32)).replace(day=1)
    weights = _hour_weights(start_us, 1)
    total = sum(weights)
    per_hour = [int(rows * w / total) for w in weights]
    per_hour[-1] += rows - sum(per_hour)
    plan = {"start_us": start_us, "per_hour": per_hour, "tenants": plan_tenants}
    hours = len(per_hour)
    half = hours // 2
    jobs = [(database_url, 0, half, seed, plan), (database_url, half, hours, seed + 1, plan)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        written = sum(pool.map(generate_chunk, jobs))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE cdr")
    # aggregates.rebuild_all does the tenants one after the other; two at a time here
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(lambda t: _rebuild(database_url, t["id"]), info["tenants"]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute(
            "CREATE TABLE bench_info (doc jsonb)",
        )
        info.update(rows=written, start=start.isoformat(), end=now.isoformat())
        conn.execute("INSERT INTO bench_info VALUES (%s)", (json.dumps(info),))
    rebuild_s = time.perf_counter() - t0
    print(
        f"loaded {written:,} CDRs in {load_s:.1f} s ({written / load_s:,.0f} rows/s, binary COPY"
        f" into partitions, 2 workers); aggregates rebuilt in {rebuild_s:.1f} s",
        flush=True,
    )
    info["load_s"] = round(load_s, 1)
    info["rebuild_s"] = round(rebuild_s, 1)
    return info


# --- measuring -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )

    def timed(self, path: str, params: dict[str, Any], n: int) -> tuple[list[float], Any]:
        times = []
        doc: Any = None
        self.client.get(path, params=params)  # warm the connection and the caches once
        for _ in range(n):
            t0 = time.perf_counter()
            r = self.client.get(path, params=params)
            times.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{path} {params}: {r.status_code} {r.text[:300]}")
            doc = r.json()
        return times, doc


def raw_timed(
    database_url: str, query: str, params: dict[str, Any], n: int
) -> tuple[list[float], list[tuple[Any, ...]]]:
    times = []
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(database_url) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 2")
        for _ in range(n):
            t0 = time.perf_counter()
            rows = conn.execute(query.encode(), params).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
    return times, rows


def dashboards(
    api: Api, database_url: str, tenant: dict[str, Any], today: date, n: int, n_raw: int
) -> list[dict[str, Any]]:
    tz = ZoneInfo(tenant["timezone"])
    tid = tenant["id"]
    d30 = today - timedelta(days=29)
    lo = datetime.combine(today - timedelta(days=59), datetime.min.time(), tz)
    mid = datetime.combine(d30, datetime.min.time(), tz)
    hi = datetime.combine(today + timedelta(days=1), datetime.min.time(), tz)
    week = today - timedelta(days=6)
    wlo = datetime.combine(week, datetime.min.time(), tz)
    p: dict[str, Any] = {"t": tid, "lo": lo, "mid": mid, "hi": hi, "tz": tenant["timezone"]}
    base = "FROM cdr WHERE tenant_id = %(t)s AND start_time >= %(mid)s AND start_time < %(hi)s"
    local_day = "(start_time AT TIME ZONE %(tz)s)::date"
    compare_days = [today - timedelta(weeks=k) for k in range(5)]
    ranges = []
    for i, d in enumerate(compare_days):
        p[f"c{i}"] = datetime.combine(d, datetime.min.time(), tz)
        p[f"e{i}"] = datetime.combine(d + timedelta(days=1), datetime.min.time(), tz)
        ranges.append(f"(start_time >= %(c{i})s AND start_time < %(e{i})s)")
    compare_ranges = " OR ".join(ranges)
    # Raw SQL computes what the API answers: every KPI counter of each bucket (the API's
    # concurrency peaks are left out: no plain GROUP BY gives them). Compared: the keys,
    # calls, answered calls and minutes.
    kpi = (
        "count(*), count(*) FILTER (WHERE disposition = 'ANSWERED'), sum(billsec),"
        " count(*) FILTER (WHERE disposition = 'BUSY'),"
        " count(*) FILTER (WHERE disposition = 'NO_ANSWER'),"
        " count(*) FILTER (WHERE disposition = 'FAILED'),"
        " count(*) FILTER (WHERE disposition = 'CANCELLED'),"
        " count(*) FILTER (WHERE disposition <> 'FAILED' OR hangup_cause BETWEEN 17 AND 21),"
        " sum(duration), sum(ring_time), count(ring_time)"
    )

    def api_rows(items: Any, *keys: str) -> list[tuple[Any, ...]]:
        return sorted(
            (*(i[k] for k in keys), i["calls"], i["answered"], i["minutes"])
            for i in items
            if i["calls"]
        )

    def raw_rows(rows: Any, nkeys: int, key: Callable[[Any], Any] = lambda k: k) -> Any:
        return sorted(
            (
                *(key(k) for k in r[:nkeys]),
                r[nkeys],
                r[nkeys + 1],
                round((r[nkeys + 2] or 0) / 60, 1),
            )
            for r in rows
        )

    def api_calls_minutes(items: Any, key: str) -> list[tuple[Any, ...]]:
        return sorted((i[key], i["calls"], i["minutes"]) for i in items)

    def raw_calls_minutes(rows: Any) -> list[tuple[Any, ...]]:
        return sorted((r[0], r[1], round((r[3] or 0) / 60, 1)) for r in rows)

    def compare_api(doc: Any) -> list[tuple[Any, ...]]:
        out = []
        for x in doc["days"]:
            for h in x["hours"]:
                if h["calls"]:
                    stamp = datetime.fromisoformat(h["start"]).timestamp()
                    out.append((stamp, h["calls"], h["answered"], h["minutes"]))
        return sorted(out)

    cases: list[tuple[str, str, dict[str, Any], str, Callable[[Any], Any], Callable[[Any], Any]]]
    cases = [
        (
            "dashboard_30d",
            "/api/v1/reports/dashboard",
            {"from": d30, "to": today},
            f"SELECT start_time >= %(mid)s, {kpi} FROM cdr WHERE tenant_id = %(t)s"
            " AND start_time >= %(lo)s AND start_time < %(hi)s GROUP BY 1",
            lambda d: sorted(
                (cur, d[k]["calls"], d[k]["answered"], d[k]["minutes"])
                for cur, k in ((True, "current"), (False, "previous"))
            ),
            lambda r: raw_rows(r, 1),
        ),
        (
            "series_hour_7d",
            "/api/v1/reports/series",
            {"granularity": "hour", "from": week, "to": today},
            f"SELECT date_trunc('hour', start_time), {kpi} FROM cdr WHERE tenant_id = %(t)s"
            " AND start_time >= %(wlo)s AND start_time < %(hi)s GROUP BY 1",
            lambda d: sorted(
                (
                    datetime.fromisoformat(b["start"]).timestamp(),
                    b["calls"],
                    b["answered"],
                    b["minutes"],
                )
                for b in d["buckets"]
                if b["calls"]
            ),
            lambda r: raw_rows(r, 1, lambda k: k.timestamp()),
        ),
        (
            "series_day_90d",
            "/api/v1/reports/series",
            {"granularity": "day", "from": today - timedelta(days=89), "to": today},
            f"SELECT {local_day}, {kpi} FROM cdr WHERE tenant_id = %(t)s"
            " AND start_time >= %(d90)s AND start_time < %(hi)s GROUP BY 1",
            lambda d: api_rows(d["buckets"], "label"),
            lambda r: raw_rows(r, 1, lambda k: k.isoformat()),
        ),
        (
            "series_month",
            "/api/v1/reports/series",
            {"granularity": "month", "from": today - timedelta(days=89), "to": today},
            f"SELECT to_char({local_day}, 'YYYY-MM'), {kpi} FROM cdr WHERE tenant_id = %(t)s"
            " AND start_time >= %(d90)s AND start_time < %(hi)s GROUP BY 1",
            lambda d: api_rows(d["buckets"], "label"),
            lambda r: raw_rows(r, 1),
        ),
        (
            "compare_4_weeks",
            "/api/v1/reports/compare",
            {"day": today, "weeks": 4},
            f"SELECT date_trunc('hour', start_time), {kpi} FROM cdr WHERE tenant_id = %(t)s"
            f" AND ({compare_ranges}) GROUP BY 1",
            compare_api,
            lambda r: raw_rows(r, 1, lambda k: k.timestamp()),
        ),
        (
            "top_countries_30d",
            "/api/v1/reports/top",
            {"by": "country", "from": d30, "to": today, "limit": 10},
            f"SELECT dest_country, {kpi} {base} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
            lambda d: api_rows(d["items"], "country"),
            lambda r: raw_rows(r, 1),
        ),
        (
            "top_destinations_30d",
            "/api/v1/reports/top",
            {"by": "destination", "from": d30, "to": today, "limit": 20},
            f"SELECT dest_prefix, dest_country, {kpi} {base} GROUP BY dest_prefix,"
            " dest_country, dest_kind ORDER BY 3 DESC, 1 LIMIT 20",
            lambda d: api_rows(d["items"], "prefix", "country"),
            lambda r: raw_rows(r, 2),
        ),
        (
            "causes_30d",
            "/api/v1/reports/breakdown",
            {"by": "cause", "from": d30, "to": today},
            f"SELECT hangup_cause, {kpi} {base} GROUP BY 1",
            lambda d: api_calls_minutes(d["items"], "cause"),
            raw_calls_minutes,
        ),
        (
            "dispositions_30d",
            "/api/v1/reports/breakdown",
            {"by": "disposition", "from": d30, "to": today},
            f"SELECT disposition, {kpi} {base} GROUP BY 1",
            lambda d: api_calls_minutes(d["items"], "disposition"),
            raw_calls_minutes,
        ),
        (
            "per_switch_30d",
            "/api/v1/reports/breakdown",
            {"by": "switch", "from": d30, "to": today},
            f"SELECT switch_id, {kpi} {base} GROUP BY 1",
            lambda d: api_rows(d["items"], "switch_id"),
            lambda r: raw_rows(r, 1),
        ),
        (
            "per_trunk_30d",
            "/api/v1/reports/breakdown",
            {"by": "trunk", "from": d30, "to": today},
            f"SELECT switch_id, trunk, {kpi} {base} GROUP BY 1, 2",
            lambda d: api_rows(d["items"], "switch_id", "trunk"),
            lambda r: raw_rows(r, 2),
        ),
    ]
    p["wlo"] = wlo
    p["d90"] = datetime.combine(today - timedelta(days=89), datetime.min.time(), tz)
    out = []
    for name, path, params, raw_sql, from_api, from_raw in cases:
        api_ms, doc = api.timed(path, params, n)
        raw_ms, rows = raw_timed(database_url, raw_sql, p, n_raw)
        same = from_api(doc) == from_raw(rows)
        if not same:
            print(f"  {name}: API {from_api(doc)!r:.300}\n  raw {from_raw(rows)!r:.300}")
        result = {
            "query": name,
            "api_p50_ms": round(statistics.median(api_ms), 2),
            "api_p95_ms": round(percentile(api_ms, 0.95), 2),
            "raw_p50_ms": round(statistics.median(raw_ms), 1),
            "speedup": round(statistics.median(raw_ms) / percentile(api_ms, 0.95), 1),
            "same_answer": same,
        }
        print(
            f"  {name:22} API p50 {result['api_p50_ms']:7.2f} ms  p95 {result['api_p95_ms']:7.2f}"
            f" ms | raw GROUP BY p50 {result['raw_p50_ms']:8.1f} ms | x{result['speedup']:<7}"
            f" same answer: {same}",
            flush=True,
        )
        out.append(result)
    return out


def searches(api: Api, tenant: dict[str, Any], today: date, n: int) -> dict[str, Any]:
    d30 = {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat()}
    first = api.client.get("/api/v1/cdrs", params={**d30, "limit": 100}).json()
    sample = first["items"][37]
    cases = {
        "range_only": {},
        "page_2": {"cursor": first["next_cursor"]},
        "callee_exact": {"callee": sample["callee"]},
        "callee_prefix_7": {"callee": sample["callee"][:7], "callee_match": "prefix"},
        "callee_prefix_5": {"callee": sample["callee"][:5], "callee_match": "prefix"},
        "caller_exact": {"caller": sample["caller"]},
        "accountcode": {"accountcode": sample["accountcode"]},
        "busy_to_germany": {"disposition": "BUSY", "country": "DE"},
        "long_calls": {"min_duration": 1200},
        "switch_inbound": {"switch": sample["switch_id"], "direction": "inbound"},
        "cause_38": {"cause": 38},
    }
    unindexed = {
        "callee_contains": {"callee": sample["callee"][-6:-2], "callee_match": "contains"},
        "callee_suffix": {"callee": sample["callee"][-4:], "callee_match": "suffix"},
        "callee_contains_rare": {"callee": sample["callee"][-9:], "callee_match": "contains"},
    }
    all_ms: list[float] = []
    per: dict[str, Any] = {}
    for group, table in (("indexed", cases), ("unindexed", unindexed)):
        for name, extra in table.items():
            ms, doc = api.timed("/api/v1/cdrs", {**d30, "limit": 100, **extra}, n)
            if group == "indexed":
                all_ms += ms
            per[name] = {
                "p50_ms": round(statistics.median(ms), 2),
                "p95_ms": round(percentile(ms, 0.95), 2),
                "rows": doc["count"],
            }
            note = "" if group == "indexed" else "  [not indexed: not in the target]"
            print(
                f"  search {name:22} p50 {per[name]['p50_ms']:7.2f} ms  p95"
                f" {per[name]['p95_ms']:7.2f} ms  ({doc['count']} rows){note}",
                flush=True,
            )
    return {"p95_ms": round(percentile(all_ms, 0.95), 2), "per_query": per}


def _peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    out.append(peak)


def exports(api: Api, server_pid: int, today: date) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fmt in ("csv", "xlsx"):
        for label, days in (("1d", 1), ("30d", 30)):
            # whole days that are over: yesterday, or the 30 days before today
            last = today - timedelta(days=1)
            params = {"from": (last - timedelta(days=days - 1)).isoformat(), "to": last.isoformat()}
            stop = threading.Event()
            peaks: list[int] = []
            before = psutil.Process(server_pid).memory_info().rss
            sampler = threading.Thread(target=_peak_rss, args=(server_pid, stop, peaks))
            sampler.start()
            size = 0
            t0 = time.perf_counter()
            with api.client.stream("GET", f"/api/v1/cdrs/export.{fmt}", params=params) as r:
                if r.status_code != 200:
                    raise SystemExit(f"export {fmt}: {r.status_code} {r.read()[:300]!r}")
                tail = b""
                lines = 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if fmt == "csv":
                        lines += chunk.count(b"\n")
                    tail = chunk[-64:]
            elapsed = time.perf_counter() - t0
            stop.set()
            sampler.join()
            rows = lines - 1 if fmt == "csv" else out.get(f"csv_{label}", {}).get("rows", 0)
            out[f"{fmt}_{label}"] = {
                "rows": rows,
                "mb": round(size / 1e6, 1),
                "seconds": round(elapsed, 2),
                "rows_per_s": round(rows / elapsed) if elapsed else 0,
                "rss_before_mb": round(before / 1e6, 1),
                "peak_rss_mb": round(peaks[0] / 1e6, 1),
            }
            del tail
            e = out[f"{fmt}_{label}"]
            print(
                f"  export {fmt} {label}: {e['rows']:,} rows, {e['mb']} MB in {e['seconds']} s"
                f" = {e['rows_per_s']:,} rows/s; collector RSS {e['rss_before_mb']} MB before,"
                f" peak {e['peak_rss_mb']} MB",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300,000 CDRs, fewer repetitions")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument(
        "--database-url", default=os.environ.get("CDRSTATS_BENCH_DATABASE_URL"), help="admin URL"
    )
    args = parser.parse_args()
    rows = args.rows or (300_000 if args.quick else 10_000_000)
    n, n_raw = (15, 2) if args.quick else (40, 3)
    admin = args.database_url or embedded.start(ROOT / "var" / "bench-pg")
    name = f"cdrstats_bench_queries_{rows}"
    database_url = with_dbname(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    info: dict[str, Any] | None = None
    if exists:
        try:
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT doc FROM bench_info").fetchone()
                info = row[0] if row else None
        except psycopg.Error:
            info = None
        if info is not None:
            try:  # later migrations are applied; a changed one means: load again
                migrate.upgrade(database_url, months_ahead=1)
            except migrate.MigrationError as exc:
                print(f"not reusing database {name}: {exc}")
                info = None
        if info is None:
            drop_database(admin, name)
        else:
            print(f"reusing database {name} ({info['rows']:,} CDRs, loaded {info['start']})")
    if info is None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        migrate.upgrade(database_url, months_ahead=1)
        info = load(database_url, rows)
    work = Path(tempfile.mkdtemp(prefix="cdrstats-bench-queries-"))
    server = CollectorServer(database_url, work / "collector", log_level="warning")
    try:
        server.start()
        assert server.process is not None
        tenant = info["tenants"][0]  # the biggest
        today = datetime.fromisoformat(info["end"]).astimezone(ZoneInfo(tenant["timezone"]))
        day = today.date()
        api = Api(server.url, tenant["token"])
        load_before = os.getloadavg()[0]  # a shared machine: other work skews the latencies
        print(f"tenant {tenant['name']} ({tenant['timezone']}), {info['rows']:,} CDRs in total:")
        dash = dashboards(api, database_url, tenant, day, n, n_raw)
        srch = searches(api, tenant, day, n)
        exp = exports(api, server.process.pid, day)
    finally:
        server.stop()
        if not args.keep:
            drop_database(admin, name)
    big = exp["csv_30d"]
    result = {
        "bench": "queries",
        "cdrs": info["rows"],
        "load_rows_per_s": round(info["rows"] / info["load_s"]) if info.get("load_s") else None,
        "rebuild_s": info.get("rebuild_s"),
        "dashboard_p95_ms": max(d["api_p95_ms"] for d in dash),
        "speedup_vs_raw": min(d["speedup"] for d in dash),
        "same_answers": all(d["same_answer"] for d in dash),
        "search_p95_ms": srch["p95_ms"],
        "export_rows_per_s": big["rows_per_s"],
        "export_rows": big["rows"],
        "export_peak_rss_mb": max(e["peak_rss_mb"] for e in exp.values()),
        "export_peak_rss_1d_vs_30d_mb": [exp["csv_1d"]["peak_rss_mb"], big["peak_rss_mb"]],
        "xlsx_rows_per_s": exp["xlsx_30d"]["rows_per_s"],
        "xlsx_peak_rss_1d_vs_30d_mb": [
            exp["xlsx_1d"]["peak_rss_mb"],
            exp["xlsx_30d"]["peak_rss_mb"],
        ],
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "targets": {
            "dashboard_p95_ms": TARGET_P95_MS,
            "speedup_vs_raw": TARGET_SPEEDUP,
            "search_p95_ms": TARGET_SEARCH_P95_MS,
            "export_rows_per_s": TARGET_EXPORT_ROWS_PER_S,
        },
    }
    result["meets_target"] = (
        result["dashboard_p95_ms"] <= TARGET_P95_MS
        and result["speedup_vs_raw"] >= TARGET_SPEEDUP
        and result["same_answers"]
        and result["search_p95_ms"] <= TARGET_SEARCH_P95_MS
        and result["export_rows_per_s"] >= TARGET_EXPORT_ROWS_PER_S
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
