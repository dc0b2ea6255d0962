"""Firewall backends: address validation, dry-run, and real nftables / ipset / iptables inside
a network namespace made by the test (the host's ruleset is never touched)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from cdrstats_agent.firewall import (
    FirewallError,
    FirewallSettings,
    IpsetBackend,
    IptablesBackend,
    NftBackend,
    make_backend,
    parse_ip,
)

from tests.fix_netns import NetnsPair, netns_pair, nsrun, require

__all__ = ["netns_pair"]  # the fixture, imported for this module's tests


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3",
        "256.1.1.1",
        "192.0.2.0/24",
        "1.2.3.4; rm -rf /",
        None,
        7,
        "a" * 100,
        "$(reboot)",
    ],
)
def test_parse_ip_refuses_what_is_not_one_address(text: object) -> None:
    with pytest.raises(ValueError, match="ip must be an IPv4 or IPv6 address"):
        parse_ip(text)


def test_parse_ip_refuses_a_zone() -> None:
    with pytest.raises(ValueError, match="without a zone"):
        parse_ip("fe80::1%eth0")


def test_parse_ip_normalises() -> None:
    assert str(parse_ip(" 192.0.2.7 ")) == "192.0.2.7"
    assert str(parse_ip("2001:DB8:0::1")) == "2001:db8::1"
    assert parse_ip("::ffff:192.0.2.7") == ipaddress.ip_address("192.0.2.7")


def test_make_backend_refuses_unknown_backend_and_unsafe_table_names() -> None:
    with pytest.raises(ValueError, match="unknown firewall backend"):
        make_backend(FirewallSettings(backend="pf"))
    with pytest.raises(ValueError, match="not a plain identifier"):
        make_backend(FirewallSettings(backend="nftables", table="x; flush ruleset"))


def test_nft_scripts_hold_only_names_and_normalised_addresses() -> None:
    fw = NftBackend(FirewallSettings(backend="nftables"))
    script = fw.block_script(parse_ip("2001:db8::7"), 3600)
    assert script.splitlines() == [
        "add element inet cdrstats blocked6 { 2001:db8::7 timeout 1s }",
        "delete element inet cdrstats blocked6 { 2001:db8::7 }",
        "add element inet cdrstats blocked6 { 2001:db8::7 timeout 3600s }",
    ]


async def test_backend_none_refuses_to_block() -> None:
    fw = make_backend(FirewallSettings())
    with pytest.raises(FirewallError, match="no firewall backend configured"):
        await fw.block(parse_ip("192.0.2.7"), 60)


async def test_dry_run_changes_nothing(netns_pair: NetnsPair) -> None:
    fw = make_backend(FirewallSettings(backend="nftables", netns=netns_pair.switch, dry_run=True))
    await fw.setup()
    await fw.block(parse_ip(netns_pair.peer_v4), 60)
    assert any("nft" in argv for argv in fw.ran)
    listed = nsrun(netns_pair.switch, "nft", "list", "ruleset").stdout
    assert "cdrstats" not in listed


async def test_missing_program_is_a_clear_error(netns_pair: NetnsPair) -> None:
    fw = make_backend(FirewallSettings(backend="nftables", netns="cdrstats-no-such-ns"))
    with pytest.raises(FirewallError, match="nft failed: Cannot open network namespace"):
        await fw.setup()


async def test_nftables_drops_blocked_v4_and_v6_then_lets_them_in(netns_pair: NetnsPair) -> None:
    pair = netns_pair
    port = pair.serve_tcp()
    assert pair.can_connect(pair.peer_v4, port)
    assert pair.can_connect(pair.peer_v6, port)
    fw = make_backend(FirewallSettings(backend="nftables", netns=pair.switch))
    await fw.setup()
    await fw.setup()  # idempotent: one rule per family, not two
    rules = nsrun(pair.switch, "nft", "list", "chain", "inet", "cdrstats", "input").stdout
    assert rules.count("drop") == 2

    await fw.block(parse_ip(pair.peer_v4), 3600)
    await fw.block(parse_ip(pair.peer_v6), 3600)
    assert not pair.can_connect(pair.peer_v4, port)
    assert not pair.can_connect(pair.peer_v6, port)
    assert pair.can_connect(pair.other_v4, port)  # another address of the same host: not blocked
    active = await fw.active()
    assert set(active) == {pair.peer_v4, pair.peer_v6}
    assert all(0 < left <= 3600 for left in active.values())

    # A second block renews the timeout (a plain nft `add` would keep the old one).
    await fw.block(parse_ip(pair.peer_v4), 7200)
    assert (await fw.active())[pair.peer_v4] > 3600

    await fw.unblock(parse_ip(pair.peer_v4))
    await fw.unblock(parse_ip(pair.peer_v4))  # idempotent
    assert pair.can_connect(pair.peer_v4, port)
    assert not pair.can_connect(pair.peer_v6, port)
    await fw.unblock(parse_ip(pair.peer_v6))
    assert pair.can_connect(pair.peer_v6, port)
    assert await fw.active() == {}


async def test_nftables_block_expires_in_the_kernel(netns_pair: NetnsPair) -> None:
    pair = netns_pair
    port = pair.serve_tcp()
    fw = make_backend(FirewallSettings(backend="nftables", netns=pair.switch))
    await fw.setup()
    await fw.block(parse_ip(pair.peer_v4), 2)
    assert not pair.can_connect(pair.peer_v4, port)
    assert pair.wait_connect(pair.peer_v4, port, expected=True, timeout=15)
    assert await fw.active() == {}


async def test_ipset_backend(netns_pair: NetnsPair) -> None:
    require("ipset", "iptables")
    pair = netns_pair
    port = pair.serve_tcp()
    fw = make_backend(FirewallSettings(backend="ipset", netns=pair.switch))
    assert isinstance(fw, IpsetBackend)
    await fw.setup()
    await fw.setup()
    await fw.block(parse_ip(pair.peer_v4), 600)
    assert not pair.can_connect(pair.peer_v4, port)
    assert pair.can_connect(pair.other_v4, port)
    assert pair.peer_v4 in await fw.active()
    await fw.unblock(parse_ip(pair.peer_v4))
    await fw.unblock(parse_ip(pair.peer_v4))
    assert pair.can_connect(pair.peer_v4, port)


async def test_iptables_backend_expires_by_the_agent(netns_pair: NetnsPair) -> None:
    require("iptables")
    pair = netns_pair
    port = pair.serve_tcp()
    fw = make_backend(FirewallSettings(backend="iptables", netns=pair.switch))
    assert isinstance(fw, IptablesBackend)
    await fw.setup()
    await fw.setup()
    await fw.block(parse_ip(pair.peer_v4), 1)
    await fw.block(parse_ip(pair.peer_v4), 1)  # no second rule
    listed = nsrun(pair.switch, "iptables", "-S", "CDRSTATS").stdout
    assert listed.count(pair.peer_v4) == 1
    assert not pair.can_connect(pair.peer_v4, port)
    for _ in range(50):  # the agent's own expiry time (1 s) passes
        if not await fw.active():
            break
        await asyncio.sleep(0.2)
    assert await fw.expire() == [pair.peer_v4]
    assert pair.can_connect(pair.peer_v4, port)
