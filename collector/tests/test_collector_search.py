"""CDR search (filters, keyset pages) and detail against a real collector."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cdrstats_agent.model import CDR
from cdrstats_collector import search
from collector_api_testkit import ApiServer, api_server  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")


def _search(server: ApiServer, token: str = "a_viewer", **params: Any) -> dict[str, Any]:
    r = server.get("/api/v1/cdrs", server.seed.tokens[token], **params)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _all_keys(server: ApiServer, **params: Any) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        extra: dict[str, Any] = {"cursor": cursor} if cursor else {}
        doc = _search(server, limit=7, **params, **extra)
        keys += [i["key"] for i in doc["items"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            return keys


def _newest_first(cdrs: list[CDR]) -> list[str]:
    return [c.key for c in sorted(cdrs, key=lambda c: (c.start, c.key), reverse=True)]


def test_pages_cover_everything_once_newest_first(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    assert _all_keys(api_server) == _newest_first(s.cdrs[s.tenant_a])


def test_filters(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    probe = cdrs[17]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"callee": probe.callee}, lambda c: c.callee == probe.callee),
        ({"callee": "336", "callee_match": "prefix"}, lambda c: c.callee.startswith("336")),
        ({"callee": "4460", "callee_match": "prefix"}, lambda c: c.callee.startswith("4460")),
        (
            {"callee": probe.callee[-4:], "callee_match": "suffix"},
            lambda c: c.callee.endswith(probe.callee[-4:]),
        ),
        ({"callee": "0001", "callee_match": "contains"}, lambda c: "0001" in c.callee),
        ({"caller": "a1103"}, lambda c: c.caller == "a1103"),
        ({"caller": "a2", "caller_match": "prefix"}, lambda c: c.caller.startswith("a2")),
        ({"caller": "%", "caller_match": "contains"}, lambda c: "%" in c.caller),
        ({"accountcode": "a1-acct-2"}, lambda c: c.accountcode == "a1-acct-2"),
        ({"switch": s.switches["a-sw2"]}, lambda c: c.key.startswith("a2-")),
        ({"direction": "inbound"}, lambda c: c.direction == "inbound"),
        ({"disposition": "BUSY"}, lambda c: c.disposition == "BUSY"),
        ({"cause": 19}, lambda c: c.hangup_cause == 19),
        ({"country": "fr"}, lambda c: c.callee.startswith("33")),
        ({"min_duration": 100, "max_duration": 300}, lambda c: 100 <= c.duration <= 300),
        (
            {"from": "2026-03-29", "to": "2026-03-30"},
            lambda c: c.start.astimezone(PARIS).date().isoformat() in ("2026-03-29", "2026-03-30"),
        ),
        (
            {"from": "2026-03-29T10:00:00+02:00", "to": "2026-03-29T20:00:00Z"},
            lambda c: (
                datetime.fromisoformat("2026-03-29T08:00:00+00:00")
                <= c.start
                < datetime.fromisoformat("2026-03-29T20:00:00+00:00")
            ),
        ),
    ]
    for params, keep in cases:
        expected = _newest_first([c for c in cdrs if keep(c)])
        assert _all_keys(api_server, **params) == expected, params
    assert any(_all_keys(api_server, **p) for p, _ in cases[:3])


def test_items_carry_local_times_and_the_switch(api_server: ApiServer) -> None:  # noqa: F811
    doc = _search(api_server, limit=1, **{"from": "2026-03-10", "to": "2026-03-10"})
    item = doc["items"][0]
    assert item["start_time"].endswith("+01:00")
    assert item["switch"] in ("a-sw1", "a-sw2")
    assert set(search.COLUMNS) <= set(item)
    doc = _search(api_server, "b_viewer", limit=1, **{"from": "2026-03-20", "to": "2026-03-20"})
    assert doc["items"][0]["start_time"].endswith("-04:00")


def test_detail_has_the_raw_switch_fields(api_server: ApiServer) -> None:  # noqa: F811
    doc = _search(api_server, callee_match="exact", limit=1)
    ident = doc["items"][0]["id"]
    r = api_server.get(f"/api/v1/cdrs/{ident}", api_server.seed.tokens["a_viewer"])
    assert r.status_code == 200, r.text
    cdr = r.json()
    assert cdr["key"] == doc["items"][0]["key"]
    assert cdr["extra"]["raw_uuid"].startswith("a")
    assert cdr["src_ip"] == "192.0.2.10"
    for bad in ("nonsense", "e30", ident[:-3]):
        r = api_server.get(f"/api/v1/cdrs/{bad}", api_server.seed.tokens["a_viewer"])
        assert r.status_code in (404, 422), r.text
        if r.status_code == 422:
            assert r.json()["param"] == "id"
    unknown = search.cdr_id(1, datetime.fromisoformat("2026-01-01T00:00:00+00:00"), "nope")
    r = api_server.get(f"/api/v1/cdrs/{unknown}", api_server.seed.tokens["a_viewer"])
    assert r.status_code == 404


def test_search_errors_name_the_parameter(api_server: ApiServer) -> None:  # noqa: F811
    token = api_server.seed.tokens["a_viewer"]
    cases = [
        ({"country": "France"}, "country"),
        ({"min_duration": "10", "max_duration": "5"}, "max_duration"),
        ({"from": "2026-03-10", "to": "2026-03-01"}, "to"),
        ({"from": "2026-03-10T10:00:00"}, "from"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "1001"}, "limit"),
        ({"callee_match": "regex"}, "callee_match"),
        ({"callee": "x" * 201}, "callee"),
        ({"disposition": "answered"}, "disposition"),
    ]
    for params, name in cases:
        r = api_server.get("/api/v1/cdrs", token, **params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["param"] == name, (params, r.text)


def test_long_natural_keys_page_and_open(api_server: ApiServer) -> None:  # noqa: F811
    """A 1,000-character key still gives a usable cursor and id."""
    import asyncio

    import psycopg
    from collector_api_testkit import add_agent, ingest, make_cdrs

    s = api_server.seed
    with psycopg.connect(api_server.database_url, autocommit=True) as conn:
        agent = add_agent(conn, s.tenant_b, "b-sw-long")
    cdrs = make_cdrs("bl", "1", 3)
    for i, c in enumerate(cdrs):
        c.key = f"{i}" + "é" * 999
    asyncio.run(ingest(api_server.database_url, agent, cdrs))
    first = _search(api_server, "b_viewer", switch=agent.switch_id, limit=2)
    assert first["count"] == 2 and first["next_cursor"]
    rest = _search(api_server, "b_viewer", switch=agent.switch_id, cursor=first["next_cursor"])
    assert rest["count"] == 1 and rest["next_cursor"] is None
    r = api_server.get(f"/api/v1/cdrs/{rest['items'][0]['id']}", s.tokens["b_viewer"])
    assert r.status_code == 200 and r.json()["key"] == cdrs[0].key


def test_server_side_sort_pages_in_a_total_order(api_server: ApiServer) -> None:  # noqa: F811
    s = api_server.seed
    cdrs = s.cdrs[s.tenant_a]
    values = {
        "duration": lambda c: c.duration,
        "billsec": lambda c: c.billsec,
        "caller": lambda c: c.caller,
        "hangup_cause": lambda c: -1 if c.hangup_cause is None else c.hangup_cause,
        "disposition": lambda c: str(c.disposition),
    }
    for sort, order in (
        ("duration", "asc"),
        ("duration", "desc"),
        ("billsec", "desc"),
        ("caller", "asc"),
        ("hangup_cause", "desc"),
        ("disposition", "asc"),
    ):
        value = values[sort]
        expected = [
            c.key
            for c in sorted(cdrs, key=lambda c: (value(c), c.start, c.key), reverse=order == "desc")
        ]
        got = _all_keys(api_server, sort=sort, order=order)
        assert got == expected, (sort, order)
    oldest_first = _all_keys(api_server, order="asc")
    assert oldest_first == _newest_first(cdrs)[::-1]
    # a sort combines with the filters
    busy = _all_keys(api_server, disposition="BUSY", sort="duration", order="asc")
    assert busy == [
        c.key
        for c in sorted(cdrs, key=lambda c: (c.duration, c.start, c.key))
        if c.disposition == "BUSY"
    ]


def test_sort_errors_name_the_parameter(api_server: ApiServer) -> None:  # noqa: F811
    token = api_server.seed.tokens["a_viewer"]
    page = _search(api_server, limit=2, sort="duration")
    other = _search(api_server, limit=2)
    cases = [
        ({"sort": "src_ip"}, "sort"),
        ({"order": "up"}, "order"),
        # a cursor only continues the sort it was made for
        ({"sort": "billsec", "cursor": page["next_cursor"]}, "cursor"),
        ({"sort": "duration", "order": "asc", "cursor": page["next_cursor"]}, "cursor"),
        ({"cursor": page["next_cursor"]}, "cursor"),
        ({"sort": "duration", "cursor": other["next_cursor"]}, "cursor"),
    ]
    for params, name in cases:
        r = api_server.get("/api/v1/cdrs", token, **params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["param"] == name, (params, r.text)
