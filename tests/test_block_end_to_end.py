"""Block an IP end to end: API -> collector queue -> agent long poll -> real nftables inside a
network namespace made by the test -> packets from that address dropped -> unblock / expiry ->
traffic flows again. Forged, expired, replayed and wrongly-targeted commands put in the queue
behind the collector's back, and an address on the agent's allowlist, are refused by the
agent, reported and audited."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psycopg
import pytest
from cdrstats_agent import wire
from cdrstats_collector import auth, users
from nacl.signing import SigningKey

from tests.fix_agent import AgentFactory, AgentProcess
from tests.fix_db import CollectorServer
from tests.fix_netns import NetnsPair, netns_pair

__all__ = ["netns_pair"]
PASSWORD = "correct horse battery"


@dataclass
class Rig:
    pair: NetnsPair
    server: CollectorServer
    agent: AgentProcess
    token: str
    port: int

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.server.url + path, headers=headers, timeout=30, **kw)

    def block(self, ip: str, **doc: Any) -> str:
        r = self.api("POST", "/api/v1/blocks", json={"switch": "sw1", "ip": ip, **doc})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def unblock(self, ip: str) -> str:
        r = self.api("POST", "/api/v1/blocks/unblock", json={"switch": "sw1", "ip": ip})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def finished(self, cid: str, timeout: float = 30.0) -> dict[str, Any]:
        """The command once the agent reported it (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.api("GET", "/api/v1/commands").json()["commands"]:
                if c["id"] == cid and c["status"] not in ("pending", "expired"):
                    return dict(c)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"command {cid} not finished in {timeout} s\n{self.agent.log_tail()}"
                )
            time.sleep(0.1)


@pytest.fixture
def rig(
    netns_pair: NetnsPair,
    collector_server: CollectorServer,
    agent_factory: AgentFactory,
    tmp_path: Path,
) -> Iterator[Rig]:
    pair = netns_pair
    port = pair.serve_tcp()
    (tmp_path / "cdr").mkdir()
    agent = agent_factory(tmp_path / "agent", tmp_path / "cdr", collector_server.url)
    with agent.config_path.open("a") as f:
        f.write(
            "\n[actions]\npoll_wait_s = 20\n"
            f'allowlist = ["{pair.other_v4}/32"]\n'
            f'[firewall]\nbackend = "nftables"\nnetns = "{pair.switch}"\n'
        )
    agent.enroll(collector_server.url, collector_server.create_token("acme", "sw1"))
    with psycopg.connect(collector_server.database_url, autocommit=True) as conn:
        users.add_user(conn, "noc", "tenant_admin", PASSWORD, "acme")
        token = auth.create_token(conn, "noc")
    agent.start()
    try:
        yield Rig(pair, collector_server, agent, token, port)
    finally:
        agent.stop()


def _queue_behind_the_collectors_back(
    rig: Rig, envelope: bytes, cmd_id: str, expires_in_s: int = 300
) -> None:
    """Insert a command row directly (a compromised queue or a man in the middle)."""
    with psycopg.connect(rig.server.database_url, autocommit=True) as conn:
        tenant_id, switch_id = conn.execute(
            "SELECT tenant_id, switch_id FROM agent WHERE id = %s", (rig.agent.agent_id,)
        ).fetchone() or (0, 0)
        seq_row = conn.execute(
            "UPDATE command_seq SET last_seq = last_seq + 1 WHERE agent_id = %s RETURNING last_seq",
            (rig.agent.agent_id,),
        ).fetchone()
        assert seq_row is not None
        conn.execute(
            "INSERT INTO command (id, tenant_id, switch_id, agent_id, seq, verb, args, envelope,"
            " issued_by, expires_at) VALUES (%s, %s, %s, %s, %s, 'block_ip', '{}', %s,"
            " 'intruder', now() + make_interval(secs => %s))",
            (cmd_id, tenant_id, switch_id, rig.agent.agent_id, seq_row[0], envelope, expires_in_s),
        )
        conn.execute("SELECT pg_notify('cdrstats_command', %s)", (rig.agent.agent_id,))


def _collector_key(rig: Rig) -> SigningKey:
    with psycopg.connect(rig.server.database_url) as conn:
        row = conn.execute(
            "SELECT private_key FROM collector_key WHERE retired_at IS NULL ORDER BY id DESC"
        ).fetchone()
    assert row is not None
    return SigningKey(bytes(row[0]))


def _command(rig: Rig, *, seq: int, agent: str | None = None, expires_in_s: int = 300) -> Any:
    now = wire.now_us()
    return wire.Command(
        id=str(uuid.uuid4()),
        seq=seq,
        agent=agent or rig.agent.agent_id,
        verb="block_ip",
        args={"ip": rig.pair.peer_v4, "ttl": 3600},
        issued_at=now,
        expires_at=now + expires_in_s * 1_000_000,
    )


def test_block_drops_traffic_until_unblocked_or_expired(rig: Rig) -> None:
    pair, port = rig.pair, rig.port
    assert pair.can_connect(pair.peer_v4, port)

    done = rig.finished(rig.block(pair.peer_v4, ttl="1h"))
    assert done["status"] == "done", done
    assert "nftables" in done["result"]
    assert not pair.can_connect(pair.peer_v4, port)
    assert pair.can_connect(pair.other_v4, port)
    blocks = rig.api("GET", "/api/v1/blocks").json()["blocks"]
    assert [b["ip"] for b in blocks] == [pair.peer_v4]

    assert rig.finished(rig.unblock(pair.peer_v4))["status"] == "done"
    assert pair.can_connect(pair.peer_v4, port)
    assert rig.api("GET", "/api/v1/blocks").json()["blocks"] == []

    # IPv6, and expiry in the kernel (nftables element timeout).
    assert rig.finished(rig.block(pair.peer_v6, ttl=2))["status"] == "done"
    assert not pair.can_connect(pair.peer_v6, port)
    assert pair.wait_connect(pair.peer_v6, port, expected=True, timeout=20)

    # A dry run checks everything and changes nothing.
    dry = rig.finished(rig.block(pair.peer_v4, dry_run=True))
    assert dry["status"] == "done" and dry["result"].startswith("dry-run: "), dry
    assert pair.can_connect(pair.peer_v4, port)


