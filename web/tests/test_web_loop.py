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
