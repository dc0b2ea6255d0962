"""Failed registrations (`AuthFailure`) on the live channel: conversion, the collector's
per-entry checks, the buffer (not superseded by snapshots, forwarded while a source awaits
one, bounded), and a source's live() reaching a collector peer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_testkit import CollectorPeer, identity_for, wait_until
from cdrstats_agent import wire
from cdrstats_agent.plugin import AuthFailure, LiveEvent
from cdrstats_agent.runner import Agent
from nacl.signing import SigningKey
from test_agent_live import LiveListSource, attach_live, live_config, running, snapshot, started

T = 1764064800.0


def auth(ip: str = "203.0.113.5", **kw: Any) -> AuthFailure:
    return AuthFailure(ip, at=kw.pop("at", T), **kw)


def test_conversion_keeps_good_fields_and_reports_bad_ones() -> None:
    doc, problems = wire.auth_failure_to_wire(
        "ast1",
        auth(
            "::ffff:203.0.113.5",
            at=T + 0.25,
            src_port=5060,
            username="1001",
            sip_code=403,
            reason="x" * 300,
            transport="UDP",
            method="register",
            service="PJSIP",
        ),
    )
    assert problems == []
    assert doc == {
        "source": "ast1",
        "at": 1764064800250000,
        "src_ip": "203.0.113.5",  # IPv4-mapped written as IPv4
        "src_port": 5060,
        "username": "1001",
        "sip_code": 403,
        "reason": "x" * 256,  # cut
        "transport": "udp",
        "method": "REGISTER",
        "service": "PJSIP",
    }
    doc, problems = wire.auth_failure_to_wire(
        "fs", auth("[2001:db8::7]", src_port=70000, sip_code=42, transport="carrier-pigeon")
    )
    assert doc == {
        "source": "fs",
        "at": 1764064800000000,
        "src_ip": "2001:db8::7",
    }
    assert len(problems) == 3
    assert "src_port must be an integer from 1 to 65535" in problems[0]
    for bad, message in [
        (auth("scanner.example"), "src_ip 'scanner.example' is not an IP address"),
        (auth("fe80::1%eth0"), "has a zone"),
        (auth(at=0), "'at' must be epoch seconds"),
        (LiveEvent("snapshot", at=T), "is not an IP address"),
    ]:
        with pytest.raises(wire.WireError, match=message):
            wire.auth_failure_to_wire("fs", bad)


def test_collector_checks_each_entry_and_bounds_the_list() -> None:
    key = SigningKey(bytes(range(32)))
    good = wire.auth_failure_to_wire("ast1", auth(username="1001", sip_code=401))[0]
    bad = [
        {**good, "src_ip": "999.1.1.1"},
        {**good, "extra": 1},
        {**good, "sip_code": "401"},
        {**good, "method": "reg ister"},
        {**good, "username": "a\x00b"},
        {**good, "at": -1},
        "not a map",
    ]
    envelope = wire.seal_live("ag", "s1", 1, [], key, auth_failures=[good, *bad])
    message = wire.check_live_payload(wire.live_payload(wire.unseal(envelope, "live")), "ag")
    assert message.auth_failures == [good]
    assert len(message.auth_rejected) == len(bad)
    assert message.auth_rejected[0] == "auth_failures[1].src_ip '999.1.1.1' is not an IP address"
    assert "unknown keys ['extra']" in message.auth_rejected[1]
    assert "sip_code must be an integer" in message.auth_rejected[2]
    assert "is not a SIP method" in message.auth_rejected[3]
    assert "NUL" in message.auth_rejected[4]
    assert "at must be an integer of microseconds" in message.auth_rejected[5]
    assert message.auth_rejected[6] == "auth_failures[7] must be a map"
    # No failures: the key is absent (a collector that predates it reads the same payload).
    plain = wire.live_payload(wire.unseal(wire.seal_live("ag", "s1", 2, [], key), "live"))
    assert "auth_failures" not in plain
    assert wire.check_live_payload(plain, "ag").auth_failures == []
    for value, message_text in [
        ({"a": 1}, "auth_failures must be an array"),
        ([good] * (wire.LIVE_MAX_AUTH_FAILURES + 1), "more than 1000"),
    ]:
        payload = {**plain, "auth_failures": value}
        with pytest.raises(wire.WireError, match=message_text):
            wire.check_live_payload(payload, "ag")


def test_buffer_keeps_them_apart_from_the_call_state() -> None:
    from cdrstats_agent.live import LiveBuffer

    buffer = LiveBuffer(queue_max_events=3)
    doc = wire.auth_failure_to_wire("fs", auth())[0]
    buffer.expect_snapshot("fs")  # the source lost events: its calls wait for a snapshot...
    assert buffer.add_auth("fs", doc)  # ...its failed registrations do not
    assert buffer.add("fs", wire.live_event_to_wire(started("a"))[0]) is False
    assert buffer.add("fs", wire.live_event_to_wire(snapshot("b"))[0])  # supersedes calls only
    assert buffer.add_auth("fs", doc) and buffer.add_auth("fs", doc)
    assert buffer.add_auth("fs", doc) is False  # full: the newest is dropped and counted
    assert buffer.auth_dropped == 1 and buffer.pending == 4
    assert buffer.take_auth(2) == [doc, doc]
    [stream] = buffer.take(10)
    assert [e["kind"] for e in stream.events] == ["snapshot"]
    assert buffer.take_auth(10) == [doc] and buffer.pending == 0
    assert buffer.queue("fs").auth_failures == 4


async def test_failed_registrations_reach_the_collector(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    source = LiveListSource("ast1")
    agent = Agent(live_config(tmp_path, [peer.url]), sources=[source], identity=identity, key=key)
    async with running(agent):
        # Before any snapshot (the source is not synchronised): still forwarded.
        for n in range(30):
            source.feed.put_nowait(auth(username=f"{100 + n}", sip_code=401))  # type: ignore[arg-type]
        source.feed.put_nowait(auth("not-an-ip"))  # type: ignore[arg-type]
        source.feed.put_nowait(snapshot())
        await wait_until(
            lambda: sum(len(m.auth_failures) for m in got.messages) == 30,
            what="the failed registrations",
        )
        await wait_until(lambda: len(got.events("ast1")) == 1, what="the snapshot")
        live = agent.live
        assert live is not None
        await wait_until(lambda: live.sent_auth_failures == 30, what="the last answer")
        status = live.status()
    received = [f for m in got.messages for f in m.auth_failures]
    assert [f["username"] for f in received] == [f"{100 + n}" for n in range(30)]
    assert {f["source"] for f in received} == {"ast1"}
    assert all(m.auth_rejected == [] for m in got.messages)
    assert status["sources"]["ast1"]["auth_failures"] == 30
    assert status["dropped_auth_failures"] == 0
