"""The agent's command executor: verification (signature, target, expiry, replay), allowlist,
limits, dry-run, routing to a plugin's native action, and run-once across restarts."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cdrstats_agent import wire
from cdrstats_agent.commands import STATE_FILE, Allowlist, Executor
from cdrstats_agent.config import ActionSettings, parse_config
from cdrstats_agent.errors import ConfigError
from cdrstats_agent.firewall import FirewallSettings, make_backend, parse_ip
from cdrstats_agent.plugin import ActionHandler, ReadResult, has_native_block
from nacl.signing import SigningKey

AGENT = str(uuid.uuid4())
COLLECTOR_IP = "198.51.100.9"
HOST_IP = "203.0.113.5"


class BanListSource:
    """A source with a native blocklist (like Kamailio's htable): it records what it runs."""

    def __init__(self, name: str = "kam1") -> None:
        self.name = name
        self.banned: dict[str, int] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def check(self) -> None:
        return None

    async def read(self, checkpoint: str | None) -> AsyncIterator[ReadResult]:
        if False:
            yield ReadResult((), checkpoint)

    async def close(self) -> None:
        return None

    def actions(self) -> Mapping[str, ActionHandler]:
        async def block(args: Mapping[str, Any]) -> str:
            self.calls.append(("block_ip", dict(args)))
            self.banned[str(args["ip"])] = int(args["ttl"])
            return f"banned {args['ip']}"

        async def unblock(args: Mapping[str, Any]) -> str:
            self.calls.append(("unblock_ip", dict(args)))
            self.banned.pop(str(args["ip"]), None)
            return f"unbanned {args['ip']}"

        return {"block_ip": block, "unblock_ip": unblock}


class Signer:
    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.seq = 0

    def make(
        self,
        verb: str = "block_ip",
        args: dict[str, Any] | None = None,
        *,
        agent: str = AGENT,
        seq: int | None = None,
        expires_in_s: float = 300,
        key: SigningKey | None = None,
    ) -> tuple[str, bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = wire.now_us()
        cmd = wire.Command(
            id=str(uuid.uuid4()),
            seq=seq,
            agent=agent,
            verb=verb,
            args={"ip": "192.0.2.7", "ttl": 3600} if args is None else args,
            issued_at=now,
            expires_at=now + int(expires_in_s * 1_000_000),
        )
        return cmd.id, wire.seal_command(cmd, key or self.key)


def make_executor(
    tmp_path: Path,
    signer: Signer,
    source: BanListSource | None = None,
    *,
    backend: str = "none",
    **settings: Any,
) -> Executor:
    actions = ActionSettings(**{"allowlist": ("10.0.0.0/8", "2001:db8:aa::/48"), **settings})
    allow = Allowlist(
        actions.allowlist,
        ["http://collector.example:8080"],
        own=lambda: {parse_ip(HOST_IP)},
        resolve=lambda urls: {parse_ip(COLLECTOR_IP)},
    )
    return Executor(
        actions,
        make_backend(FirewallSettings(backend=backend, dry_run=actions.dry_run)),
        [source] if source is not None else [],
        agent_id=AGENT,
        collector_key=signer.key.verify_key,
        state_dir=tmp_path,
        allowlist=allow,
    )


@pytest.fixture
def signer() -> Signer:
    return Signer()


async def test_block_and_unblock_through_the_native_action(tmp_path: Path, signer: Signer) -> None:
    src = BanListSource()
    assert has_native_block(src)
    ex = make_executor(tmp_path, signer, src)
    r = await ex.handle(*signer.make())
    assert (r.status, r.seq, r.verb) == ("done", 1, "block_ip")
    assert r.result == "kam1: banned 192.0.2.7"
    assert src.banned == {"192.0.2.7": 3600}
    r = await ex.handle(*signer.make("unblock_ip", {"ip": "192.0.2.7"}))
    assert r.status == "done" and src.banned == {}
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["last_seq"] == 2 and state["blocks"] == {}
    assert len(state["unreported"]) == 2


async def test_redelivery_is_not_run_twice_even_after_a_restart(
    tmp_path: Path, signer: Signer
) -> None:
    src = BanListSource()
    delivery = signer.make()
    first = await make_executor(tmp_path, signer, src).handle(*delivery)
    again = await make_executor(tmp_path, signer, src).handle(*delivery)  # a new process
    assert again == first
    assert len(src.calls) == 1
    # The same envelope under another delivery id is a replay: refused, not run.
    replay = await make_executor(tmp_path, signer, src).handle(str(uuid.uuid4()), delivery[1])
    assert replay.status == "refused" and "replayed" in replay.result
    assert len(src.calls) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "bad signature"),
        ("other_agent", "is for agent"),
        ("expired", "expired"),
        ("replayed", "replayed"),
        ("garbage", "refused:"),
    ],
)
async def test_unauthentic_commands_are_refused_and_reported(
    tmp_path: Path, signer: Signer, case: str, reason: str
) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src)
    assert (await ex.handle(*signer.make(args={"ip": "192.0.2.1", "ttl": 60}))).status == "done"
    if case == "forged":
        delivery = signer.make(key=SigningKey.generate())
    elif case == "other_agent":
        delivery = signer.make(agent=str(uuid.uuid4()))
    elif case == "expired":
        delivery = signer.make(expires_in_s=-1)
    elif case == "replayed":
        delivery = signer.make(seq=1)
    else:
        delivery = (str(uuid.uuid4()), b"\x93not an envelope")
    r = await ex.handle(*delivery)
    assert r.status == "refused" and reason in r.result
    assert src.calls == [("block_ip", {"ip": "192.0.2.1", "ttl": 60})]
    assert ex.state.last_seq == 1  # an unauthentic command does not move the sequence
    assert r.id in json.loads((tmp_path / STATE_FILE).read_text())["unreported"]


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.5", "multicast"),
        ("10.1.2.3", "allowlist (10.0.0.0/8)"),
        ("2001:db8:aa::5", "allowlist (2001:db8:aa::/48)"),
        (COLLECTOR_IP, "the collector"),
        (HOST_IP, "this host"),
        (f"::ffff:{HOST_IP}", "this host"),
    ],
)
async def test_allowlisted_addresses_are_never_blocked(
    tmp_path: Path, signer: Signer, ip: str, why: str
) -> None:
    src = BanListSource()
    r = await make_executor(tmp_path, signer, src).handle(*signer.make(args={"ip": ip, "ttl": 60}))
    assert r.status == "refused" and "allowlisted" in r.result and why in r.result
    assert src.calls == []


