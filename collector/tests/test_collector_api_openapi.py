"""The OpenAPI document describes every read route with all its parameters."""

from __future__ import annotations

import httpx
from cdrstats_collector import api
from cdrstats_collector.app import create_app
from cdrstats_collector.settings import Settings
from collector_api_testkit import ApiServer, api_server  # noqa: F401
from starlette.routing import Route


def test_openapi_lists_every_route_and_parameter(api_server: ApiServer) -> None:  # noqa: F811
    r = httpx.get(api_server.url + "/api/v1/openapi.json", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    for ep in api.ENDPOINTS:
        op = doc["paths"][ep.path]["get"]
        names = {p["name"] for p in op["parameters"]}
        assert names == {p.name for p in ep.params} | {"tenant"}, ep.path
        assert {"200", "401", "404", "422"} <= set(op["responses"])
        for p in op["parameters"]:
            assert p["description"] and p["schema"], (ep.path, p)
    search = {p["name"]: p for p in doc["paths"]["/api/v1/cdrs"]["get"]["parameters"]}
    assert search["callee_match"]["schema"]["enum"] == ["exact", "prefix", "contains", "suffix"]


def test_every_read_route_of_the_app_is_documented() -> None:
    app = create_app(Settings("postgresql://unused@127.0.0.1:1/x"))
    documented = {ep.path for ep in api.ENDPOINTS} | {"/api/v1/openapi.json"}
    mine = ("/api/v1/reports", "/api/v1/cdrs", "/api/v1/switches", "/api/v1/openapi")
    paths = {r.path for r in app.routes if isinstance(r, Route) and r.path.startswith(mine)}
    assert paths == documented
