"""Reports API against a real collector: figures equal what the seeded CDRs say."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cdrstats_agent.model import CDR, Disposition
from collector_api_testkit import ApiServer, api_server  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")


def _local_day(c: CDR, tz: ZoneInfo = PARIS) -> date:
    return c.start.astimezone(tz).date()


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
    }


def _pick(k: dict[str, Any]) -> dict[str, Any]:
    return {n: k[n] for n in ("calls", "answered", "asr", "acd", "aloc", "minutes")}


def test_dashboard_matches_the_cdrs(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    days = sorted({_local_day(c) for c in cdrs})
    start, end = days[2], days[6]
    r = api_server.get(
        "/api/v1/reports/dashboard", s.tokens["a_viewer"], **{"from": start, "to": end}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    current = [c for c in cdrs if start <= _local_day(c) <= end]
    n = (end - start).days + 1
    previous = [c for c in cdrs if start - timedelta(days=n) <= _local_day(c) < start]
    assert _pick(doc["current"]) == _expected(current)
    assert _pick(doc["previous"]) == _expected(previous)
    assert doc["current"]["peak_concurrent"] >= 1
    assert doc["timezone"] == "Europe/Paris"
