"""Account codes mapped to tenants on the Admin page, and the agents' spool status on the
Switches page (a real collector process; the mapping applied by the real ingest)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_agent.model import CDR
from web_testkit import cdr, csrf_of, fresh_tenant, login, seed, shared_server

from tests.fix_db import CollectorServer, EnrolledAgent


@pytest.fixture(scope="module")
def server(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorServer]:
    with shared_server(pg_admin_url, migrated_template, tmp_path_factory.mktemp("ac")) as s:
        seed(s.database_url)  # root (superadmin), alice (tenant admin of acme), ...
        yield s


def send(
    server: CollectorServer,
    agent: EnrolledAgent,
    seq: int,
    cdrs: list[CDR],
    spool: wire.SpoolStatus | None = None,
) -> None:
    body = wire.build_body([wire.pack_cdr(c) for c in cdrs])
    data = wire.seal_batch(agent.agent_id, seq, body, agent.key, spool=spool)
    r = httpx.post(
        server.url + "/api/v1/ingest",
        content=data,
        headers={"content-type": "application/msgpack"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_superadmin_maps_an_account_code_and_the_customer_sees_only_its_calls(
    server: CollectorServer,
) -> None:
    owner, customer = fresh_tenant(server.database_url), fresh_tenant(server.database_url)
    agent = server.enroll(owner.name, "shared-pbx")
    root = login(server.url, "root")
    page = root.get("/admin")
    token = csrf_of(page.text)
    option = re.search(
        r'<option value="(\d+)">' + re.escape(owner.name) + " / shared-pbx<", page.text
    )
    assert option, "the shared switch is offered in the mapping form"
    form = {"accountcode": "CUST-7", "switch_id": option[1], "tenant": customer.name}

    # without the CSRF token, or with a wrong one: refused, nothing mapped
    assert root.post("/admin/accountcodes", data=form).status_code == 403
    assert (
        root.post("/admin/accountcodes", data={**form, "csrf_token": "x" * 43}).status_code == 403
    )
    # a tenant admin may look but not map
    alice = login(server.url, "alice")
    a_token = csrf_of(alice.get("/admin").text)
    assert (
        alice.post("/admin/accountcodes", data={**form, "csrf_token": a_token}).status_code == 403
    )
    with psycopg.connect(server.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM accountcode_map").fetchone() == (0,)

    r = root.post("/admin/accountcodes", data={**form, "csrf_token": token})
    assert r.status_code == 201 and "CUST-7" in r.text
    dup = root.post("/admin/accountcodes", data={**form, "csrf_token": token})
    assert dup.status_code == 422 and "already mapped" in dup.text
    bad = root.post("/admin/accountcodes", data={**form, "tenant": "no-such", "csrf_token": token})
    assert bad.status_code == 422 and "unknown tenant" in bad.text
    empty = root.post("/admin/accountcodes", data={**form, "accountcode": "", "csrf_token": token})
    assert empty.status_code == 422 and "accountcode:" in empty.text

    start = datetime.now(UTC) - timedelta(minutes=5)
    calls = [cdr(1, start=start), dataclasses.replace(cdr(2, start=start), accountcode="CUST-7")]
    send(server, agent, 1, calls)

    def keys(user: str, tenant: int) -> set[str]:
        c = login(server.url, user)
        r = c.get("/api/v1/cdrs", params={"tenant": tenant})
        assert r.status_code == 200, r.text
        return {item["key"] for item in r.json()["items"]}

    assert keys(customer.viewer, customer.id) == {calls[1].key}
    assert keys(owner.viewer, owner.id) == {calls[0].key}
    c = login(server.url, customer.viewer)  # and not the owner's, even by editing the URL
    assert c.get("/api/v1/cdrs", params={"tenant": owner.id}).status_code == 404
    with psycopg.connect(server.database_url) as conn:
        per_tenant = dict(
            conn.execute(
                "SELECT tenant_id, sum(calls) FROM agg_kpi_hour WHERE tenant_id IN (%s, %s)"
                " GROUP BY 1",
                (owner.id, customer.id),
            ).fetchall()
        )
    assert per_tenant == {owner.id: 1, customer.id: 1}
    # the customer's reports and switch picker name the switch its calls came from
    r = c.get("/api/v1/reports/breakdown", params={"tenant": customer.id, "by": "switch"})
    assert r.status_code == 200, r.text
    assert [(i["switch"], i["calls"]) for i in r.json()["items"]] == [("shared-pbx", 1)]
    assert "shared-pbx" in c.get(f"/t/{customer.id}/").text

    # removal: audited with the mapping's tenant, and CSRF-checked like every form
    page = root.get("/admin")
    mapping = re.search(r'name="mapping_id" value="(\d+)"', page.text)
    assert mapping
    assert (
        root.post("/admin/accountcodes/remove", data={"mapping_id": mapping[1]}).status_code == 403
    )
    r = root.post(
        "/admin/accountcodes/remove", data={"mapping_id": mapping[1], "csrf_token": token}
    )
    assert r.status_code == 200 and "no longer mapped" in r.text
    gone = root.post(
        "/admin/accountcodes/remove", data={"mapping_id": mapping[1], "csrf_token": token}
    )
    assert gone.status_code == 404
    with psycopg.connect(server.database_url) as conn:
        audit = conn.execute(
            "SELECT a.action, a.target, t.name FROM audit_log a JOIN tenant t ON t.id = a.tenant_id"
            " WHERE a.action LIKE 'accountcode.%%' ORDER BY a.id"
        ).fetchall()
    assert audit == [
        ("accountcode.map", "CUST-7", customer.name),
        ("accountcode.unmap", mapping[1], customer.name),
    ]


def test_switches_page_shows_the_spool_status_of_the_last_batch(server: CollectorServer) -> None:
    mine = fresh_tenant(server.database_url)
    agent = server.enroll(mine.name, "pbx-spool")
    viewer = login(server.url, mine.viewer)
    page = viewer.get(f"/t/{mine.id}/switches").text
    assert re.search("data-spool>\u2013<", page) and re.search("data-lag>\u2013<", page)
    status = wire.SpoolStatus(batches=3, cdrs=4200, lag_s=754.0)
    send(server, agent, 1, [cdr(1)], spool=status)
    page = viewer.get(f"/t/{mine.id}/switches").text
    assert re.search(r"data-spool>4200 CDRs · 3 batches<", page), page
    assert re.search(r"data-lag[^>]*>12 min 34 s<", page)


def test_a_malformed_spool_status_is_ignored_and_the_cdrs_stored(server: CollectorServer) -> None:
    mine = fresh_tenant(server.database_url)
    agent = server.enroll(mine.name, "pbx-odd")
    body = wire.build_body([wire.pack_cdr(cdr(1))])
    payload = {
        "agent": agent.agent_id,
        "seq": 1,
        "sent_at": wire.now_us(),
        "body": body,
        "spool": {"batches": -3, "cdrs": "many", "lag_s": 1.0},
    }
    r = httpx.post(
        server.url + "/api/v1/ingest",
        content=wire.seal("cdr_batch", agent.agent_id, payload, agent.key),
        headers={"content-type": "application/msgpack"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute(
            "SELECT spool_batches, spool_cdrs, spool_lag_s, status_at, last_seq FROM agent"
            " WHERE id = %s",
            (agent.agent_id,),
        ).fetchone()
    assert row == (None, None, None, None, 1)
    assert "batch_status_ignored" in server.log_tail()