@pytest.mark.parametrize(
    ("verb", "args", "reason"),
    [
        ("block_ip", {"ip": "192.0.2.7"}, "ttl must be"),
        ("block_ip", {"ip": "192.0.2.7", "ttl": 0}, "ttl must be"),
        ("block_ip", {"ip": "192.0.2.7", "ttl": 10**9}, "ttl must be"),
        ("block_ip", {"ip": "192.0.2.7", "ttl": "3600"}, "ttl must be"),
        ("block_ip", {"ip": "192.0.2.0/24", "ttl": 60}, "ip must be"),
        ("block_ip", {"ip": "1.2.3.4 ; reboot", "ttl": 60}, "ip must be"),
        ("unblock_ip", {}, "ip must be"),
        ("reboot", {}, "not one this agent runs"),
    ],
)
async def test_bad_verbs_and_arguments_are_refused(
    tmp_path: Path, signer: Signer, verb: str, args: dict[str, Any], reason: str
) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src)
    r = await ex.handle(*signer.make(verb, args))
    assert r.status == "refused" and reason in r.result
    assert src.calls == []
    assert ex.state.last_seq == 1  # authentic: its seq is used up


async def test_maximum_number_of_active_blocks(tmp_path: Path, signer: Signer) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src, max_blocks=2)
    for n in (1, 2):
        assert (await ex.handle(*signer.make(args={"ip": f"192.0.2.{n}", "ttl": 60}))).status == (
            "done"
        )
    r = await ex.handle(*signer.make(args={"ip": "192.0.2.3", "ttl": 60}))
    assert r.status == "refused" and "max_blocks" in r.result
    # Renewing an active block is not a new block.
    assert (await ex.handle(*signer.make(args={"ip": "192.0.2.1", "ttl": 120}))).status == "done"
    # Once one is unblocked there is room again.
    await ex.handle(*signer.make("unblock_ip", {"ip": "192.0.2.2"}))
    assert (await ex.handle(*signer.make(args={"ip": "192.0.2.3", "ttl": 60}))).status == "done"


async def test_dry_run_calls_nothing(tmp_path: Path, signer: Signer) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src, dry_run=True)
    r = await ex.handle(*signer.make())
    assert r.status == "done" and r.result.startswith("dry-run: kam1.block_ip(")
    assert src.calls == [] and ex.state.blocks == {}
    # A single command can ask for a dry run too (cdrstats block --dry-run).
    (tmp_path / "b").mkdir()
    ex2 = make_executor(tmp_path / "b", signer, src)
    r = await ex2.handle(*signer.make(args={"ip": "192.0.2.8", "ttl": 60, "dry_run": True}))
    assert r.status == "done" and "dry-run" in r.result and src.calls == []


async def test_without_native_action_or_firewall_the_block_is_refused(
    tmp_path: Path, signer: Signer
) -> None:
    r = await make_executor(tmp_path, signer).handle(*signer.make())
    assert r.status == "refused" and "no firewall backend is configured" in r.result


async def test_firewall_dry_run_is_used_without_a_native_action(
    tmp_path: Path, signer: Signer
) -> None:
    ex = make_executor(tmp_path, signer, backend="nftables", dry_run=True)
    r = await ex.handle(*signer.make())
    assert r.status == "done"
    assert r.result.startswith("dry-run: nftables: 192.0.2.7 added to cdrstats/blocked4")
    assert any("nft" in argv for argv in ex.dry_firewall.ran)


