"""CSV and XLSX exports of a search, streamed by a real collector."""

from __future__ import annotations

import asyncio
import csv
import io
import zipfile
from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import httpx
import psycopg
from cdrstats_collector import export
from collector_api_testkit import ApiServer, add_agent, api_server, ingest, make_cdrs  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")
NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
HEADERS = [h for h, _, _ in export.EXPORT_COLUMNS]


def _download(server: ApiServer, fmt: str, token: str = "a_viewer", **params: Any) -> bytes:
    with httpx.stream(
        "GET",
        f"{server.url}/api/v1/cdrs/export.{fmt}",
        params=params,
        headers={"Authorization": f"Bearer {server.seed.tokens[token]}"},
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        assert "attachment" in r.headers["content-disposition"]
        assert "content-length" not in r.headers  # streamed
        return b"".join(r.iter_bytes())


def _chronological(server: ApiServer, tenant: int, keep: Any = None) -> list[str]:
    cdrs = [c for c in server.seed.cdrs[tenant] if keep is None or keep(c)]
    return [c.key for c in sorted(cdrs, key=lambda c: (c.start, c.key))]


def xlsx_rows(data: bytes) -> list[list[str | None]]:
    """The cells of the first sheet, as text (inline strings and numbers)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/styles.xml"} <= names
        root = ElementTree.fromstring(zf.read("xl/worksheets/sheet1.xml"))
    rows: list[list[str | None]] = []
    for row in root.iterfind("m:sheetData/m:row", NS):
        cells: list[str | None] = []
        for c in row.iterfind("m:c", NS):
            t = c.find("m:is/m:t", NS)
            v = c.find("m:v", NS)
            cells.append(t.text or "" if t is not None else (v.text if v is not None else None))
        rows.append(cells)
    return rows


def test_csv_has_every_row_in_order_with_local_times(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    data = _download(api_server, "csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert list(rows[0]) == HEADERS
    assert [r["key"] for r in rows] == _chronological(api_server, s.tenant_a)
    by_key = {c.key: c for c in s.cdrs[s.tenant_a]}
    for r in rows:
        c = by_key[r["key"]]
        assert r["callee"] == c.callee and r["caller_name"] == c.caller_name
        assert int(r["billsec"]) == c.billsec and r["disposition"] == c.disposition
        assert r["switch"] == ("a-sw1" if c.key.startswith("a1-") else "a-sw2")
        start = datetime.fromisoformat(r["start_time"])
        assert start == c.start and start.utcoffset() in (timedelta(hours=1), timedelta(hours=2))


def test_csv_follows_the_search_filters(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    data = _download(api_server, "csv", disposition="BUSY", callee="33", callee_match="prefix")
    keys = [r["key"] for r in csv.DictReader(io.StringIO(data.decode()))]
    expected = _chronological(
        api_server, s.tenant_a, lambda c: c.disposition == "BUSY" and c.callee.startswith("33")
    )
    assert keys == expected and keys


def test_xlsx_is_a_valid_workbook_with_every_row(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    rows = xlsx_rows(_download(api_server, "xlsx"))
    assert rows[0] == HEADERS
    body = rows[1:]
    key_col = HEADERS.index("key")
    assert [r[key_col] for r in body] == _chronological(api_server, s.tenant_a)
    by_key = {c.key: c for c in s.cdrs[s.tenant_a]}
    start_col, answer_col = HEADERS.index("start_time"), HEADERS.index("answer_time")
    for r in body:
        c = by_key[str(r[key_col])]
        assert len(r) == len(HEADERS)
        assert r[HEADERS.index("caller_name")] == c.caller_name
        assert int(str(r[HEADERS.index("duration")])) == c.duration
        # an Excel serial date of the local wall time
        serial = float(str(r[start_col]))
        local = datetime(1899, 12, 30) + timedelta(days=serial)
        wall = c.start.astimezone(PARIS).replace(tzinfo=None)
        assert abs((local - wall).total_seconds()) < 0.01
        if c.answer is None:
            assert r[answer_col] is None


def test_xlsx_keeps_formulas_and_markup_as_text(api_server: ApiServer) -> None:  # noqa: F811
    """Names with XML markup, control characters or a leading '=' stay inert text."""

    s = api_server.seed
    with psycopg.connect(api_server.database_url, autocommit=True) as conn:
        agent = add_agent(conn, s.tenant_b, "b-sw-odd")
    odd = make_cdrs("bz", "1", 1)[0]
    odd.caller_name = '=HYPERLINK("http://x")<b>&amp;\x07'
    asyncio.run(ingest(api_server.database_url, agent, [odd]))
    rows = xlsx_rows(_download(api_server, "xlsx", "b_viewer", caller="bz100"))
    assert len(rows) == 2
    assert rows[1][HEADERS.index("caller_name")] == '=HYPERLINK("http://x")<b>&amp;'
    csv_rows = list(
        csv.DictReader(
            io.StringIO(_download(api_server, "csv", "b_viewer", caller="bz100").decode())
        )
    )
    assert csv_rows[0]["caller_name"] == odd.caller_name


def test_export_errors_are_json_422(api_server: ApiServer) -> None:  # noqa: F811
    for fmt in ("csv", "xlsx"):
        r = api_server.get(
            f"/api/v1/cdrs/export.{fmt}", api_server.seed.tokens["a_viewer"], country="XYZ"
        )
        assert r.status_code == 422 and r.json()["param"] == "country"
