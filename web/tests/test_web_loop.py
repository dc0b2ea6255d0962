"""Closing the loop in the console over HTTP: blocked IPs (block, unblock, refusals, roles,
tenants, CSRF) against a real collector process; the agent's results are signed reports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_collector import commands
from web_testkit import Fresh, Seeded, csrf_of, fresh_tenant, login, seed, shared_server

from tests.fix_db import CollectorServer, EnrolledAgent


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("loop")) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(server: CollectorServer) -> Seeded:
    return seed(server.database_url)


def report(server: CollectorServer, agent: EnrolledAgent, cid: str, status: str, text: str) -> None:
    """The agent's signed result for command `cid`."""
    body = json.dumps({"id": cid, "status": status, "result": text}).encode()
    path = "/api/v1/agent/commands/result"
    header = wire.sign_request(agent.key, agent.agent_id, "POST", path, wire.now_us(), body)
    r = httpx.post(
        server.url + path,
        content=body,
        headers={"Authorization": header, "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def post(c: httpx.Client, path: str, **form: Any) -> httpx.Response:
    token = csrf_of(c.get("/account").text)
    return c.post(path, data={"csrf_token": token, **form})


def command_rows(database_url: str, tenant_id: int) -> list[tuple[str, str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT verb, args->>'ip', issued_by FROM command WHERE tenant_id = %s ORDER BY seq",
            (tenant_id,),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def queued_id(r: httpx.Response, tenant_id: int) -> str:
    assert r.status_code == 303, r.text
    m = re.fullmatch(rf"/t/{tenant_id}/blocks\?queued=([0-9a-f-]{{36}})", r.headers["location"])
    assert m, r.headers["location"]
    return m[1]


@pytest.fixture
def mine(server: CollectorServer, seeded: Seeded) -> tuple[Fresh, EnrolledAgent]:
    fresh = fresh_tenant(server.database_url)
    return fresh, server.enroll(fresh.name, "pbx-1")


def test_block_and_unblock_from_the_console(
    server: CollectorServer, mine: tuple[Fresh, EnrolledAgent]
) -> None:
    fresh, agent = mine
    t = fresh.id
    c = login(server.url, fresh.admin)
    page = c.get(f"/t/{t}/blocks")
    assert page.status_code == 200
    assert "No address is blocked." in page.text and 'id="block-form"' in page.text
    r = post(c, f"/t/{t}/blocks", switch="pbx-1", ip="203.0.113.50", ttl="6h")
    cid = queued_id(r, t)
    page = c.get(r.headers["location"])
    assert 'data-pending="1"' in page.text
    assert "queued, waiting for the switch" in page.text
    row = re.search(r'<tr data-ip="203\.0\.113\.50".*?</tr>', page.text, re.S)
    assert row and "pending" in row[0] and fresh.admin in row[0] and "6 h once done" in row[0]
    assert command_rows(server.database_url, t) == [("block_ip", "203.0.113.50", fresh.admin)]
    with psycopg.connect(server.database_url) as conn:
        audited = conn.execute(
            "SELECT username, action FROM audit_log WHERE detail->>'command_id' = %s", (cid,)
        ).fetchall()
    assert audited == [(fresh.admin, "command.block_ip")]

    report(server, agent, cid, "done", "blocked 203.0.113.50 in nftables for 21600 s")
    page = c.get(f"/t/{t}/blocks?queued={cid}")
    assert 'data-pending="0"' in page.text
    assert "done — blocked 203.0.113.50 in nftables" in page.text
    row = re.search(r'<tr data-ip="203\.0\.113\.50".*?</tr>', page.text, re.S)
    assert row and ">active<" in row[0] and "5 h 59 min" in row[0] and "Unblock" in row[0]

    r = post(c, f"/t/{t}/blocks/unblock", switch="pbx-1", ip="203.0.113.50")
    un = queued_id(r, t)
    report(server, agent, un, "done", "unblocked 203.0.113.50")
    page = c.get(f"/t/{t}/blocks")
    assert "No address is blocked." in page.text
    history = page.text[page.text.index('id="block-history"') :]
    assert history.index(un) < history.index(cid)  # newest first
    assert command_rows(server.database_url, t)[-1] == ("unblock_ip", "203.0.113.50", fresh.admin)


def test_refused_blocks_show_the_reason_and_change_nothing(
    server: CollectorServer, mine: tuple[Fresh, EnrolledAgent]
) -> None:
    fresh, _agent = mine
    t = fresh.id
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        commands.allowlist_add(conn, "198.51.100.0/24", t, "our SBCs")
    c = login(server.url, fresh.admin)
    cases = [
        ({"ip": "198.51.100.9"}, 422, "198.51.100.9 cannot be blocked: in the allowlist"),
        ({"ip": "127.0.0.2"}, 422, "a loopback or unspecified address"),
        ({"ip": "10.0.0.0/8"}, 422, "10.0.0.0/8"),
        ({"ip": "203.0.113.9", "ttl": "forever"}, 422, "ttl: "),
        ({"ip": "203.0.113.9", "switch": "nope"}, 404, "no switch &#39;nope&#39;"),
        ({"ip": ""}, 422, "ip: give the address"),
    ]
    for form, status, text in cases:
        r = post(c, f"/t/{t}/blocks", **{"switch": "pbx-1", **form})
        assert r.status_code == status, (form, r.status_code)
        error = re.search(
            r'<div class="alert alert-danger" role="alert" id="block-error">(.*?)<', r.text
        )
        assert error and text in error[1], (form, error)
        # The form keeps what was typed.
        assert f'value="{form["ip"]}"' in r.text
    assert command_rows(server.database_url, t) == []


def test_csrf_roles_and_tenants(
    server: CollectorServer, seeded: Seeded, mine: tuple[Fresh, EnrolledAgent]
) -> None:
    fresh, _agent = mine
    t = fresh.id
    admin = login(server.url, fresh.admin)
    # No token, or a wrong one: 403 before anything is read.
    for data in ({}, {"csrf_token": "x" * 43}):
        r = admin.post(f"/t/{t}/blocks", data={"switch": "pbx-1", "ip": "203.0.113.7", **data})
        assert r.status_code == 403 and "CSRF" in r.text
        r = admin.post(
            f"/t/{t}/blocks/unblock", data={"switch": "pbx-1", "ip": "203.0.113.7", **data}
        )
        assert r.status_code == 403
    # A viewer sees the page but no form, and may not act.
    viewer = login(server.url, fresh.viewer)
    page = viewer.get(f"/t/{t}/blocks")
    assert page.status_code == 200 and "block-form" not in page.text
    for path in (f"/t/{t}/blocks", f"/t/{t}/blocks/unblock"):
        r = post(viewer, path, switch="pbx-1", ip="203.0.113.7")
        assert r.status_code == 403 and "only a tenant admin" in r.text
    # Another tenant's admin and viewer: 404, as for a tenant that does not exist.
    for user in ("alice", "gina"):
        other = login(server.url, user)
        assert other.get(f"/t/{t}/blocks").status_code == 404
        assert post(other, f"/t/{t}/blocks", switch="pbx-1", ip="203.0.113.7").status_code == 404
    # alice (acme) naming this tenant's switch from her own tenant: no such switch there.
    acme = seeded.tenant_ids["acme"]
    r = post(login(server.url, "alice"), f"/t/{acme}/blocks", switch="pbx-1", ip="203.0.113.7")
    assert r.status_code == 404 and "no switch" in r.text
    assert command_rows(server.database_url, t) == []
    # A superadmin acts on any tenant, in its name.
    r = post(login(server.url, "root"), f"/t/{t}/blocks", switch="pbx-1", ip="203.0.113.7")
    queued_id(r, t)
    assert command_rows(server.database_url, t) == [("block_ip", "203.0.113.7", "root")]
    # Not logged in: to the login page.
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        assert anon.get(f"/t/{t}/blocks").status_code == 303


def test_block_buttons_only_for_admins(server: CollectorServer, seeded: Seeded) -> None:
    acme = seeded.tenant_ids["acme"]
    for user, shown in (("alice", True), ("victor", False)):
        c = login(server.url, user)
        for path in ("cdrs", "live"):
            page = c.get(f"/t/{acme}/{path}").text
            assert ('id="block-dialog"' in page) is shown, (user, path)
            assert "/static/blocks.js" in page
        assert f'href="/t/{acme}/blocks"' in page


# --- rules and alerts --------------------------------------------------------------------------


def open_alert(
    database_url: str, tenant_id: int, title: str, detail: dict[str, Any]
) -> tuple[int, int]:
    """A rule and one open alert of it, made through rules.py and alerts.py: (rule, alert)."""
    import asyncio
    import secrets
    from datetime import UTC, datetime

    from cdrstats_collector import alerts, rules

    async def run() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            rule = await rules.create_rule(
                conn,
                tenant_id,
                {
                    "name": "scanner " + secrets.token_hex(3),
                    "kind": "scanner",
                    "window_s": 300,
                    "params": {"count": 20},
                },
                "test",
            )
            async with conn.transaction():
                alert = await alerts.open_episode(
                    conn, tenant_id, rule, detail.get("source_ip", "k"), title, detail,
                    datetime.now(UTC),
                )  # fmt: skip
                await alerts.notify(conn, alert)
            return int(rule["id"]), int(alert["id"])

    # In a thread of its own: Playwright's sync API keeps an event loop in the caller's.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


RULE_FORM = {
    "name": "low ASR",
    "kind": "asr",
    "window_s": "3600",
    "params.op": "below",
    "params.threshold": "40",
    "params.min_calls": "20",
    "params.count": "99",  # another kind's field: not sent to parse_rule
    "scope.switch": "pbx-1",
    "severity": "critical",
    "action": "notify",
    "block_ttl_s": "3600",
    "snooze_s": "3600",
    "enabled": "1",
}


def test_rules_editor(
    server: CollectorServer, seeded: Seeded, mine: tuple[Fresh, EnrolledAgent]
) -> None:
    fresh, _agent = mine
    t = fresh.id
    c = login(server.url, fresh.admin)
    assert "No rule yet." in c.get(f"/t/{t}/rules").text
    r = post(c, f"/t/{t}/rules", **{**RULE_FORM, "params.threshold": ""})
    assert r.status_code == 422
    assert "params.threshold: required for kind asr" in r.text
    assert 'value="low ASR"' in r.text  # what was typed is kept
    r = post(c, f"/t/{t}/rules", **{**RULE_FORM, "params.threshold": "140"})
    assert r.status_code == 422 and "ASR and NER are percentages" in r.text
    r = post(c, f"/t/{t}/rules", **RULE_FORM)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/t/{t}/rules?saved=")
    page = c.get(r.headers["location"]).text
    assert "rule low ASR created" in page
    rid = int(re.findall(r'data-rule-id="(\d+)"', page)[0])
    row = re.search(rf'<tr data-rule-id="{rid}">.*?</tr>', page, re.S)
    assert row and "threshold 40" in row[0] and "switch pbx-1" in row[0] and "enabled" in row[0]
    assert "count" not in row[0]
    # Edit: the form is filled with the rule; a taken name is refused.
    edit = c.get(f"/t/{t}/rules?edit={rid}").text
    assert f'action="/t/{t}/rules/{rid}"' in edit and 'value="40' in edit
    r = post(c, f"/t/{t}/rules/{rid}", **{**RULE_FORM, "params.threshold": "35"})
    assert r.status_code == 303
    r = post(c, f"/t/{t}/rules", **{**RULE_FORM})
    assert r.status_code == 422 and "a rule named &#39;low ASR&#39; already exists" in r.text
    r = post(c, f"/t/{t}/rules/{rid}/enabled", enabled="0")
    assert r.status_code == 303
    page = c.get(f"/t/{t}/rules").text
    row = re.search(rf'<tr data-rule-id="{rid}">.*?</tr>', page, re.S)
    assert row and "threshold 35" in row[0] and ">disabled<" in row[0]
    # Viewers read, without the editor, and may not act; CSRF; other tenants get 404.
    viewer = login(server.url, fresh.viewer)
    assert 'id="rule-form"' not in viewer.get(f"/t/{t}/rules").text
    for path in (f"/t/{t}/rules", f"/t/{t}/rules/{rid}", f"/t/{t}/rules/{rid}/delete"):
        assert post(viewer, path, **RULE_FORM).status_code == 403, path
        assert c.post(path, data=RULE_FORM).status_code == 403, path  # no CSRF token
    alice = login(server.url, "alice")
    acme = seeded.tenant_ids["acme"]
    for path in (f"/t/{acme}/rules/{rid}", f"/t/{acme}/rules/{rid}/enabled"):
        assert post(alice, path, **RULE_FORM).status_code == 404, path
    assert post(alice, f"/t/{acme}/rules/{rid}/delete").status_code == 404
    assert alice.get(f"/t/{acme}/rules?edit={rid}").status_code == 404
    assert alice.get(f"/t/{t}/rules").status_code == 404
    r = post(c, f"/t/{t}/rules/{rid}/delete")
    assert r.status_code == 303
    assert "No rule yet." in c.get(f"/t/{t}/rules").text
    assert post(c, f"/t/{t}/rules/{rid}/delete").status_code == 404
    with psycopg.connect(server.database_url) as conn:
        actions = conn.execute(
            "SELECT action FROM audit_log WHERE tenant_id = %s AND action LIKE 'rule.%%'"
            " ORDER BY id",
            (t,),
        ).fetchall()
    assert [a[0] for a in actions] == [
        "rule.create",
        "rule.update",
        "rule.update",
        "rule.delete",
    ]


def test_alerts_acknowledge_snooze_resolve(
    server: CollectorServer, seeded: Seeded, mine: tuple[Fresh, EnrolledAgent]
) -> None:
    fresh, _agent = mine
    t = fresh.id
    _rule, aid = open_alert(
        server.database_url,
        t,
        "scanner 203.0.113.66",
        {"source_ip": "203.0.113.66", "switch": "pbx-1", "failed": 25},
    )
    c = login(server.url, fresh.admin)
    assert c.get(f"/t/{t}/alerts/count").json() == {"open": 1, "active": 1}
    page = c.get(f"/t/{t}/alerts").text
    row = re.search(rf'<tr data-alert-id="{aid}" data-state="open">.*?</tr>', page, re.S)
    assert row and "scanner 203.0.113.66" in row[0]
    assert 'data-block-ip="203.0.113.66" data-block-switch="pbx-1"' in row[0]
    assert 'id="block-dialog"' in page
    r = post(c, f"/t/{t}/alerts/{aid}/acknowledge", state="all")
    assert r.status_code == 303 and r.headers["location"].startswith(f"/t/{t}/alerts?state=all")
    assert f'data-alert-id="{aid}" data-state="acknowledged"' in c.get(r.headers["location"]).text
    assert c.get(f"/t/{t}/alerts/count").json() == {"open": 0, "active": 1}
    r = post(c, f"/t/{t}/alerts/{aid}/snooze", seconds="nope")
    assert r.status_code == 422 and "seconds: must be a whole number" in r.text
    r = post(c, f"/t/{t}/alerts/{aid}/snooze", seconds="900")
    assert r.status_code == 303
    page = c.get(f"/t/{t}/alerts?state=snoozed").text
    assert f'data-alert-id="{aid}" data-state="snoozed"' in page and "until " in page
    r = post(c, f"/t/{t}/alerts/{aid}/resolve")
    assert r.status_code == 303
    assert "No alert in this state." in c.get(f"/t/{t}/alerts").text
    assert f'data-alert-id="{aid}" data-state="resolved"' in c.get(f"/t/{t}/alerts?state=all").text
    r = post(c, f"/t/{t}/alerts/{aid}/resolve")
    assert r.status_code == 422 and "cannot be resolved" in r.text
    # Viewers read but may not act; no CSRF token: 403; another tenant: 404.
    viewer = login(server.url, fresh.viewer)
    page = viewer.get(f"/t/{t}/alerts?state=all").text
    assert f'data-alert-id="{aid}"' in page and "data-block-ip" not in page
    assert post(viewer, f"/t/{t}/alerts/{aid}/acknowledge").status_code == 403
    assert c.post(f"/t/{t}/alerts/{aid}/acknowledge", data={}).status_code == 403
    acme = seeded.tenant_ids["acme"]
    alice = login(server.url, "alice")
    for verb in ("acknowledge", "snooze", "resolve"):
        r = post(alice, f"/t/{acme}/alerts/{aid}/{verb}", seconds="900")
        assert r.status_code == 404, verb
    assert alice.get(f"/t/{t}/alerts").status_code == 404
    assert alice.get(f"/t/{t}/alerts/count").status_code == 404
    with psycopg.connect(server.database_url) as conn:
        actions = conn.execute(
            "SELECT action, username FROM audit_log WHERE target = %s AND action LIKE 'alert.%%'"
            " AND tenant_id = %s ORDER BY id",
            (str(aid), t),
        ).fetchall()
    assert actions == [
        ("alert.opened", actions[0][1]),
        ("alert.acknowledged", fresh.admin),
        ("alert.snoozed", fresh.admin),
        ("alert.resolved", fresh.admin),
    ]