def test_refusals_are_reported_and_audited(rig: Rig) -> None:
    pair = rig.pair
    # On the agent's allowlist (not on the collector's): the agent refuses.
    allowlisted = rig.finished(rig.block(pair.other_v4))
    assert allowlisted["status"] == "refused" and "allowlisted" in allowlisted["result"]

    first = rig.block(pair.peer_v4)
    assert rig.finished(first)["status"] == "done"
    with psycopg.connect(rig.server.database_url) as conn:
        row = conn.execute("SELECT envelope, seq FROM command WHERE id = %s", (first,)).fetchone()
    assert row is not None
    old_envelope, old_seq = bytes(row[0]), int(row[1])

    key = _collector_key(rig)
    cases = {
        "bad signature": lambda s: wire.seal_command(_command(rig, seq=s), SigningKey.generate()),
        "is for agent": lambda s: wire.seal_command(
            _command(rig, seq=s, agent=str(uuid.uuid4())), key
        ),
        "expired": lambda s: wire.seal_command(_command(rig, seq=s, expires_in_s=-5), key),
        "replayed": lambda s: old_envelope,
    }
    for reason, make in cases.items():
        with psycopg.connect(rig.server.database_url) as conn:
            current = conn.execute(
                "SELECT last_seq FROM command_seq WHERE agent_id = %s", (rig.agent.agent_id,)
            ).fetchone()
        seq = int(current[0]) + 1 if current else 1
        envelope = make(seq)
        # The delivery id is the one the envelope claims (else refused for the mismatch).
        opened = wire.unseal(envelope, "command")
        claimed = str(msgpack.unpackb(opened.payload)["id"])
        if reason == "replayed":
            claimed = str(uuid.uuid4())
        _queue_behind_the_collectors_back(rig, envelope, claimed)
        result = rig.finished(claimed)
        assert result["status"] == "refused", result
        assert reason in result["result"], result
    assert old_seq >= 1
    assert pair.can_connect(pair.other_v4, rig.port)

    with psycopg.connect(rig.server.database_url) as conn:
        refused = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'command.refused'"
        ).fetchone()
    assert refused is not None and refused[0] == 5  # allowlisted + the four above


class BanList:
    """A source with a native blocklist (as Kamailio's htable); counts what it runs."""

    name = "kam1"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def actions(self) -> dict[str, Any]:
        async def block(args: Any) -> str:
            self.calls.append(f"block {args['ip']}")
            return "banned"

        async def unblock(args: Any) -> str:
            self.calls.append(f"unblock {args['ip']}")
            return "unbanned"

        return {"block_ip": block, "unblock_ip": unblock}


async def test_a_lost_result_is_reported_later_and_nothing_runs_twice(
    collector_server: CollectorServer, tmp_path: Path
) -> None:
    """The agent runs a command, its result is lost (crash, network), it restarts: the stored
    result reaches the collector (after failing over from a dead URL), nothing runs again."""
    import asyncio
    import socket

    from cdrstats_agent.commands import Allowlist, CommandChannel, Executor
    from cdrstats_agent.config import ActionSettings
    from cdrstats_agent.firewall import FirewallSettings, make_backend
    from cdrstats_collector import cli

    enrolled = collector_server.enroll("acme", "kam")
    db = collector_server.database_url
    argv = ["block", "192.0.2.66", "--switch", "kam", "--tenant", "acme", "--database-url", db]
    assert await asyncio.to_thread(cli.main, argv) == 0
    source = BanList()

    def executor() -> Executor:
        return Executor(
            ActionSettings(poll_wait_s=1),
            make_backend(FirewallSettings()),
            [source],  # type: ignore[list-item]
            agent_id=enrolled.agent_id,
            collector_key=wire.verify_key_from_text(enrolled.collector_public_key),
            state_dir=tmp_path,
            allowlist=Allowlist([], [collector_server.url], own=set, resolve=lambda u: set()),
        )

    first = CommandChannel(executor(), urls=[collector_server.url], key=enrolled.key)
    async with httpx.AsyncClient(timeout=30) as client:
        deliveries = await first._poll(client, 0)
    assert len(deliveries) == 1
    result = await first.executor.handle(*deliveries[0])
    assert result.status == "done" and source.calls == ["block 192.0.2.66"]
    # ... and the agent dies before reporting it: the collector still has it pending.

    def status() -> str:
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT status FROM command WHERE id = %s", (result.id,)).fetchone()
        return str(row[0]) if row else "?"

    assert status() == "pending"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    second = CommandChannel(
        executor(), urls=[dead, collector_server.url], key=enrolled.key, backoff_max_s=0.2
    )
    task = asyncio.create_task(second.run())
    try:
        for _ in range(300):
            if status() != "pending" and not second.executor.state.unreported:
                break  # stored by the collector, and its answer seen by the agent
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert status() == "done"
    assert source.calls == ["block 192.0.2.66"]
    assert second.executor.state.unreported == []
