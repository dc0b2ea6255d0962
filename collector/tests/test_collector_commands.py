"""The command queue: creation (checks, signing, audit), the agents' long poll (signed, woken
by NOTIFY across collectors), results, the users' block API and the CLI."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_collector import auth, cli, commands, tenants, users
from nacl.signing import SigningKey

from tests.fix_db import (
    CollectorServer,
    EnrolledAgent,
    create_database,
    drop_database,
    with_dbname,
)

PASSWORD = "correct horse battery"


@dataclass
class Shared:
    server: CollectorServer
    tokens: dict[str, str]
    tenant_id: int


@dataclass
class World:
    """One collector per module; each test gets its own switch and agent (`switch`)."""

    server: CollectorServer
    agent: EnrolledAgent
    tokens: dict[str, str]
    tenant_id: int
    switch: str


@pytest.fixture(scope="module")
def shared(
    pg_admin_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    name = create_database(pg_admin_url, migrated_template)
    url = with_dbname(pg_admin_url, name)
    server = CollectorServer(url, tmp_path_factory.mktemp("commands-collector"))
    try:
        server.start()
        server.enroll("bravo", "bsw1")
        with psycopg.connect(url, autocommit=True) as conn:
            tid = tenants.add_tenant(conn, "acme")
            tenants.ensure_switch(conn, tid, "noagent")
            users.add_user(conn, "root", "superadmin", PASSWORD)
            users.add_user(conn, "a_admin", "tenant_admin", PASSWORD, "acme")
            users.add_user(conn, "a_viewer", "tenant_viewer", PASSWORD, "acme")
            users.add_user(conn, "b_admin", "tenant_admin", PASSWORD, "bravo")
            tokens = {
                u: auth.create_token(conn, u) for u in ("root", "a_admin", "a_viewer", "b_admin")
            }
        yield Shared(server, tokens, tid)
    finally:
        server.stop()
        drop_database(pg_admin_url, name)


@pytest.fixture
def world(shared: Shared) -> World:
    switch = f"sw-{uuid.uuid4().hex[:8]}"
    agent = shared.server.enroll("acme", switch)
    return World(shared.server, agent, shared.tokens, shared.tenant_id, switch)


def api(world: World, method: str, path: str, token: str | None = "a_admin", **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {world.tokens[token]}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, world.server.url + path, headers=headers, timeout=30, **kw)


def block(world: World, ip: str = "192.0.2.7", token: str = "a_admin", **doc: Any) -> Any:
    body = {"switch": world.switch, "ip": ip, **doc}
    return api(world, "POST", "/api/v1/blocks", token, json=body)


def mine(world: World, what: str, token: str = "a_admin") -> list[dict[str, Any]]:
    """This test's switch's blocks or commands, through the API."""
    items = api(world, "GET", f"/api/v1/{what}", token).json()[what]
    return [i for i in items if i["switch"] == world.switch]


def poll(
    url: str, agent: EnrolledAgent, after: int = 0, wait: float = 0, key: SigningKey | None = None
) -> httpx.Response:
    path = commands_path = "/api/v1/agent/commands"
    auth_header = wire.sign_request(
        key or agent.key, agent.agent_id, "GET", commands_path, wire.now_us()
    )
    return httpx.get(
        url + path,
        params={"after": after, "wait": wait},
        headers={"Authorization": auth_header},
        timeout=wait + 30,
    )


def report(url: str, agent: EnrolledAgent, doc: dict[str, Any]) -> httpx.Response:
    import json

    body = json.dumps(doc).encode()
    path = "/api/v1/agent/commands/result"
    header = wire.sign_request(agent.key, agent.agent_id, "POST", path, wire.now_us(), body)
    return httpx.post(
        url + path,
        content=body,
        headers={"Authorization": header, "Content-Type": "application/json"},
        timeout=30,
    )


def audit(world: World) -> list[tuple[str, str, str]]:
    """Audit entries about this test's switch (or its agent)."""
    with psycopg.connect(world.server.database_url) as conn:
        rows = conn.execute(
            "SELECT username, action, target FROM audit_log"
            " WHERE detail->>'switch' LIKE %s ORDER BY id",
            (world.switch + "%",),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_block_is_signed_delivered_reported_and_audited(world: World) -> None:
    r = block(world, ttl="2h")
    assert r.status_code == 201, r.text
    cmd = r.json()
    assert cmd["verb"] == "block_ip" and cmd["args"] == {"ip": "192.0.2.7", "ttl": 7200}
    assert cmd["status"] == "pending" and cmd["issued_by"] == "a_admin" and cmd["seq"] == 1

    got = poll(world.server.url, world.agent)
    assert got.status_code == 200, got.text
    (item,) = got.json()["commands"]
    assert item["id"] == cmd["id"]
    opened = wire.open_command(
        base64.b64decode(item["envelope"]),
        wire.verify_key_from_text(world.agent.collector_public_key),
        agent=world.agent.agent_id,
        last_seq=0,
        now=wire.now_us(),
    )
    assert (opened.verb, opened.args, opened.seq) == ("block_ip", cmd["args"], 1)
    # Delivered again until a result comes (at least once), never to another agent.
    assert [c["id"] for c in poll(world.server.url, world.agent).json()["commands"]] == [cmd["id"]]
    assert poll(world.server.url, world.agent, after=1).json()["commands"] == []

    done = {"id": cmd["id"], "status": "done", "result": "nftables: added", "seq": 1}
    assert report(world.server.url, world.agent, done).json()["outcome"] == "stored"
    assert report(world.server.url, world.agent, done).json()["outcome"] == "already"
    assert poll(world.server.url, world.agent).json()["commands"] == []

    blocks = mine(world, "blocks")
    assert [(b["switch"], b["ip"], b["issued_by"]) for b in blocks] == [
        (world.switch, "192.0.2.7", "a_admin")
    ]
    listed = mine(world, "commands")
    assert listed[0]["status"] == "done" and listed[0]["result"] == "nftables: added"
    # Tenant isolation: bravo's admin sees none of it.
    assert api(world, "GET", "/api/v1/blocks", "b_admin").json()["blocks"] == []
    assert api(world, "GET", "/api/v1/commands", "b_admin").json()["commands"] == []

    unblock = {"switch": world.switch, "ip": "192.0.2.7"}
    r = api(world, "POST", "/api/v1/blocks/unblock", json=unblock)
    assert r.status_code == 201 and r.json()["seq"] == 2
    report(world.server.url, world.agent, {"id": r.json()["id"], "status": "done", "result": "ok"})
    assert mine(world, "blocks") == []
    assert audit(world)[-4:] == [
        ("a_admin", "command.block_ip", "192.0.2.7"),
        ("a_admin", "command.done", "192.0.2.7"),
        ("a_admin", "command.unblock_ip", "192.0.2.7"),
        ("a_admin", "command.done", "192.0.2.7"),
    ]


def test_refusals_and_dry_runs_are_recorded_but_block_nothing(world: World) -> None:
    cid = block(world, dry_run=True).json()["id"]
    report(world.server.url, world.agent, {"id": cid, "status": "done", "result": "dry-run: x"})
    cid = block(world, ip="192.0.2.8").json()["id"]
    report(world.server.url, world.agent, {"id": cid, "status": "refused", "result": "refused: x"})
    assert mine(world, "blocks") == []
    statuses = [c["status"] for c in mine(world, "commands")]
    assert statuses == ["refused", "done"]
    assert ("a_admin", "command.refused", "192.0.2.8") in audit(world)


def test_results_for_unknown_or_foreign_commands_are_refused_and_audited(world: World) -> None:
    url = world.server.url
    other = world.server.enroll("acme", world.switch + "-2")
    cid = block(world).json()["id"]
    forged = {"id": cid, "status": "done", "result": "not mine"}
    assert report(url, other, forged).status_code == 404  # another agent's command
    r = report(url, world.agent, {"id": str(uuid.uuid4()), "status": "refused", "result": "bad"})
    assert r.status_code == 404
    assert report(url, world.agent, {"id": cid, "status": "bogus", "result": ""}).status_code == (
        422
    )
    actions = [a for _, a, _ in audit(world)]
    assert actions.count("command.result_unknown") == 2
    assert mine(world, "commands")[0]["status"] == "pending"


@pytest.mark.parametrize(
    ("doc", "status", "message"),
    [
        ({"ip": "127.0.0.1"}, 422, "loopback"),
        ({"ip": "::"}, 422, "unspecified"),
        ({"ip": "10.9.9.9"}, 422, "allowlist (10.0.0.0/8, office)"),
        ({"ip": "192.0.2.0/24"}, 422, "ip must be"),
        ({"ip": "192.0.2.7; reboot"}, 422, "ip must be"),
        ({"ttl": "0"}, 422, "ttl"),
        ({"ttl": "99d"}, 422, "ttl"),
        ({"ttl": "soon"}, 422, "ttl"),
        ({"switch": "nosuch"}, 404, "no switch"),
        ({"switch": "noagent"}, 404, "no enrolled agent"),
        ({"switch": "bsw1"}, 404, "no switch"),  # bravo's switch, named by acme's admin
        ({"switch": ""}, 422, "switch"),
    ],
)
def test_block_requests_are_checked(
    world: World, doc: dict[str, Any], status: int, message: str
) -> None:
    with psycopg.connect(world.server.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO block_allowlist (tenant_id, network, note) VALUES (%s, '10.0.0.0/8',"
            " 'office') ON CONFLICT DO NOTHING",
            (world.tenant_id,),
        )
    r = block(world, **doc)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert poll(world.server.url, world.agent).json()["commands"] == []


def test_block_api_is_for_admins_of_the_tenant(world: World) -> None:
    assert block(world, token="a_viewer").status_code == 403
    assert api(world, "GET", "/api/v1/blocks", "a_viewer").status_code == 403
    r = api(world, "POST", "/api/v1/blocks", None, json={"switch": world.switch, "ip": "192.0.2.7"})
    assert r.status_code == 401
    r = block(world, token="b_admin", tenant=world.tenant_id)
    assert r.status_code == 404
    # A superadmin names the tenant.
    assert block(world, token="root").status_code == 422
    assert block(world, token="root", tenant=world.tenant_id).status_code == 201
    assert block(world, token="root", tenant=[world.tenant_id]).status_code == 422
    # Not JSON: refused (a cross-site form cannot post a command).
    r = api(
        world,
        "POST",
        "/api/v1/blocks",
        content=b"switch=sw1&ip=192.0.2.7",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Bearer {world.tokens['a_admin']}",
        },
    )
    assert r.status_code == 415


def test_poll_needs_the_agents_signature(world: World) -> None:
    url = world.server.url
    assert httpx.get(url + "/api/v1/agent/commands", timeout=10).status_code == 401
    assert poll(url, world.agent, key=SigningKey.generate()).status_code == 401
    ghost = EnrolledAgent(str(uuid.uuid4()), SigningKey.generate(), "", "acme", world.switch)
    assert poll(url, ghost).status_code == 401


def test_long_poll_is_woken_by_a_command_created_on_another_collector(
    world: World, tmp_path: Path
) -> None:
    other = CollectorServer(world.server.database_url, tmp_path / "second")
    other.start()
    try:
        answer: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answer.append(poll(other.url, world.agent, wait=40))
        )
        waiting.start()
        # Let the poll reach the second collector and wait, then create on the first one.
        warm = poll(other.url, world.agent)
        assert warm.json()["commands"] == []
        threading.Event().wait(1.0)
        cid = block(world).json()["id"]
        waiting.join(60)
        assert not waiting.is_alive()
        assert [c["id"] for c in answer[0].json()["commands"]] == [cid]
    finally:
        other.stop()


