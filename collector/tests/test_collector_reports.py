"""Reports API against a real collector: every figure equals what the seeded CDRs say.

Tenant A is in Europe/Paris (DST starts 2026-03-29), tenant B in America/New_York (DST
starts 2026-03-08); the seeded calls cross both changes.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from cdrstats_agent.model import CDR, Disposition
from cdrstats_collector import reports
from collector_api_testkit import ApiServer, api_server  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def _local_day(c: CDR, tz: ZoneInfo = PARIS) -> date:
    day: date = c.start.astimezone(tz).date()
    return day


def _expected(cdrs: list[CDR]) -> dict[str, Any]:
    answered = [c for c in cdrs if c.disposition is Disposition.ANSWERED]
    billsec = sum(c.billsec for c in cdrs)
    return {
        "calls": len(cdrs),
        "answered": len(answered),
        "asr": round(100.0 * len(answered) / len(cdrs), 2) if cdrs else None,
        "acd": round(billsec / len(answered), 1) if answered else None,
        "aloc": round(sum(c.duration for c in cdrs) / len(cdrs), 1) if cdrs else None,
        "minutes": round(billsec / 60.0, 1),
        "ring_avg": round(sum(c.ring_time or 0 for c in cdrs) / len(cdrs), 1) if cdrs else None,
    }


def _pick(k: dict[str, Any]) -> dict[str, Any]:
    return {n: k[n] for n in ("calls", "answered", "asr", "acd", "aloc", "minutes", "ring_avg")}


def _get(server: ApiServer, path: str, token: Any = "a_viewer", **params: Any) -> Any:
    r = server.get(path, server.seed.tokens[token], **params)
    assert r.status_code == 200, r.text
    return r.json()


def test_reports_never_read_the_cdr_table() -> None:
    source = inspect.getsource(reports).lower()
    assert " from cdr " not in source and " from cdr\n" not in source


def test_dashboard_matches_the_cdrs(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    start, end = date(2026, 3, 20), date(2026, 3, 30)
    doc = _get(api_server, "/api/v1/reports/dashboard", **{"from": start, "to": end})
    current = [c for c in cdrs if start <= _local_day(c) <= end]
    previous = [c for c in cdrs if start - timedelta(days=11) <= _local_day(c) < start]
    assert current and previous
    assert _pick(doc["current"]) == _expected(current)
    assert _pick(doc["previous"]) == _expected(previous)
    assert doc["previous_from"] == "2026-03-09" and doc["previous_to"] == "2026-03-19"
    assert doc["current"]["peak_concurrent"] >= 1
    assert doc["timezone"] == "Europe/Paris"


def test_dashboard_filters_by_switch_and_direction(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    start, end = date(2026, 3, 1), date(2026, 4, 30)
    sw2 = [c for c in cdrs if c.key.startswith("a2-")]
    doc = _get(
        api_server,
        "/api/v1/reports/dashboard",
        switch=s.switches["a-sw2"],
        **{"from": start, "to": end},
    )
    assert _pick(doc["current"]) == _expected(sw2)
    inbound = [c for c in cdrs if c.direction == "inbound"]
    doc = _get(
        api_server, "/api/v1/reports/dashboard", direction="inbound", **{"from": start, "to": end}
    )
    assert _pick(doc["current"]) == _expected(inbound)


def test_daily_series_on_local_days(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    for tenant, token, tz in ((s.tenant_a, "a_viewer", PARIS), (s.tenant_b, "b_viewer", NEW_YORK)):
        cdrs = s.cdrs[tenant]
        doc = _get(
            api_server,
            "/api/v1/reports/series",
            token,
            granularity="day",
            **{"from": "2026-03-01", "to": "2026-04-05"},
        )
        buckets = doc["buckets"]
        assert [b["label"] for b in buckets] == [
            (date(2026, 3, 1) + timedelta(days=i)).isoformat() for i in range(36)
        ]
        by_day = Counter(_local_day(c, tz).isoformat() for c in cdrs)
        assert {b["label"]: b["calls"] for b in buckets if b["calls"]} == dict(by_day)
        # each bucket starts at local midnight, with that day's UTC offset
        start = datetime.fromisoformat(buckets[0]["start"])
        assert start == datetime(2026, 3, 1, tzinfo=tz)


def test_hourly_series_over_the_spring_dst_change(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    doc = _get(
        api_server,
        "/api/v1/reports/series",
        granularity="hour",
        **{"from": "2026-03-29", "to": "2026-03-29"},
    )
    buckets = doc["buckets"]
    assert len(buckets) == 23  # 02:00 does not exist that night in Paris
    labels = [b["label"][11:] for b in buckets]
    assert "02:00" not in labels and labels[:3] == ["00:00", "01:00", "03:00"]
    assert buckets[0]["start"].endswith("+01:00") and buckets[-1]["start"].endswith("+02:00")
    by_hour = Counter(
        c.start.replace(minute=0, second=0, microsecond=0)
        for c in cdrs
        if _local_day(c) == date(2026, 3, 29)
    )
    got = {datetime.fromisoformat(b["start"]).astimezone(UTC): b["calls"] for b in buckets}
    assert {k: v for k, v in got.items() if v} == dict(by_hour)
    assert sum(got.values()) > 0


def test_monthly_series(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_b]
    doc = _get(
        api_server,
        "/api/v1/reports/series",
        "b_viewer",
        granularity="month",
        **{"from": "2026-02-01", "to": "2026-04-30"},
    )
    months = Counter(_local_day(c, NEW_YORK).strftime("%Y-%m") for c in cdrs)
    assert [(b["label"], b["calls"]) for b in doc["buckets"]] == [
        ("2026-02", 0),
        ("2026-03", months["2026-03"]),
        ("2026-04", months["2026-04"]),
    ]


def test_compare_same_weekday(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    doc = _get(api_server, "/api/v1/reports/compare", day="2026-03-29", weeks=3)
    assert doc["weekday"] == "Sunday"
    days = [d["day"] for d in doc["days"]]
    assert days == ["2026-03-29", "2026-03-22", "2026-03-15", "2026-03-08"]
    for entry in doc["days"]:
        mine = [c for c in cdrs if _local_day(c).isoformat() == entry["day"]]
        assert _pick(entry["totals"]) == _expected(mine)
        assert sum(h["calls"] for h in entry["hours"]) == len(mine)
        assert len(entry["hours"]) == (23 if entry["day"] == "2026-03-29" else 24)


def _owner_rows(server: ApiServer, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(server.database_url) as conn:
        return conn.execute(query, args).fetchall()


def test_top_countries_and_destinations(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    period = {"from": "2026-03-01", "to": "2026-04-30"}
    raw = _owner_rows(
        api_server,
        "SELECT coalesce(dest_country, ''), count(*) FROM cdr WHERE tenant_id = %s"
        " GROUP BY 1 ORDER BY 2 DESC, 1",
        s.tenant_a,
    )
    doc = _get(api_server, "/api/v1/reports/top", by="country", **period)
    assert [(i["country"] or "", i["calls"]) for i in doc["items"]] == raw
    assert round(sum(i["share"] for i in doc["items"])) == 100
    doc = _get(api_server, "/api/v1/reports/top", by="country", limit=1, **period)
    assert len(doc["items"]) == 1 and doc["items"][0]["calls"] == raw[0][1]
    raw = _owner_rows(
        api_server,
        "SELECT coalesce(dest_prefix, ''), coalesce(dest_country, ''), count(*) FROM cdr"
        " WHERE tenant_id = %s GROUP BY 1, 2",
        s.tenant_a,
    )
    assert ("336", "FR", 120) in raw  # a-sw1 calls +336...: the prefix table classified them
    doc = _get(api_server, "/api/v1/reports/top", by="destination", limit=500, **period)
    got = [(i["prefix"] or "", i["country"] or "", i["calls"]) for i in doc["items"]]
    assert sorted(got) == sorted(raw)
    assert doc["items"][0]["name"] == "France mobile" and doc["items"][0]["kind"] == "mobile"
    ranked = [i["minutes"] for i in doc["items"]]
    doc = _get(
        api_server, "/api/v1/reports/top", by="destination", order="minutes", limit=500, **period
    )
    assert [i["minutes"] for i in doc["items"]] == sorted(ranked, reverse=True)


def _check_breakdown(
    server: ApiServer, by: str, key: Callable[[CDR], Any], field: str, cdrs: list[CDR]
) -> None:
    doc = _get(
        server, "/api/v1/reports/breakdown", by=by, **{"from": "2026-03-01", "to": "2026-04-30"}
    )
    got = {i[field]: i["calls"] for i in doc["items"]}
    assert got == dict(Counter(key(c) for c in cdrs)), by
    calls = [i["calls"] for i in doc["items"]]
    assert calls == sorted(calls, reverse=True)


def test_breakdowns(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    _check_breakdown(api_server, "cause", lambda c: c.hangup_cause, "cause", cdrs)
    _check_breakdown(api_server, "disposition", lambda c: str(c.disposition), "disposition", cdrs)
    _check_breakdown(api_server, "sip_code", lambda c: c.sip_code, "sip_code", cdrs)
    _check_breakdown(api_server, "direction", lambda c: str(c.direction), "direction", cdrs)
    switch_of = {"a1": "a-sw1", "a2": "a-sw2"}
    _check_breakdown(api_server, "switch", lambda c: switch_of[c.key[:2]], "switch", cdrs)
    doc = _get(
        api_server,
        "/api/v1/reports/breakdown",
        by="trunk",
        **{"from": "2026-03-01", "to": "2026-04-30"},
    )
    got = {(i["switch"], i["trunk"]): i["calls"] for i in doc["items"]}
    assert got == dict(Counter((switch_of[c.key[:2]], c.trunk) for c in cdrs))
    doc = _get(
        api_server,
        "/api/v1/reports/breakdown",
        by="cause",
        **{"from": "2026-03-01", "to": "2026-04-30"},
    )
    assert {i["cause"]: i["name"] for i in doc["items"]}[16] == "NORMAL_CLEARING"


def test_period_errors_name_the_parameter(api_server: ApiServer) -> None:  # noqa: F811
    token = api_server.seed.tokens["a_viewer"]
    cases = [
        ("/api/v1/reports/dashboard", {"from": "2026-03-10", "to": "2026-03-01"}, "from"),
        ("/api/v1/reports/dashboard", {"from": "2020-01-01", "to": "2026-03-01"}, "to"),
        (
            "/api/v1/reports/series",
            {"granularity": "hour", "from": "2026-01-01", "to": "2026-03-01"},
            "to",
        ),
        ("/api/v1/reports/series", {"granularity": "week"}, "granularity"),
        ("/api/v1/reports/compare", {"weeks": "13"}, "weeks"),
        ("/api/v1/reports/compare", {"day": "2026-02-30"}, "day"),
        ("/api/v1/reports/top", {"limit": "0"}, "limit"),
        ("/api/v1/reports/breakdown", {"by": "colour"}, "by"),
    ]
    for path, params, name in cases:
        r = api_server.get(path, token, **params)
        assert r.status_code == 422, (path, params, r.text)
        assert r.json()["param"] == name, (path, params, r.text)


def test_reports_answer_from_the_aggregates_alone(database_url: str, tmp_path: Any) -> None:
    """With the raw CDRs gone (as after retention), every report still gives its figures."""
    from collector_api_testkit import seed_two_tenants

    from tests.fix_db import CollectorServer

    seed = seed_two_tenants(database_url, per_switch=30)
    server = CollectorServer(database_url, tmp_path / "collector", log_level="info")
    server.start()
    try:
        api = ApiServer(server.url, database_url, seed)
        period = {"from": "2026-03-01", "to": "2026-04-30"}
        paths: list[tuple[str, dict[str, Any]]] = [
            ("/api/v1/reports/dashboard", period),
            ("/api/v1/reports/series", {"granularity": "day", **period}),
            ("/api/v1/reports/compare", {"day": "2026-03-10", "weeks": 1}),
            ("/api/v1/reports/top", {"by": "destination", **period}),
            ("/api/v1/reports/breakdown", {"by": "trunk", **period}),
        ]
        before = [_get(api, path, **params) for path, params in paths]
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert conn.execute("DELETE FROM cdr").rowcount == 75  # 30 + 15 (A), 30 (B)
        after = [_get(api, path, **params) for path, params in paths]
        assert after == before
        assert before[0]["current"]["calls"] == 45
        assert _get(api, "/api/v1/cdrs")["items"] == []  # search does read cdr
    finally:
        server.stop()
