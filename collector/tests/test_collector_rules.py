"""Rule documents (validation naming the field), storage and audit, destination lists, and the
JSON API of rules, alerts and lists in a real collector process (roles, tenant isolation)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent.model import Disposition
from cdrstats_collector import auth, evaluator, riskprefix, rules, tenants, users
from rules_testkit import NOW, Switch, add_rule, connect, spread

from tests.fix_db import CollectorServer, create_database, drop_database, with_dbname

PASSWORD = "correct horse battery"
GOOD: dict[str, Any] = {
    "name": "low ASR",
    "kind": "asr",
    "window_s": 3600,
    "params": {"op": "below", "threshold": 40},
}


def test_parse_rule_normalizes_and_fills_defaults() -> None:
    rule = rules.parse_rule(
        {**GOOD, "scope": {"switch": " sw1 ", "dest_prefix": "+33 6", "dest_country": "fr"}}
    )
    assert rule == {
        "name": "low ASR",
        "enabled": True,
        "kind": "asr",
        "scope": {"switch": "sw1", "dest_prefix": "336", "dest_country": "FR"},
        "params": {"op": "below", "threshold": 40.0, "min_calls": 20, "weeks": 4, "per": "tenant"},
        "window_s": 3600,
        "severity": "warning",
        "action": "notify",
        "block_ttl_s": 3600,
        "snooze_s": 3600,
    }
    scan = rules.parse_rule({"name": "s", "kind": "scanner", "window_s": 300})
    assert scan["params"] == {"count": 20, "registrations": True, "per": "source_ip"}
    # Read-only fields sent back by a client are ignored.
    assert rules.parse_rule({**GOOD, "id": 7, "created_at": "x"})["name"] == "low ASR"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"kind": "mos"}, "kind"),
        ({"window_s": None}, "window_s"),
        ({"window_s": 10}, "window_s"),
        ({"window_s": "1h"}, "window_s"),
        ({"severity": "huge"}, "severity"),
        ({"action": "shutdown"}, "action"),
        ({"action": "block_source_ip"}, "action"),  # an ASR rule has no source IP
        ({"enabled": "yes"}, "enabled"),
        ({"colour": "red"}, "colour"),
        ({"scope": "sw1"}, "scope"),
        ({"scope": {"switchs": "sw1"}}, "scope.switchs"),
        ({"scope": {"dest_prefix": "abc"}}, "scope.dest_prefix"),
        ({"scope": {"dest_country": "France"}}, "scope.dest_country"),
        ({"scope": {"direction": "up"}}, "scope.direction"),
        ({"params": {"threshold": 40}}, "params.op"),
        ({"params": {"op": "below"}}, "params.threshold"),
        ({"params": {"op": "below", "threshold": "40"}}, "params.threshold"),
        ({"params": {"op": "below", "threshold": 140}}, "params.threshold"),
        ({"params": {"op": "below", "threshold": 40, "clear": 30}}, "params.clear"),
        ({"params": {"op": "above", "threshold": 40, "clear": 50}}, "params.clear"),
        ({"params": {"op": "drops_by_pct", "threshold": 120}}, "params.threshold"),
        ({"params": {"op": "rises_by_pct", "threshold": 0}}, "params.threshold"),
        ({"params": {"op": "below", "threshold": 40, "weeks": 9}}, "params.weeks"),
        ({"params": {"op": "below", "threshold": 40, "min_calls": 2.5}}, "params.min_calls"),
        ({"params": {"op": "below", "threshold": 40, "per": "planet"}}, "params.per"),
        ({"params": {"op": "below", "threshold": 40, "count": 3}}, "params.count"),
        ({"kind": "scanner", "params": {"per": "switch"}}, "params.per"),
        ({"kind": "scanner", "params": {"count": 0}}, "params.count"),
        ({"kind": "concurrent", "scope": {"trunk": "gw1"}}, "scope"),
        ({"kind": "new_country", "params": {"per": "source_ip"}}, "params.per"),
        ({"kind": "scanner", "params": {}, "block_ttl_s": 0}, "block_ttl_s"),
        ({"snooze_s": -1}, "snooze_s"),
    ],
)
def test_bad_rule_documents_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(rules.RuleError) as err:
        rules.parse_rule({**GOOD, **change})
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_default_risk_prefixes_are_valid_e164_prefixes() -> None:
    prefixes = [p for p, _ in riskprefix.DEFAULTS]
    assert len(prefixes) == len(set(prefixes))
    assert rules.parse_entries(prefixes) == sorted((p, "") for p in prefixes)
    assert {"881", "882", "883", "979"} <= set(prefixes)


async def test_rule_storage_is_audited_and_names_are_unique(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    async with await connect(database_url) as conn:
        made = await rules.create_rule(conn, tid, GOOD, "alice")
        assert made["created_by"] == "alice" and made["params"]["threshold"] == 40.0
        with pytest.raises(rules.RuleError, match=r"^name: a rule named 'low ASR' already exists"):
            await rules.create_rule(conn, tid, GOOD, "alice")
        changed = await rules.update_rule(
            conn, tid, made["id"], {"params": {"op": "below", "threshold": 30}}, "bob"
        )
        assert changed["params"]["threshold"] == 30.0 and changed["updated_by"] == "bob"
        with pytest.raises(rules.RuleError, match=r"^params\.op"):
            await rules.update_rule(conn, tid, made["id"], {"params": {"threshold": 3}}, "bob")
        with pytest.raises(rules.RuleNotFound):
            await rules.update_rule(conn, tid + 1, made["id"], {"enabled": False}, "bob")
        # A new kind does not inherit the old kind's parameters.
        scan = await rules.update_rule(conn, tid, made["id"], {"kind": "scanner"}, "bob")
        assert scan["params"] == {"count": 20, "registrations": True, "per": "source_ip"}
        assert [r["id"] for r in await rules.list_rules(conn, tid)] == [made["id"]]
        assert await rules.get_rule(conn, tid + 1, made["id"]) is None
        assert not await rules.delete_rule(conn, tid + 1, made["id"], "eve")
        assert await rules.delete_rule(conn, tid, made["id"], "bob")
        assert await rules.list_rules(conn, tid) == []
        cur = await conn.execute("SELECT username, action, target FROM audit_log ORDER BY id")
        assert [tuple(r) for r in await cur.fetchall()] == [
            ("alice", "rule.create", "low ASR"),
            ("bob", "rule.update", "low ASR"),
            ("bob", "rule.update", "low ASR"),
            ("bob", "rule.delete", "low ASR"),
        ]


async def test_destination_lists(database_url: str) -> None:
    sw = Switch(database_url)
    tid = sw.tenant_id
    async with await connect(database_url) as conn:
        risk = await rules.get_dest_list(conn, tid, "risk")
        assert risk["default"] and len(risk["entries"]) == len(riskprefix.DEFAULTS)
        assert (await rules.get_dest_list(conn, tid, "blacklist"))["entries"] == []
        saved = await rules.set_dest_list(
            conn, tid, "risk", ["+882", {"prefix": "+44 9", "note": "UK premium"}, "882"], "alice"
        )
        assert not saved["default"] and saved["saved_by"] == "alice"
        assert saved["entries"] == [
            {"prefix": "449", "note": "UK premium"},
            {"prefix": "882", "note": ""},
        ]
        with pytest.raises(rules.RuleError, match=r"^entries\[1\].prefix"):
            await rules.set_dest_list(conn, tid, "risk", ["+882", "+0123"], "alice")
        with pytest.raises(rules.RuleError, match=r"^list:"):
            await rules.get_dest_list(conn, tid, "greylist")
        assert await rules.list_prefixes(conn, tid, "risk") == ["449", "882"]  # nothing lost
        # An empty saved risk list means no prefix at all (not the defaults).
        assert (await rules.set_dest_list(conn, tid, "risk", [], "alice"))["entries"] == []
        reset = await rules.reset_dest_list(conn, tid, "risk", "alice")
        assert reset["default"] and len(reset["entries"]) == len(riskprefix.DEFAULTS)


# --- the HTTP API ----------------------------------------------------------------------------


@dataclass
class Api:
    server: CollectorServer
    tokens: dict[str, str]
    tenants: dict[str, int]

    def call(self, method: str, path: str, who: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        headers.update(kw.pop("headers", {}))
        return httpx.request(method, self.server.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def api(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    name = create_database(pg_admin_url, migrated_template)
    url = with_dbname(pg_admin_url, name)
    server = CollectorServer(url, tmp_path_factory.mktemp("rules-collector"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            ids = {t: tenants.add_tenant(conn, t) for t in ("acme", "bravo")}
            users.add_user(conn, "root", "superadmin", PASSWORD)
            users.add_user(conn, "a_admin", "tenant_admin", PASSWORD, "acme")
            users.add_user(conn, "a_viewer", "tenant_viewer", PASSWORD, "acme")
            users.add_user(conn, "b_admin", "tenant_admin", PASSWORD, "bravo")
            tokens = {u: auth.create_token(conn, u) for u in ("root", "a_admin", "a_viewer")}
            tokens["b_admin"] = auth.create_token(conn, "b_admin")
        server.start()
        yield Api(server, tokens, ids)
    finally:
        server.stop()
        drop_database(pg_admin_url, name)


def test_rules_api_roles_errors_and_isolation(api: Api) -> None:
    doc = {**GOOD, "name": "api rule"}
    r = api.call("POST", "/api/v1/rules", "a_viewer", json=doc)
    assert r.status_code == 403
    assert api.call("POST", "/api/v1/rules", None, json=doc).status_code == 401
    bad = api.call("POST", "/api/v1/rules", "a_admin", json={**doc, "window_s": 5})
    assert bad.status_code == 400
    assert bad.json() == {"error": "window_s: must be from 60 to 86400", "field": "window_s"}
    r = api.call("POST", "/api/v1/rules", "a_admin", content=b"{", headers={})
    assert r.status_code == 415
    made = api.call("POST", "/api/v1/rules", "a_admin", json=doc)
    assert made.status_code == 201, made.text
    rid = made.json()["id"]
    assert api.call("POST", "/api/v1/rules", "a_admin", json=doc).json()["field"] == "name"
    listed = api.call("GET", "/api/v1/rules", "a_viewer").json()
    assert [x["name"] for x in listed["rules"]] == ["api rule"] and "scanner" in listed["kinds"]
    assert api.call("GET", f"/api/v1/rules/{rid}", "a_viewer").json()["id"] == rid
    # Tenant B sees nothing of A and cannot change it.
    assert api.call("GET", "/api/v1/rules", "b_admin").json()["rules"] == []
    # A console session can read; to write it must send the page's CSRF token.
    with httpx.Client(base_url=api.server.url, timeout=30) as browser:
        token = re.search(r'name="csrf-token" content="([^"]+)"', browser.get("/login").text)
        assert token is not None
        form = {"username": "a_admin", "password": PASSWORD, "csrf_token": token[1]}
        assert browser.post("/login", data=form).status_code == 303
        assert browser.get("/api/v1/rules").status_code == 200
        r = browser.post("/api/v1/rules", json={**doc, "name": "csrf"})
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        page = browser.get("/", follow_redirects=True).text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf is not None
        r = browser.delete(f"/api/v1/rules/{rid}", headers={"X-CSRF-Token": "wrong"})
        assert r.status_code == 403
        r = browser.post(
            "/api/v1/rules", json={**doc, "name": "csrf"}, headers={"X-CSRF-Token": csrf[1]}
        )
        assert r.status_code == 201, r.text
        r = browser.delete(f"/api/v1/rules/{r.json()['id']}", headers={"X-CSRF-Token": csrf[1]})
        assert r.status_code == 200
    for method in ("GET", "PUT", "DELETE"):
        r = api.call(method, f"/api/v1/rules/{rid}", "b_admin", json={"enabled": False})
        assert r.status_code == 404, (method, r.text)
    r = api.call("GET", "/api/v1/rules", "a_admin", params={"tenant": api.tenants["bravo"]})
    assert r.status_code == 404
    # A superadmin names the tenant.
    assert api.call("GET", "/api/v1/rules", "root").status_code == 422
    r = api.call("GET", "/api/v1/rules", "root", params={"tenant": api.tenants["acme"]})
    assert [x["id"] for x in r.json()["rules"]] == [rid]
    r = api.call("POST", "/api/v1/rules", "root", json={**doc, "name": "b rule", "tenant": 0})
    assert r.status_code == 422 and r.json()["error"].startswith("tenant")
    r = api.call("POST", "/api/v1/rules", "root", json={**doc, "tenant": api.tenants["bravo"]})
    assert r.status_code == 201 and r.json()["tenant_id"] == api.tenants["bravo"]
    assert [x["name"] for x in api.call("GET", "/api/v1/rules", "b_admin").json()["rules"]] == [
        "api rule"
    ]
    r = api.call("PUT", f"/api/v1/rules/{rid}", "a_admin", json={"params": {"op": "nope"}})
    assert r.status_code == 400 and r.json()["field"] == "params.op"
    r = api.call("PUT", f"/api/v1/rules/{rid}", "a_admin", json={"severity": "critical"})
    assert r.status_code == 200 and r.json()["severity"] == "critical"
    assert api.call("DELETE", f"/api/v1/rules/{rid}", "a_viewer").status_code == 403
    assert api.call("DELETE", f"/api/v1/rules/{rid}", "a_admin").json() == {"deleted": True}
    assert api.call("GET", f"/api/v1/rules/{rid}", "a_admin").status_code == 404
    assert api.call("GET", "/api/v1/rules/abc", "a_admin").status_code == 404


def test_alerts_api_and_lists(api: Api) -> None:
    url = api.server.database_url
    sw = Switch(url, "acme", "asw")
    other = Switch(url, "bravo", "bsw")

    async def seed() -> None:
        await sw.store(spread(NOW - timedelta(minutes=4), 6, disposition=Disposition.FAILED))
        await other.store(spread(NOW - timedelta(minutes=4), 6, disposition=Disposition.FAILED))
        async with await connect(url) as conn:
            for t in (sw.tenant_id, other.tenant_id):
                await add_rule(
                    conn, t, name="scan", kind="scanner", params={"count": 5}, snooze_s=600
                )
            await evaluator.evaluate(conn, NOW)

    asyncio.run(seed())
    mine = api.call("GET", "/api/v1/alerts", "a_viewer").json()["alerts"]
    assert [(a["rule_name"], a["state"], a["tenant_id"]) for a in mine] == [
        ("scan", "open", sw.tenant_id)
    ]
    aid = mine[0]["id"]
    theirs = api.call("GET", "/api/v1/alerts", "b_admin").json()["alerts"]
    assert [a["tenant_id"] for a in theirs] == [other.tenant_id]
    assert api.call("GET", f"/api/v1/alerts/{aid}", "b_admin").status_code == 404
    assert api.call("POST", f"/api/v1/alerts/{aid}/resolve", "b_admin").status_code == 404
    assert api.call("POST", f"/api/v1/alerts/{aid}/resolve", "a_viewer").status_code == 403
    r = api.call("POST", f"/api/v1/alerts/{aid}/snooze", "a_admin")
    assert r.status_code == 200 and r.json()["state"] == "snoozed"  # the rule's snooze_s
    r = api.call("POST", f"/api/v1/alerts/{aid}/snooze", "a_admin", json={"seconds": "x"})
    assert r.status_code == 400 and r.json()["error"].startswith("seconds")
    r = api.call("POST", f"/api/v1/alerts/{aid}/acknowledge", "a_admin")
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "a_admin"
    assert (
        api.call("POST", f"/api/v1/alerts/{aid}/resolve", "a_admin").json()["state"] == "resolved"
    )
    r = api.call("POST", f"/api/v1/alerts/{aid}/resolve", "a_admin")
    assert r.status_code == 409 and "is resolved" in r.json()["error"]
    assert api.call("POST", f"/api/v1/alerts/{aid}/explode", "a_admin").status_code == 404
    assert (
        api.call("GET", "/api/v1/alerts", "a_viewer", params={"state": "open"}).json()["alerts"]
        == []
    )
    assert api.call("GET", "/api/v1/alerts", "a_viewer", params={"state": "x"}).status_code == 400
    # Lists: viewers read, admins write; 400 names the entry.
    r = api.call("GET", "/api/v1/dest-lists/risk", "a_viewer")
    assert r.status_code == 200 and r.json()["default"] is True
    body = {"entries": ["+882", "+44 9"]}
    assert api.call("PUT", "/api/v1/dest-lists/blacklist", "a_viewer", json=body).status_code == 403
    r = api.call("PUT", "/api/v1/dest-lists/blacklist", "a_admin", json=body)
    assert [e["prefix"] for e in r.json()["entries"]] == ["449", "882"]
    r = api.call("PUT", "/api/v1/dest-lists/blacklist", "a_admin", json={"entries": ["x"]})
    assert r.status_code == 400 and r.json()["field"] == "entries[0].prefix"
    assert api.call("GET", "/api/v1/dest-lists/blacklist", "b_admin").json()["entries"] == []
    assert api.call("GET", "/api/v1/dest-lists/grey", "a_admin").status_code == 404
    r = api.call("DELETE", "/api/v1/dest-lists/blacklist", "a_admin")
    assert r.json()["entries"] == []
    doc = api.call("GET", "/api/v1/openapi.json", None).json()
    for path in ("/api/v1/rules", "/api/v1/rules/{id}", "/api/v1/alerts/{id}/{verb}"):
        assert path in doc["paths"], path