async def test_a_failing_action_is_reported_as_failed(tmp_path: Path, signer: Signer) -> None:
    class Broken(BanListSource):
        def actions(self) -> Mapping[str, ActionHandler]:
            async def fail(args: Mapping[str, Any]) -> str:
                raise RuntimeError("htable unreachable")

            return {"block_ip": fail, "unblock_ip": fail}

    r = await make_executor(tmp_path, signer, Broken()).handle(*signer.make())
    assert r.status == "failed" and "htable unreachable" in r.result


def test_config_actions_and_firewall_tables() -> None:
    cfg = parse_config(
        '[actions]\nallowlist = ["192.0.2.0/24", "2001:db8::1"]\nmax_blocks = 5\ndry_run = true\n'
        '[firewall]\nbackend = "nftables"\ntable = "cdrs"\n'
    )
    assert cfg.actions.max_blocks == 5 and cfg.actions.allowlist == ("192.0.2.0/24", "2001:db8::1")
    assert cfg.firewall.backend == "nftables" and cfg.firewall.dry_run
    for text, key in [
        ('[actions]\nallowlist = ["nope"]\n', "actions.allowlist[0]"),
        ('[firewall]\nbackend = "pf"\n', "firewall.backend"),
        ('[firewall]\ntable = "x; flush ruleset"\n', "firewall.table"),
        ("[actions]\nmax_blocks = 0\n", "actions.max_blocks"),
        ("[actions]\nsurprise = 1\n", "actions.surprise"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert key in str(info.value), str(info.value)


def test_host_addresses_of_a_namespace() -> None:
    from cdrstats_agent.commands import host_addresses

    from tests.fix_netns import NetnsPair, require

    require()
    with NetnsPair.create() as pair:
        found = {str(ip) for ip in host_addresses(pair.switch)}
        assert {pair.switch_v4, pair.switch_v6, "127.0.0.1"} <= found
        assert pair.peer_v4 not in found
    assert host_addresses("cdrstats-no-such-ns") == set()


async def test_a_new_enrollment_starts_the_sequence_again(tmp_path: Path, signer: Signer) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src)
    assert (await ex.handle(*signer.make())).status == "done"
    again = make_executor(tmp_path, signer, src)
    assert again.state.last_seq == 1 and again.state.blocks
    # Same state directory, new agent id (cdrstats-agent enroll --force): seq 1 is valid again,
    # the blocks made before are still remembered.
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    doc["agent_id"] = str(uuid.uuid4())
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    fresh = make_executor(tmp_path, signer, src)
    assert fresh.state.last_seq == 0 and "192.0.2.7" in fresh.state.blocks


async def test_a_bad_collector_key_disables_commands_but_not_cdr_collection(
    tmp_path: Path,
) -> None:
    import asyncio
    import dataclasses

    from agent_testkit import CollectorPeer, ListSource, agent_config, identity_for, wait_until
    from cdrstats_agent.runner import Agent

    peer = CollectorPeer()
    await peer.start()
    try:
        identity, key = identity_for(peer)
        identity = dataclasses.replace(identity, collector_public_key="not base64!")
        source = ListSource("s1", 3)
        agent = Agent(
            agent_config(tmp_path, [peer.url]), sources=[source], identity=identity, key=key
        )
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.started.wait(), 10)
        assert agent.commands is None
        await wait_until(lambda: len(peer.state.cdrs) == 3, what="CDRs delivered")
        agent.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await peer.stop()


async def test_nftables_table_removed_behind_the_agents_back_is_set_up_again(
    tmp_path: Path, signer: Signer
) -> None:
    from tests.fix_netns import NetnsPair, nsrun, require

    require("nft")
    with NetnsPair.create() as pair:
        actions = ActionSettings()
        ex = Executor(
            actions,
            make_backend(FirewallSettings(backend="nftables", netns=pair.switch)),
            [],
            agent_id=AGENT,
            collector_key=signer.key.verify_key,
            state_dir=tmp_path,
            allowlist=Allowlist([], [], own=set, resolve=lambda urls: set()),
        )
        first = await ex.handle(*signer.make(args={"ip": pair.peer_v4, "ttl": 600}))
        assert first.status == "done", first
        nsrun(pair.switch, "nft", "delete", "table", "inet", "cdrstats")
        again = await ex.handle(*signer.make(args={"ip": pair.peer_v6, "ttl": 600}))
        assert again.status == "done", again
        listed = nsrun(pair.switch, "nft", "list", "set", "inet", "cdrstats", "blocked6").stdout
        assert pair.peer_v6 in listed


async def test_a_redelivered_command_is_reported_again(tmp_path: Path, signer: Signer) -> None:
    src = BanListSource()
    ex = make_executor(tmp_path, signer, src)
    delivery = signer.make()
    result = await ex.handle(*delivery)
    await ex.reported([result.id])
    assert ex.state.unreported == []
    assert await ex.handle(*delivery) == result  # the collector did not get it after all
    assert ex.state.unreported == [result.id] and len(src.calls) == 1
