"""Tenant isolation on every route of the read API (a real collector process).

Each test walks `api.ENDPOINTS`, so a route added later is covered without editing this file.
Tenant A calls +33/+44 numbers with keys a1-/a2-; tenant B calls +1 numbers with keys b1-.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from cdrstats_collector import api
from collector_api_testkit import ApiServer, api_server  # noqa: F401

PERIOD = {"from": "2026-03-15", "to": "2026-04-10"}


def _path(ep: api.Endpoint, server: ApiServer, tenant: str) -> str:
    path: str = ep.path
    if "{id}" not in path:
        return path
    token = server.seed.tokens[tenant]
    r = server.get("/api/v1/cdrs", token, limit=1)
    assert r.status_code == 200, r.text
    return path.replace("{id}", str(r.json()["items"][0]["id"]))


def _params(ep: api.Endpoint) -> dict[str, Any]:
    names = {p.name for p in ep.params}
    return {k: v for k, v in PERIOD.items() if k in names}


def _calls_and_items(doc: Any) -> tuple[int, int]:
    """Sum of every "calls" figure and number of "items" entries anywhere in `doc`."""
    calls = items = 0
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "calls" and isinstance(v, int):
                calls += v
            elif k == "items" and isinstance(v, list):
                items += len(v)
            c, i = _calls_and_items(v)
            calls, items = calls + c, items + i
    elif isinstance(doc, list):
        for v in doc:
            c, i = _calls_and_items(v)
            calls, items = calls + c, items + i
    return calls, items


@pytest.mark.parametrize("ep", api.ENDPOINTS, ids=lambda e: e.operation)
def test_no_credentials_is_401(api_server: ApiServer, ep: api.Endpoint) -> None:  # noqa: F811
    path = _path(ep, api_server, "a_viewer")
    for headers in ({}, {"Authorization": "Bearer cdrs_api_wrong"}, {"Authorization": "Basic x"}):
        r = httpx.get(api_server.url + path, headers=headers, timeout=30)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.json()["error"].startswith("authentication required")


@pytest.mark.parametrize("ep", api.ENDPOINTS, ids=lambda e: e.operation)
def test_tenant_user_cannot_name_another_tenant(
    api_server: ApiServer,  # noqa: F811
    ep: api.Endpoint,
) -> None:
    s = api_server.seed
    path = _path(ep, api_server, "a_viewer")
    params = _params(ep)
    ok = api_server.get(path, s.tokens["a_viewer"], **params)
    assert ok.status_code == 200, ok.text
    assert ok.headers["cache-control"] == "private, no-store"
    own = api_server.get(path, s.tokens["a_viewer"], tenant=s.tenant_a, **params)
    assert own.status_code == 200 and own.content == ok.content
    for other in (s.tenant_b, 999_999):
        r = api_server.get(path, s.tokens["a_viewer"], tenant=other, **params)
        assert r.status_code == 404, (path, r.text)
        assert b"b1-" not in r.content


@pytest.mark.parametrize("ep", api.ENDPOINTS, ids=lambda e: e.operation)
def test_superadmin_must_choose_an_existing_tenant(
    api_server: ApiServer,  # noqa: F811
    ep: api.Endpoint,
) -> None:
    s = api_server.seed
    path = _path(ep, api_server, "b_viewer")
    params = _params(ep)
    r = api_server.get(path, s.tokens["admin"], **params)
    assert r.status_code == 422 and r.json()["param"] == "tenant", r.text
    r = api_server.get(path, s.tokens["admin"], tenant=999_999, **params)
    assert r.status_code == 404, r.text
    as_admin = api_server.get(path, s.tokens["admin"], tenant=s.tenant_b, **params)
    as_b = api_server.get(path, s.tokens["b_viewer"], **params)
    assert as_admin.status_code == as_b.status_code == 200
    if ep.media_type == "application/json":
        assert as_admin.json() == as_b.json()


@pytest.mark.parametrize("ep", api.ENDPOINTS, ids=lambda e: e.operation)
def test_no_parameter_reaches_another_tenants_rows(
    api_server: ApiServer,  # noqa: F811
    ep: api.Endpoint,
) -> None:
    """B's viewer, with A's switch ids and A's numbers in every filter, sees none of A."""
    s = api_server.seed
    token = s.tokens["b_viewer"]
    names = {p.name for p in ep.params}
    if "{id}" in ep.path:
        # A's CDR id, asked for by B: 404, as if it did not exist
        path = _path(ep, api_server, "a_viewer")
        r = api_server.get(path, token)
        assert r.status_code == 404 and b"a1-" not in r.content
        return
    if ep.media_type == "application/json" and "switch" in names and "from" in names:
        control = api_server.get(ep.path, token, switch=s.switches["b-sw1"], **_params(ep))
        assert control.status_code == 200 and sum(_calls_and_items(control.json())) > 0
    for switch in (s.switches["a-sw1"], s.switches["a-sw2"]):
        params: dict[str, Any] = _params(ep)
        if "switch" in names:
            params["switch"] = switch
        if "callee" in names:
            params.update(callee="33", callee_match="prefix")
        r = api_server.get(ep.path, token, **params)
        assert r.status_code == 200, r.text
        for leak in (b"a1-", b"a2-", b"+33", b"+44", b"a-sw1", b"acme"):
            assert leak not in r.content, (ep.path, params, leak)
        if ep.media_type == "application/json" and "switch" in names:
            assert _calls_and_items(r.json()) == (0, 0), r.text[:300]


@pytest.mark.parametrize("ep", [e for e in api.ENDPOINTS if e.params], ids=lambda e: e.operation)
def test_bad_parameters_are_422_naming_the_parameter(
    api_server: ApiServer,  # noqa: F811
    ep: api.Endpoint,
) -> None:
    token = api_server.seed.tokens["a_viewer"]
    path = _path(ep, api_server, "a_viewer")
    r = api_server.get(path, token, nonsense="1")
    assert r.status_code == 422 and r.json()["param"] == "nonsense", r.text
    for p in ep.params:
        if p.location == "path" or p.kind == "string":
            continue
        r = api_server.get(path, token, **{p.name: "bogus!"})
        assert r.status_code == 422, (p.name, r.text)
        assert r.json()["param"] == p.name and p.name in r.json()["error"], r.text
    r = httpx.get(
        api_server.url + path,
        params=[("tenant", "1"), ("tenant", "1")],
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code in (404, 422)  # 'tenant' repeated is never silently one of them