def test_a_stopping_collector_answers_waiting_polls_at_once(world: World, tmp_path: Path) -> None:
    """SIGTERM: a poll waiting for 55 s gets its (empty) answer, so the stop is not held
    for uvicorn's 10 s graceful timeout (the stop below would SIGKILL at 8 s)."""
    other = CollectorServer(world.server.database_url, tmp_path / "second")
    other.start()
    answer: list[httpx.Response | Exception] = []

    def wait_long() -> None:
        try:
            answer.append(poll(other.url, world.agent, wait=55))
        except httpx.HTTPError as exc:
            answer.append(exc)

    waiting = threading.Thread(target=wait_long)
    try:
        waiting.start()
        assert poll(other.url, world.agent).json()["commands"] == []
        threading.Event().wait(1.0)  # the long poll is waiting now
        other.stop(timeout=8)
        waiting.join(30)
    finally:
        other.kill()
    assert not waiting.is_alive()
    (got,) = answer
    assert isinstance(got, httpx.Response), f"the poll was cut: {got!r}\n{other.log_tail()}"
    assert (got.status_code, got.json()) == (200, {"commands": []})


async def test_max_active_blocks_per_switch(world: World) -> None:
    async with await psycopg.AsyncConnection.connect(
        world.server.database_url, autocommit=True
    ) as conn:

        async def make(ip: str) -> commands.CommandRow:
            return await commands.create_command(
                conn,
                tenant_id=world.tenant_id,
                switch=world.switch,
                verb="block_ip",
                args={"ip": ip, "ttl": 60},
                issued_by="test",
                max_active_blocks=2,
            )

        await make("192.0.2.1")
        await make("192.0.2.2")
        with pytest.raises(commands.CommandError, match="2 active or pending blocks"):
            await make("192.0.2.3")
        renewed = await make("192.0.2.2")  # renewing a blocked address is allowed
        assert renewed.seq == 3
        with pytest.raises(commands.CommandError, match="an address of the collector"):
            await commands.create_command(
                conn,
                tenant_id=world.tenant_id,
                switch=world.switch,
                verb="block_ip",
                args={"ip": "198.51.100.1", "ttl": 60},
                issued_by="test",
                own_addresses=lambda: {wire_ip("198.51.100.1")},
            )


