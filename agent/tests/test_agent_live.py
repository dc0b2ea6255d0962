"""The live channel: event conversion, the buffer (coalescing, bounds, resynchronisation), and
the runner streaming a source's live() to a collector peer beside its CDRs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import pytest
from agent_testkit import (
    CollectorPeer,
    ListSource,
    agent_config,
    dead_url,
    identity_for,
    wait_until,
)
from cdrstats_agent import wire
from cdrstats_agent.cli import _print_live
from cdrstats_agent.config import Config, LiveSettings, parse_config
from cdrstats_agent.errors import SourceError
from cdrstats_agent.live import STATUS_FILE, LiveBuffer, LiveChannel, read_status_file
from cdrstats_agent.plugin import LiveEvent, has_native_block, native_actions, supports_live
from cdrstats_agent.runner import Agent
from nacl.signing import SigningKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

T = 1764064800.0


def started(call: str, at: float = T, **data: Any) -> LiveEvent:
    return LiveEvent("started", call, at, {"caller": "1001", "callee": "2002", **data})


def ended(call: str, at: float = T + 30) -> LiveEvent:
    return LiveEvent("ended", call, at, {"hangup_cause": 16})


def snapshot(*calls: str, at: float = T + 1) -> LiveEvent:
    return LiveEvent("snapshot", at=at, calls=tuple({"call_id": c, "caller": "9"} for c in calls))


def to_wire(event: LiveEvent) -> dict[str, Any]:
    out, problems = wire.live_event_to_wire(event)
    assert problems == []
    return out


def call_ids(events: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("call_id") or "snapshot") for e in events]


# --- conversion and the wire form --------------------------------------------------------------


def test_event_conversion_keeps_good_fields_and_reports_bad_ones() -> None:
    event = LiveEvent(
        "started",
        "c1",
        T + 0.25,
        {
            "caller": "1001",
            "direction": "outbound",
            "start": T,
            "src_ip": "192.0.2.1",
            "callee": 33142278000,  # wrong type
            "colour": "red",  # not a live key
            "state": "talking",  # not a state
            "trunk": None,  # absent
        },
    )
    out, problems = wire.live_event_to_wire(event)
    assert out == {
        "kind": "started",
        "at": 1764064800250000,
        "call_id": "c1",
        "data": {
            "caller": "1001",
            "direction": "outbound",
            "start": 1764064800000000,
            "src_ip": "192.0.2.1",
        },
    }
    assert len(problems) == 3
    assert any("callee must be a string" in p for p in problems)
    assert any("colour" in p for p in problems)
    assert any("state 'talking'" in p for p in problems)
    wire.check_live_event(out)  # what the agent sends passes the collector's strict check


def test_unusable_events_are_refused() -> None:
    with pytest.raises(wire.WireError, match="kind 'hangup'"):
        wire.live_event_to_wire(LiveEvent("hangup", "c1", T))
    with pytest.raises(wire.WireError, match="call_id '' is not a usable call id"):
        wire.live_event_to_wire(LiveEvent("started", "", T))
    with pytest.raises(wire.WireError, match="'at' must be epoch seconds"):
        wire.live_event_to_wire(LiveEvent("ended", "c1", float("nan")))
    with pytest.raises(wire.WireError, match="kind None"):
        wire.live_event_to_wire({"kind": "started"})  # not a LiveEvent at all
    out, problems = wire.live_event_to_wire(
        LiveEvent("snapshot", at=T, calls=({"call_id": "a"}, {"caller": "no id"}, "junk"))  # type: ignore[arg-type]
    )
    assert out["calls"] == [{"call_id": "a"}]
    assert len(problems) == 2


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"kind": "started", "at": 1, "call_id": "a", "data": {"caller": 5}}, "data.caller"),
        ({"kind": "started", "at": 1.5, "call_id": "a"}, "at must be an integer"),
        ({"kind": "started", "at": 1, "call_id": ""}, "call_id must be a non-empty"),
        ({"kind": "ended", "at": 1, "call_id": "a", "calls": []}, "unknown keys ['calls']"),
        ({"kind": "snapshot", "at": 1, "calls": [{"caller": "x"}]}, "calls[0].call_id"),
        ({"kind": "snapshot", "at": 1}, "calls must be an array"),
        ({"kind": "answered", "at": 1, "call_id": "a", "data": {"src_ip": "x"}}, "not an IP"),
        ({"kind": "answered", "at": 1, "call_id": "a", "data": {"sip_code": -1}}, "sip_code"),
        ({"kind": "answered", "at": 1, "call_id": "a", "data": {"zz": 1}}, "unknown live data"),
        ({"kind": "answered", "at": 1, "call_id": "a", "data": {"callee": "1\x00"}}, "NUL"),
        ({"kind": "ended", "at": 1, "call_id": "a\x00b"}, "call_id contains a NUL"),
        (
            {"kind": "answered", "at": 1, "call_id": "a", "data": {"src_ip": "fe80::1%eth0"}},
            "not an IP address",
        ),
    ],
)
def test_strict_check_names_the_problem(event: dict[str, Any], message: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.check_live_event(event, "sources[0].events[2]")
    assert message in str(info.value)
    assert str(info.value).startswith("sources[0].events[2]")


def test_sealed_message_opens_and_checks() -> None:
    key = SigningKey.generate()
    streams = [wire.LiveStream("fs1", [to_wire(started("a")), to_wire(snapshot("b"))])]
    data = wire.seal_live("agent-x", "s1", 7, streams, key, sent_at=123)
    envelope = wire.unseal(data, "live")
    key.verify_key.verify(envelope.payload, envelope.sig)
    message = wire.check_live_payload(wire.live_payload(envelope), envelope.signer)
    assert (message.agent, message.stream, message.seq, message.sent_at) == (
        "agent-x",
        "s1",
        7,
        123,
    )
    assert message.sources == streams and message.event_count == 2
    with pytest.raises(wire.WireError, match="envelope type must be 'cdr_batch'"):
        wire.unseal(data, "cdr_batch")
    payload = wire.live_payload(envelope)
    with pytest.raises(wire.WireError, match="payload agent differs"):
        wire.check_live_payload(payload, "someone-else")
    payload["sources"] = payload["sources"] * 2
    with pytest.raises(wire.WireError, match=r"sources\[1\].source 'fs1' appears twice"):
        wire.check_live_payload(payload, "agent-x")


# --- the buffer ----------------------------------------------------------------------------------


def test_snapshot_supersedes_pending_events() -> None:
    buffer = LiveBuffer(queue_max_events=100)
    for name in ("a", "b", "c"):
        assert buffer.add("fs", to_wire(started(name)))
    assert buffer.pending == 3
    assert buffer.add("fs", to_wire(snapshot("b", "x")))
    assert buffer.add("fs", to_wire(ended("x")))
    assert buffer.pending == 2 and buffer.dropped == 0 and buffer.coalesced == 3
    [stream] = buffer.take(10)
    assert stream.source == "fs" and call_ids(stream.events) == ["snapshot", "x"]
    assert buffer.queue("fs").calls == {"b"}
    assert buffer.pending == 0 and buffer.take(10) == []


def test_overflow_drops_until_the_next_snapshot() -> None:
    buffer = LiveBuffer(queue_max_events=3)
    for n in range(3):
        assert buffer.add("fs", to_wire(started(f"c{n}")))
    assert not buffer.add("fs", to_wire(started("c3")))  # overflow: everything pending goes
    assert buffer.pending == 0 and buffer.queue("fs").resync
    assert not buffer.add("fs", to_wire(ended("c0")))  # still waiting for a snapshot
    assert buffer.dropped == 5
    assert buffer.add("other", to_wire(started("o1")))  # other sources are not affected
    assert buffer.add("fs", to_wire(snapshot("c1", "c2", "c3")))
    assert buffer.add("fs", to_wire(ended("c1")))
    taken = {s.source: call_ids(s.events) for s in buffer.take(10)}
    assert taken == {"fs": ["snapshot", "c1"], "other": ["o1"]}
    assert buffer.queue("fs").calls == {"c2", "c3"}


def test_a_lost_message_keeps_a_later_snapshot_only() -> None:
    buffer = LiveBuffer()
    buffer.add("a", to_wire(started("1")))
    buffer.add("b", to_wire(started("2")))
    taken = buffer.take(10)  # the message that will be lost
    buffer.add("a", to_wire(ended("1")))  # depends on what was lost
    buffer.add("b", to_wire(snapshot("2")))  # does not
    buffer.add("b", to_wire(ended("2")))
    for s in taken:
        buffer.lose(s.source, keep_snapshot=True, lost=len(s.events))
    assert buffer.queue("a").resync and not buffer.queue("b").resync
    assert {s.source: call_ids(s.events) for s in buffer.take(10)} == {"b": ["snapshot", "2"]}
    assert buffer.dropped == 3
    assert not buffer.add("a", to_wire(started("3")))


def test_take_is_bounded_and_serves_sources_in_turn() -> None:
    buffer = LiveBuffer()
    for n in range(5):
        buffer.add("a", to_wire(started(f"a{n}")))
        buffer.add("b", to_wire(started(f"b{n}")))
    first = buffer.take(3)
    second = buffer.take(3)
    assert [(s.source, len(s.events)) for s in first] == [("a", 3)]
    assert [(s.source, len(s.events)) for s in second] == [("b", 3)]
    rest = buffer.take(100)
    assert sorted((s.source, call_ids(s.events)) for s in rest) == [
        ("a", ["a3", "a4"]),
        ("b", ["b3", "b4"]),
    ]


async def test_wait_batch_returns_on_count_or_age() -> None:
    buffer = LiveBuffer()
    waiter = asyncio.create_task(buffer.wait_batch(3, 60))
    await asyncio.sleep(0.05)
    buffer.add("a", to_wire(started("1")))
    buffer.add("a", to_wire(started("2")))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # 2 of 3 events, and the oldest is young
    buffer.add("a", to_wire(started("3")))
    await asyncio.wait_for(waiter, 5)
    buffer.take(10)
    buffer.add("a", to_wire(started("4")))
    await asyncio.wait_for(buffer.wait_batch(100, 0.05), 5)  # age bound
    for n in range(5, 10):
        buffer.add("a", to_wire(started(str(n))))
    assert len(buffer.take(3)[0].events) == 3
    # What a full message left behind has waited long enough: it is due at once.
    await asyncio.wait_for(buffer.wait_batch(100, 60), 5)


# --- the channel against a collector peer ---------------------------------------------------------


@dataclass
class LiveReceived:
    messages: list[wire.LiveMessage] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    """Statuses to answer the next live messages with (they are not recorded)."""
    refused: int = 0
    delay: float = 0.0
    """Seconds each live request takes (a slow collector)."""

    def events(self, source: str) -> list[dict[str, Any]]:
        return [e for m in self.messages for s in m.sources if s.source == source for e in s.events]


def attach_live(peer: CollectorPeer) -> LiveReceived:
    """Give the collector peer a `POST /api/v1/live` that checks like the collector does."""
    got = LiveReceived()

    async def handler(request: Request) -> Response:
        data = await request.body()
        if got.delay:
            await asyncio.sleep(got.delay)
        try:
            envelope = wire.unseal(data, "live")
            assert peer.state.verify_key is not None
            peer.state.verify_key.verify(envelope.payload, envelope.sig)
            message = wire.check_live_payload(wire.live_payload(envelope), envelope.signer)
        except Exception as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        if got.script:
            got.refused += 1
            return JSONResponse({"error": "scripted"}, status_code=got.script.pop(0))
        got.messages.append(message)
        return JSONResponse({"seq": message.seq, "events": message.event_count, "calls": 0})

    peer.app.router.routes.append(Route("/api/v1/live", handler, methods=["POST"]))
    return got


class LiveListSource(ListSource):
    """A ListSource whose live() yields what the test puts in `feed` (an exception is raised)."""

    def __init__(self, name: str, total: int = 0, **kwargs: Any) -> None:
        super().__init__(name, total, **kwargs)
        self.feed: asyncio.Queue[LiveEvent | Exception] = asyncio.Queue()
        self.live_calls = 0

    async def live(self) -> AsyncIterator[LiveEvent]:
        self.live_calls += 1
        while True:
            item = await self.feed.get()
            if isinstance(item, Exception):
                raise item
            yield item


def live_config(tmp_path: Path, urls: list[str], **live: Any) -> Config:
    base = agent_config(tmp_path, urls)
    settings = {"flush_interval_s": 0.02, "flush_max_events": 50, **live}
    return Config(agent=base.agent, collector=base.collector, live=LiveSettings(**settings))


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        yield
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


async def test_events_reach_the_collector_in_order_beside_the_cdrs(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    source = LiveListSource("fs1", 300, chunk=50)
    plain = ListSource("csv", 100, key_prefix="csv")  # no live(): no live task for it
    agent = Agent(
        live_config(tmp_path, [peer.url]), sources=[source, plain], identity=identity, key=key
    )
    async with running(agent):
        source.feed.put_nowait(snapshot("s1", "s2"))
        for n in range(120):
            source.feed.put_nowait(started(f"c{n}"))
        source.feed.put_nowait(ended("s1"))
        await wait_until(lambda: len(got.events("fs1")) == 122, what="all live events")
        await wait_until(lambda: len(peer.state.cdrs) == 400, what="all CDRs")
        live = agent.live
        assert live is not None
        await wait_until(lambda: live.sent_events == 122, what="the last answer")
    events = got.events("fs1")
    assert call_ids(events) == ["snapshot"] + [f"c{n}" for n in range(120)] + ["s1"]
    assert all(m.stream == got.messages[0].stream for m in got.messages)
    assert [m.seq for m in got.messages] == list(range(1, len(got.messages) + 1))
    assert max(m.event_count for m in got.messages) <= 50  # flush_max_events
    assert {s.source for m in got.messages for s in m.sources} == {"fs1"}
    status = read_status_file(tmp_path)
    assert status is not None and status["running"] is False  # rewritten at stop
    assert status["sources"]["fs1"]["calls"] == 121  # s2 + c0..c119
    assert status["sent_events"] == 122 and status["dropped_events"] == 0


async def test_a_crashing_live_is_restarted_and_never_stops_cdrs(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    source = LiveListSource("fs1", 2000, chunk=20, pause=0.001)
    config = live_config(tmp_path, [peer.url])
    config = Config(
        agent=config.agent,
        collector=agent_config(tmp_path, [peer.url], backoff_max_s=0.05).collector,
        live=config.live,
    )
    agent = Agent(config, sources=[source], identity=identity, key=key)
    async with running(agent):
        source.feed.put_nowait(snapshot("a"))
        source.feed.put_nowait(started("b"))
        source.feed.put_nowait(SourceError("switch said: access denied"))
        await wait_until(lambda: source.live_calls == 2, what="live() called again")
        # After a failure, events are dropped until the restarted live() sends a snapshot.
        source.feed.put_nowait(started("lost"))
        source.feed.put_nowait(snapshot("a", "c"))
        source.feed.put_nowait(started("d"))
        await wait_until(lambda: len(got.events("fs1")) == 4, what="the resynchronised stream")
        await wait_until(lambda: len(peer.state.cdrs) == 2000, what="all CDRs")
    assert call_ids(got.events("fs1")) == ["snapshot", "b", "snapshot", "d"]
    assert source.starts == [None]  # CDR reading never restarted
    assert set(peer.state.cdrs.values()) == {1}


async def test_an_undelivered_message_is_dropped_and_the_next_snapshot_resyncs(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    got = attach_live(peer)
    got.script = [503]
    identity, key = identity_for(peer)
    source = LiveListSource("fs1")
    agent = Agent(live_config(tmp_path, [peer.url]), sources=[source], identity=identity, key=key)
    async with running(agent):
        source.feed.put_nowait(started("lost-1"))
        await wait_until(lambda: got.refused == 1, what="the refused message")
        source.feed.put_nowait(ended("lost-1"))  # depends on the lost message: dropped
        await asyncio.sleep(0.1)
        source.feed.put_nowait(snapshot("x"))
        source.feed.put_nowait(started("y"))
        await wait_until(lambda: len(got.events("fs1")) == 2, what="the resync")
        assert agent.live is not None
        assert agent.live.lost_messages == 1 and agent.live.buffer.dropped == 2
    assert call_ids(got.events("fs1")) == ["snapshot", "y"]


async def test_a_refused_message_is_dropped_too(tmp_path: Path, peer: CollectorPeer) -> None:
    got = attach_live(peer)
    got.script = [422, 409]
    identity, key = identity_for(peer)
    source = LiveListSource("fs1")
    agent = Agent(live_config(tmp_path, [peer.url]), sources=[source], identity=identity, key=key)
    async with running(agent):
        source.feed.put_nowait(snapshot("a"))
        await wait_until(lambda: got.refused == 1, what="the 422")
        source.feed.put_nowait(snapshot("b"))
        await wait_until(lambda: got.refused == 2, what="the 409")
        source.feed.put_nowait(snapshot("c"))
        await wait_until(lambda: len(got.messages) == 1, what="a delivered message")
    assert got.messages[0].sources[0].events[0]["calls"] == [{"call_id": "c", "caller": "9"}]


async def test_fails_over_to_the_next_collector_url(tmp_path: Path, peer: CollectorPeer) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    source = LiveListSource("fs1")
    config = live_config(tmp_path, [dead_url(), peer.url])
    agent = Agent(config, sources=[source], identity=identity, key=key)
    async with running(agent):
        for n in range(20):
            source.feed.put_nowait(snapshot(f"s{n}"))
            if got.messages:
                break
            await asyncio.sleep(0.2)
        await wait_until(lambda: len(got.messages) >= 1, what="a message on the second URL")
        assert agent.live is not None and agent.live.url == peer.url


async def test_live_can_be_turned_off(tmp_path: Path, peer: CollectorPeer) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    source = LiveListSource("fs1", 10)
    agent = Agent(
        live_config(tmp_path, [peer.url], enabled=False),
        sources=[source],
        identity=identity,
        key=key,
    )
    async with running(agent):
        await wait_until(lambda: len(peer.state.cdrs) == 10, what="the CDRs")
        assert agent.live is None and source.live_calls == 0
    assert got.messages == [] and not (tmp_path / STATUS_FILE).exists()


def test_live_options_are_validated(tmp_path: Path) -> None:
    config = parse_config("[live]\nflush_interval_s = 1\nqueue_max_events = 50\n")
    assert config.live == LiveSettings(flush_interval_s=1, queue_max_events=50)
    assert parse_config("").live == LiveSettings()
    for text, message in [
        ("[live]\nenabled = 'yes'\n", "live.enabled: must be true or false"),
        ("[live]\nflush_interval_s = 0\n", "live.flush_interval_s: must be greater than 0"),
        ("[live]\nflush_interval_s = 61\n", "live.flush_interval_s: must be at most 60"),
        ("[live]\nflush_max_events = 0\n", "live.flush_max_events: must be at least 1"),
        ("[live]\nqueue_size = 5\n", "live.queue_size: is not a known option"),
    ]:
        with pytest.raises(Exception, match=message.replace(".", r"\.")):
            parse_config(text)


def test_status_prints_the_live_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    channel = LiveChannel(
        LiveSettings(), urls=["http://c:8080"], agent_id="a", key=SigningKey.generate()
    )
    channel.accept("fs1", snapshot("a", "b"))
    channel.accept("fs1", started("c"))
    channel.accept("ast", started("x"))
    (tmp_path / STATUS_FILE).write_text(json.dumps(channel.status(running=True)))
    config = Config(agent=agent_config(tmp_path, []).agent)
    _print_live(config)
    out = capsys.readouterr().out
    assert out.startswith("live: 4 calls in progress, 0 messages sent, 0 events dropped")
    assert "  live fs1: 3 calls (live() not running)" in out
    (tmp_path / STATUS_FILE).write_text("{not json")
    _print_live(config)
    assert capsys.readouterr().out == ""


def test_plugin_helpers() -> None:
    class Plain:
        name = "p"

    class Native:
        name = "n"

        async def _block(self, args: Any) -> str:
            return "ok"

        def actions(self) -> dict[str, Any]:
            return {"block_ip": self._block, "unblock_ip": self._block, "bogus": 3}

        async def live(self) -> AsyncIterator[LiveEvent]:
            yield snapshot()

    assert not supports_live(Plain()) and supports_live(Native())
    assert native_actions(Plain()) == {} and not has_native_block(Plain())
    assert set(native_actions(Native())) == {"block_ip", "unblock_ip"}
    assert has_native_block(Native())
    assert msgpack.unpackb(msgpack.packb(to_wire(snapshot("a")))) == to_wire(snapshot("a"))


def test_protocol_doc_live_example_decodes_and_is_what_seal_live_makes() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    match = re.search(r"<!-- example:live-envelope -->\n```\n(.*?)\n```", doc, re.S)
    assert match, "docs/protocol.md has no example:live-envelope block"
    data = bytes.fromhex(match.group(1).replace("\n", " "))
    key = SigningKey(bytes(range(32)))
    envelope = wire.unseal(data, "live")
    key.verify_key.verify(envelope.payload, envelope.sig)
    message = wire.check_live_payload(wire.live_payload(envelope), envelope.signer)
    assert (message.agent, message.stream, message.seq) == ("agent-example", "5f2c9a1e", 3)
    assert message.sent_at == 1764064805000000
    events = [
        LiveEvent(
            "started",
            "a1b2",
            1764064800.25,
            {
                "caller": "1001",
                "callee": "33142278000",
                "direction": "outbound",
                "src_ip": "192.0.2.10",
            },
        ),
        LiveEvent("answered", "a1b2", 1764064804.0, {}),
    ]
    streams = [wire.LiveStream("fs1", [to_wire(e) for e in events])]
    assert message.sources == streams
    made = wire.seal_live("agent-example", "5f2c9a1e", 3, streams, key, sent_at=1764064805000000)
    assert made == data, "update the example in docs/protocol.md"


def test_every_live_option_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    for f in fields(LiveSettings):
        assert f"| `{f.name}` |" in doc, f"docs/agent.md does not document [live] {f.name}"


class NoLiveHere(ListSource):
    """A source whose plugin has live() but no live calls as configured (it ends at once)."""

    live_calls = 0

    async def live(self) -> AsyncIterator[LiveEvent]:
        self.live_calls += 1
        return
        yield  # an async generator that ends at once


async def test_a_live_that_ends_at_once_means_no_live_calls(
    tmp_path: Path, peer: CollectorPeer, capsys: pytest.CaptureFixture[str]
) -> None:
    got = attach_live(peer)
    identity, key = identity_for(peer)
    quiet = NoLiveHere("ast", 50)
    chatty = LiveListSource("fs1")
    config = live_config(tmp_path, [peer.url])
    agent = Agent(config, sources=[quiet, chatty], identity=identity, key=key)
    async with running(agent):
        live = agent.live
        assert live is not None
        await wait_until(lambda: live.buffer.queue("ast").unavailable, what="live_unavailable")
        chatty.feed.put_nowait(snapshot("a"))
        await wait_until(lambda: len(got.messages) == 1, what="the other source's snapshot")
        await wait_until(lambda: len(peer.state.cdrs) == 50, what="the CDRs")
        await asyncio.sleep(0.3)  # restarts would be due by now (backoff_max_s = 0.1)
        await live.write_status()
    assert quiet.live_calls == 1
    status = read_status_file(tmp_path)
    assert status is not None and status["sources"]["ast"]["unavailable"] is True
    _print_live(Config(agent=agent_config(tmp_path, []).agent))
    out = capsys.readouterr().out
    assert "  live ast: 0 calls (no live calls as configured)" in out
    assert "  live fs1: 1 calls (live() not running)" in out  # written at stop


async def test_the_same_refusal_is_logged_once(
    tmp_path: Path, peer: CollectorPeer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    got = attach_live(peer)
    got.script = [422, 422, 422]
    identity, key = identity_for(peer)
    source = LiveListSource("fs1")
    agent = Agent(live_config(tmp_path, [peer.url]), sources=[source], identity=identity, key=key)
    with caplog.at_level(logging.DEBUG, logger="cdrstats.agent.live"):
        async with running(agent):
            for n in range(4):
                source.feed.put_nowait(snapshot(f"s{n}"))
                await wait_until(lambda n=n: got.refused + len(got.messages) == n + 1)
    refusals = [r for r in caplog.records if r.getMessage() == "live_refused"]
    assert [r.levelno for r in refusals] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert len(got.messages) == 1


class FloodSource(ListSource):
    """live(): a snapshot, then started events as fast as the loop allows."""

    def __init__(self, name: str, total: int) -> None:
        super().__init__(name, total, chunk=25, pause=0.001)
        self.yielded = 0

    async def live(self) -> AsyncIterator[LiveEvent]:
        yield snapshot()
        while True:
            self.yielded += 1
            yield started(f"f{self.yielded}")
            if self.yielded % 100 == 0:
                await asyncio.sleep(0)


async def test_a_flood_of_events_with_a_slow_collector_stays_bounded(
    tmp_path: Path, peer: CollectorPeer
) -> None:
    got = attach_live(peer)
    got.delay = 0.2
    identity, key = identity_for(peer)
    source = FloodSource("fs1", 3000)
    config = live_config(tmp_path, [peer.url], queue_max_events=500, flush_max_events=100)
    agent = Agent(config, sources=[source], identity=identity, key=key)
    highest = 0
    async with running(agent):
        live = agent.live
        assert live is not None
        while len(peer.state.cdrs) < 3000:  # CDR reading goes on at its own pace
            highest = max(highest, live.buffer.pending)
            await asyncio.sleep(0.005)
        await wait_until(lambda: live.buffer.dropped > 10_000, what="events dropped")
        highest = max(highest, live.buffer.pending)
    assert highest <= 500
    assert source.starts == [None] and set(peer.state.cdrs.values()) == {1}
    assert got.messages and all(m.event_count <= 100 for m in got.messages)
