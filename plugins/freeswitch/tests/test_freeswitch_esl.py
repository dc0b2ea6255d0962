"""Live calls over the Event Socket: a peer speaking the wire protocol on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from cdrstats_agent.logs import LogfmtFormatter
from cdrstats_agent.plugin import LiveEvent
from cdrstats_freeswitch.esl import EslLive, EslSettings, event_to_live, snapshot_from_calls
from cdrstats_freeswitch.plugin import FreeswitchLiveSource
from freeswitch_testkit import REFERENCE, EslPeer, make_source, parse_plain, wait_until

HANGUP = parse_plain((REFERENCE / "event_plain_CHANNEL_HANGUP_COMPLETE_cgrates.txt").read_text())
A_LEG = HANGUP["Unique-ID"]


def recorded(name: str, **changes: str) -> dict[str, str]:
    """The recorded event turned into another event of the same call (as the switch sends)."""
    headers = {**HANGUP, "Event-Name": name, **changes}
    if name != "CHANNEL_HANGUP_COMPLETE":
        for key in [k for k in headers if k.startswith("variable_hangup") or k == "Hangup-Cause"]:
            del headers[key]
    return headers


def test_recorded_hangup_event() -> None:
    event = event_to_live(HANGUP)
    assert event is not None and event.kind == "ended" and event.call_id == A_LEG
    assert event.at == 1436280794.030635
    assert event.data["hangup_cause"] == 16
    assert event.data["caller"] == "1001" and event.data["callee"] == "1003"
    assert event.data["read_codec"] == "SPEEX" and event.data["src_ip"] == "127.0.0.1"
    assert event.data["start"] == 1436280728.471153 and event.data["answer"] == 1436280728.971147


def test_b_legs_and_other_events_give_nothing() -> None:
    assert event_to_live({**HANGUP, "Event-Name": "HEARTBEAT"}) is None
    assert event_to_live({**HANGUP, "Event-Name": "CHANNEL_PARK"}) is None
    b_leg = {**HANGUP, "Unique-ID": "0a30dd7c-c222-482f-a322-b1218a15f8cd"}
    assert event_to_live(b_leg) is None


def test_show_calls_json() -> None:
    empty = snapshot_from_calls('{"row_count": 0}', at=5.0)
    assert empty.kind == "snapshot" and empty.calls == () and empty.at == 5.0
    body = (
        '{"row_count":1,"rows":[{"uuid":"u1","direction":"inbound","created_epoch":"1700000000",'
        '"cid_name":"Jane","cid_num":"1000","ip_addr":"192.0.2.9","dest":"3000",'
        '"callstate":"ACTIVE","read_codec":"PCMA","write_codec":"PCMA","call_uuid":"",'
        '"b_uuid":"u2","accountcode":""}]}'
    )
    (call,) = snapshot_from_calls(body).calls
    assert call == {
        "call_id": "u1",
        "caller": "1000",
        "caller_name": "Jane",
        "callee": "3000",
        "src_ip": "192.0.2.9",
        "read_codec": "PCMA",
        "write_codec": "PCMA",
        "direction": "inbound",
        "start": 1700000000.0,
        "state": "answered",
    }
    with pytest.raises(ValueError, match="-ERR"):
        snapshot_from_calls("-ERR no such command")


class Live:
    """`live()` of a source, consumed into a list in the background."""

    def __init__(self, peer: EslPeer, **esl: Any) -> None:
        options = {"port": peer.port, "snapshot_s": 0.3, "backoff_max_s": 0.5, **esl}
        source = make_source({"store": "http", "port": 0, "esl": options})
        assert isinstance(source, FreeswitchLiveSource)
        self.source = source
        self.esl: EslLive = source.esl
        self.events: list[LiveEvent] = []
        self.agen: AsyncGenerator[LiveEvent, None] = source.live()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self.agen:
            self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if e.kind != "snapshot"]

    def snapshots(self) -> int:
        return sum(1 for e in self.events if e.kind == "snapshot")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.agen.aclose()


async def test_events_and_snapshots_from_the_wire() -> None:
    peer = EslPeer()
    peer.calls = [
        {"uuid": A_LEG, "direction": "inbound", "cid_num": "1001", "callstate": "RINGING"}
    ]
    live = Live(peer)
    try:
        await wait_until(lambda: peer.subscribed() >= 1, 10, "the event subscription")
        await wait_until(lambda: live.snapshots() >= 1, 10, "the first snapshot")
        assert live.events[0].calls[0]["state"] == "ringing"
        assert (
            "event plain CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE HEARTBEAT"
            " CUSTOM sofia::register_failure"
        ) in peer.commands
        peer.send_event(recorded("CHANNEL_CREATE"))
        peer.send_event(recorded("HEARTBEAT"))
        peer.send_event(recorded("CHANNEL_ANSWER"))
        peer.send_event(HANGUP)
        await wait_until(lambda: len(live.kinds()) == 3, 10, "three call events")
        assert live.kinds() == ["started", "answered", "ended"]
        calls = [e for e in live.events if e.kind != "snapshot"]
        assert {e.call_id for e in calls} == {A_LEG}
        assert calls[0].data["state"] == "ringing" and calls[1].data["state"] == "answered"
        assert calls[2].data["hangup_cause"] == 16
        peer.calls = []
        before = live.snapshots()
        await wait_until(lambda: live.snapshots() > before + 1, 10, "periodic snapshots")
        assert live.events[-1].kind == "snapshot" and live.events[-1].calls == ()
    finally:
        await live.close()
        peer.stop()
    # Closing live() ends the greenswitch thread and its connection.
    assert not [t for t in threading.enumerate() if t.name.startswith("esl-")]


async def test_wrong_password_is_a_clear_error_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = EslPeer(password="right")
    live = Live(peer, password="wrong")
    try:
        with caplog.at_level(logging.ERROR):
            await wait_until(lambda: peer.auth_attempts >= 2, 10, "two login attempts")
        assert live.esl.last_error == "wrong password"
        assert live.esl.stats["auth_failures"] >= 2 and not live.events
        formatter = LogfmtFormatter()
        lines = [formatter.format(r) for r in caplog.records]
        assert any(
            "event=esl_auth_failed" in line and "refused the Event Socket password" in line
            for line in lines
        ), lines
    finally:
        await live.close()
        peer.stop()


async def test_peer_restart_reconnects_and_resnapshots() -> None:
    peer = EslPeer()
    live = Live(peer, snapshot_s=60.0)
    try:
        await wait_until(lambda: live.snapshots() >= 1, 10, "the first snapshot")
        before = live.snapshots()
        peer.drop_clients()  # the switch restarts: disconnect notice, socket closed
        await wait_until(lambda: peer.connections >= 2, 10, "a new connection")
        await wait_until(lambda: live.snapshots() > before, 10, "a snapshot after reconnecting")
        await wait_until(lambda: peer.subscribed() == 1, 10, "the new subscription")
        peer.send_event(recorded("CHANNEL_CREATE"))
        await wait_until(lambda: live.kinds() == ["started"], 10, "an event on the new connection")
        # A switch that is down for a while (port closed) is retried with backoff.
        port = peer.port
        peer.stop()
        failures = live.esl.stats["failures"]
        await wait_until(
            lambda: live.esl.stats["failures"] >= failures + 3, 15, "failed reconnections"
        )
        before = live.snapshots()
        peer = EslPeer(port=port)
        await wait_until(lambda: live.snapshots() > before, 15, "a snapshot from the new switch")
    finally:
        await live.close()
        peer.stop()


async def test_a_peer_that_stops_answering_is_dropped() -> None:
    peer = EslPeer()
    live = Live(peer, command_timeout_s=0.3)
    try:
        await wait_until(lambda: live.snapshots() >= 1, 10, "the first snapshot")
        peer.mute.set()  # accepts bytes, never answers: `show calls` times out
        await wait_until(
            lambda: "no reply to 'api' within 0.3 s" in (live.esl.last_error or ""),
            10,
            "the `show calls` timeout",
        )
        peer.mute.clear()
        before = live.snapshots()
        await wait_until(lambda: live.snapshots() > before, 10, "a snapshot after reconnecting")
        assert peer.connections >= 2
    finally:
        await live.close()
        peer.stop()


async def test_a_peer_that_never_sends_auth_request() -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    live_esl = EslLive(
        "fs",
        EslSettings(port=port, connect_timeout_s=0.2, command_timeout_s=0.2, backoff_max_s=0.2),
    )
    events = live_esl.events()
    task = asyncio.ensure_future(anext(events))
    try:
        await wait_until(
            lambda: "no auth/request within" in (live_esl.last_error or ""),
            10,
            "the wait for auth/request to time out",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()
        silent.close()


async def test_an_acl_rejection_is_named() -> None:
    peer = EslPeer(rude=True)
    live = Live(peer)
    try:
        await wait_until(
            lambda: "apply-inbound-acl" in (live.esl.last_error or ""), 10, "the rejection"
        )
        assert not live.events and peer.auth_attempts == 0
    finally:
        await live.close()
        peer.stop()