def wire_ip(text: str) -> Any:
    from cdrstats_agent.firewall import parse_ip

    return parse_ip(text)


def test_cli_block_unblock_blocks(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", world.server.database_url]
    where = ["--switch", world.switch, "--tenant", "acme"]
    assert cli.main(["block", "192.0.2.9", *where, "--ttl", "15m", *db]) == 0
    out = capsys.readouterr().out
    assert f"block of 192.0.2.9 on switch '{world.switch}' for 900 s queued" in out
    assert cli.main(["unblock", "192.0.2.9", *where, "--dry-run", *db]) == 0
    assert "(dry run)" in capsys.readouterr().out
    assert cli.main(["block", "127.0.0.1", *where, *db]) == 1
    assert "cannot be blocked: a loopback" in capsys.readouterr().err
    bad_tenant = ["--switch", world.switch, "--tenant", "nope"]
    assert cli.main(["block", "192.0.2.9", *bad_tenant, *db]) == 2
    assert "unknown tenant" in capsys.readouterr().err
    assert cli.main(["blocks", "--tenant", "acme", "--commands", *db]) == 0
    out = capsys.readouterr().out
    assert f"{world.switch}\tunblock_ip\t192.0.2.9\tpending" in out
    actions = audit(world)
    assert actions[-1][0].startswith("cli:") and actions[-1][1] == "command.unblock_ip"


def test_parse_ttl() -> None:
    assert [commands.parse_ttl(v) for v in (90, "90", "15m", "1h", "7d", " 2 h ")] == [
        90,
        90,
        900,
        3600,
        604800,
        7200,
    ]
    for bad in (0, -1, "1w", "", None, 1.5, True, "31d"):
        with pytest.raises(commands.CommandError, match="ttl"):
            commands.parse_ttl(bad)


def test_openapi_documents_the_command_routes() -> None:
    from cdrstats_collector import openapi

    paths = openapi.document()["paths"]
    assert set(paths["/api/v1/blocks"]) == {"get", "post"}
    body = paths["/api/v1/blocks"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"switch", "ip", "ttl", "dry_run", "tenant"}
    assert "post" in paths["/api/v1/blocks/unblock"] and "get" in paths["/api/v1/commands"]
    routes = {r.path for r in commands.routes()} - {
        "/api/v1/agent/commands",
        "/api/v1/agent/commands/result",
    }
    assert routes <= set(paths)


def test_cli_allowlist(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", world.server.database_url]
    add = ["allowlist", "add", "198.51.100.7", "--tenant", "acme", "--note", "billing", *db]
    assert cli.main(add) == 0
    assert "198.51.100.7/32 can never be blocked (tenant 'acme')" in capsys.readouterr().out
    r = block(world, ip="198.51.100.7")
    assert r.status_code == 422 and "198.51.100.7/32, billing" in r.json()["error"]
    assert cli.main(["allowlist", "list", *db]) == 0
    assert "acme\t198.51.100.7/32\tbilling" in capsys.readouterr().out
    assert cli.main(["allowlist", "add", "not-a-net", *db]) == 1
    assert "not an IP address or network" in capsys.readouterr().err
    assert cli.main(["allowlist", "delete", "198.51.100.7", "--tenant", "acme", *db]) == 0
    assert cli.main(["allowlist", "delete", "198.51.100.7", "--tenant", "acme", *db]) == 1
    assert "is not in the allowlist" in capsys.readouterr().err
    assert block(world, ip="198.51.100.7").status_code == 201
