"""Live calls over AMI against a protocol-faithful peer on a real TCP socket
(asterisk_ami_testkit.py).

Streams played by the peer: the recorded reference stream (panoramisk's fixture, Asterisk 11,
read from ../shared/reference) and streams/pjsip_outbound_call.ami, written by hand after
Asterisk 13+'s documented event fields (Linkedid, DialBegin/DialEnd, Timestamp).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from asterisk_ami_testkit import AmiPeer, channel, recorded_events
from asterisk_testkit import REFERENCE, make_source
from cdrstats_agent.errors import SourceError
from cdrstats_agent.options import Options
from cdrstats_agent.plugin import LiveEvent
from cdrstats_asterisk.ami import AmiAuthError, AmiConfig, AmiLive
from cdrstats_asterisk.plugin import AsteriskLiveSource

pytestmark = pytest.mark.timeout(60)

STREAMS = Path(__file__).resolve().parent / "streams"
FAST = {"backoff_min": 0.05, "backoff_max": 0.2, "reply_timeout": 0.5, "connect_timeout": 1.0}


@pytest.fixture
async def peer() -> AsyncIterator[AmiPeer]:
    p = AmiPeer()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def config(peer: AmiPeer, **extra: object) -> AmiConfig:
    table = {"port": peer.port, "username": "cdrstats", "secret": "s3cret", **FAST, **extra}
    return AmiConfig.from_options(Options(table, "ami"), frozenset({"carrier"}))


async def wait_until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    async with asyncio.timeout(deadline_s):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.02)


class Events:
    """A running live() iterator whose events the test awaits one at a time."""

    def __init__(self, agen: AsyncIterator[LiveEvent]) -> None:
        self.agen = agen
        self.queue: asyncio.Queue[LiveEvent] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        async for event in self.agen:
            self.queue.put_nowait(event)

    async def next(self, kind: str | None = None, deadline_s: float = 10.0) -> LiveEvent:
        """The next event (of `kind`, skipping others)."""
        async with asyncio.timeout(deadline_s):
            while True:
                event = await self.queue.get()
                if kind is None or event.kind == kind:
                    return event

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=10)  # bounded, and our own cancel still works
        assert self.task.done(), "live() did not stop when cancelled"


async def test_snapshot_on_login_then_call_events(peer: AmiPeer) -> None:
    peer.channels = [
        channel("1764000000.1", "PJSIP/1000-0000000a", caller="1000"),
        channel("1764000000.2", "PJSIP/carrier-0000000b", linkedid="1764000000.1"),
        channel("1764000000.7", "PJSIP/1001-0000000c", state="5", caller="1001", exten="1002",
                duration="00:00:04"),
    ]  # fmt: skip
    source = make_source(
        {
            "store": "csv",
            "path": "/nonexistent/Master.csv",
            "trunks": ["carrier"],
            "ami": {"port": peer.port, "username": "cdrstats", "secret": "s3cret"},
        }
    )
    assert isinstance(source, AsteriskLiveSource)
    events = Events(source.live())  # fmt: skip
    try:
        snap = await events.next()
        assert snap.kind == "snapshot"
        calls = {c["call_id"]: c for c in snap.calls}
        assert set(calls) == {"1764000000.1", "1764000000.7"}
        up = calls["1764000000.1"]
        assert (up["state"], up["caller"], up["callee"]) == ("answered", "1000", "0612345678")
        assert (up["direction"], up["trunk"]) == ("outbound", "carrier")
        assert snap.at - up["start"] == pytest.approx(65, abs=2)
        ringing = calls["1764000000.7"]
        assert ringing["state"] == "ringing" and ringing["direction"] == "internal"

        await peer.play(recorded_events(STREAMS / "pjsip_outbound_call.ami"))
        started = await events.next()
        assert (started.kind, started.call_id) == ("started", "1764115200.1")
        assert started.at == 1764115200.1  # the event's Timestamp
        assert started.data["caller_name"] == 'Zoë "Z" Müller'
        assert started.data["state"] == "ringing"
        answered = await events.next()
        assert (answered.kind, answered.call_id) == ("answered", "1764115200.1")
        assert answered.data["answer"] == 1764115205.0
        assert (answered.data["direction"], answered.data["trunk"]) == ("outbound", "carrier")
        ended = await events.next()
        assert (ended.kind, ended.call_id) == ("ended", "1764115200.1")
        assert ended.data["hangup_cause"] == 16
        assert ended.at == 1764115265.01
        assert events.queue.empty()
    finally:
        await events.close()


async def test_recorded_panoramisk_stream(peer: AmiPeer) -> None:
    """The reference stream (Asterisk 11: no Linkedid, so each channel is its own call)."""
    recorded = recorded_events(REFERENCE / "ami_stream_panoramisk_originate_with_events.yaml")
    new = [dict(e)["Uniqueid"] for e in recorded if dict(e)["Event"] == "Newchannel"]
    hangups = {dict(e)["Uniqueid"]: int(dict(e)["Cause"]) for e in recorded
               if dict(e)["Event"] == "Hangup"}  # fmt: skip
    ups = {dict(e)["Uniqueid"] for e in recorded
           if dict(e)["Event"] == "Newstate" and dict(e)["ChannelState"] == "6"}  # fmt: skip
    live = AmiLive("pbx", config(peer))
    events = Events(live.events())
    try:
        assert (await events.next()).kind == "snapshot"
        await peer.play(recorded)
        await peer.send_event({"Event": "Newchannel", "Uniqueid": "end-marker", "Channel": "X/y"})
        got: list[LiveEvent] = []
        while not got or got[-1].call_id != "end-marker":
            got.append(await events.next())
        got.pop()
    finally:
        await events.close()
    assert [e.call_id for e in got if e.kind == "started"] == new
    assert {e.call_id for e in got if e.kind == "answered"} == ups & set(new)
    ended = {e.call_id: e.data.get("hangup_cause") for e in got if e.kind == "ended"}
    assert ended == {u: c for u, c in hangups.items() if u in new}
    assert live.state.calls.keys() == {"end-marker"} | (set(new) - set(hangups))


async def test_bad_credentials_are_a_clear_error(
    peer: AmiPeer, caplog: pytest.LogCaptureFixture
) -> None:
    live = AmiLive("pbx", config(peer, secret="wrong"))
    with pytest.raises(AmiAuthError, match="login refused: Authentication failed"):
        await live.check()
    caplog.set_level(logging.ERROR, logger="cdrstats.plugins.asterisk.ami")
    events = Events(live.events())
    try:
        await wait_until(lambda: peer.failed_logins >= 3)  # retried, at the longest backoff
    finally:
        await events.close()
    assert events.queue.empty()
    assert "login refused: Authentication failed" in live.last_error
    assert any(r.getMessage() == "ami_login_failed" for r in caplog.records)


async def test_unreachable_manager(peer: AmiPeer) -> None:
    port = peer.port
    await peer.stop()
    with pytest.raises(SourceError, match=rf"cdrstats@127\.0\.0\.1:{port}: cannot connect"):
        await AmiLive("pbx", config(peer)).check()


async def test_peer_restart_reconnects_with_a_new_snapshot(peer: AmiPeer) -> None:
    peer.channels = [channel("1.1", "PJSIP/1000-00000001")]
    live = AmiLive("pbx", config(peer))
    events = Events(live.events())
    try:
        first = await events.next("snapshot")
        assert [c["call_id"] for c in first.calls] == ["1.1"]
        peer.channels = [channel("2.1", "PJSIP/1001-00000002")]  # changed while we were away
        await peer.restart()
        second = await events.next("snapshot")
        assert [c["call_id"] for c in second.calls] == ["2.1"]
        assert live.sessions == 2 and peer.logins == 2
        await peer.send_event(
            channel("2.1", "PJSIP/1001-00000002") | {"Event": "Hangup", "Cause": "17"}
        )
        ended = await events.next()
        assert (ended.kind, ended.call_id, ended.data["hangup_cause"]) == ("ended", "2.1", 17)
    finally:
        await events.close()


async def test_a_peer_that_stops_answering_is_dropped_and_retried(peer: AmiPeer) -> None:
    live = AmiLive("pbx", config(peer, ping_interval=0.1, reply_timeout=0.2))
    events = Events(live.events())
    try:
        await events.next("snapshot")
        peer.mute = True  # the socket stays open, nothing answers
        await wait_until(lambda: "no answer to Ping" in live.last_error)
        pings = sum(1 for a in peer.actions if a.get("Action") == "Ping")
        assert pings >= 1
        await wait_until(lambda: "no answer to Login" in live.last_error)
        peer.mute = False
        await events.next("snapshot")
        assert live.sessions == 2
    finally:
        await events.close()


async def test_periodic_snapshots(peer: AmiPeer) -> None:
    live = AmiLive("pbx", config(peer, snapshot_interval=0.1))
    events = Events(live.events())
    try:
        await events.next("snapshot")
        peer.channels = [channel("9.1", "PJSIP/1000-00000009")]
        again = await events.next("snapshot")
        while not again.calls:
            again = await events.next("snapshot")
        assert [c["call_id"] for c in again.calls] == ["9.1"]
        assert live.sessions == 1
    finally:
        await events.close()


async def test_source_check_reports_ami_without_blocking_cdrs(
    peer: AmiPeer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="cdrstats.plugins.asterisk")
    (tmp_path / "Master.csv").write_text("")
    options = {"store": "csv", "path": str(tmp_path / "Master.csv"),
               "ami": {"port": peer.port, "username": "cdrstats", "secret": "nope"}}  # fmt: skip
    await make_source(options).check()  # the CDR store is fine: no exception
    (record,) = [r for r in caplog.records if r.getMessage() == "ami_check_failed"]
    fields = record.__dict__["cdrstats_fields"]
    assert "login refused: Authentication failed" in fields["error"]
    assert peer.failed_logins == 1
    options["ami"] = {"port": peer.port, "username": "cdrstats", "secret": "s3cret"}
    await make_source(options).check()
    assert peer.logins == 1
    options["path"] = str(tmp_path / "missing-dir" / "Master.csv")
    with pytest.raises(SourceError, match="does not exist"):
        await make_source(options).check()


async def test_shutdown_event_reconnects(peer: AmiPeer) -> None:
    live = AmiLive("pbx", config(peer))
    events = Events(live.events())
    try:
        await events.next("snapshot")
        await peer.send_event({"Event": "Shutdown", "Privilege": "system,all",
                               "Shutdown": "Cleanly", "Restart": "True"})  # fmt: skip
        await wait_until(lambda: "Shutdown" in live.last_error)
        await events.next("snapshot")  # the peer still listens: logged in again
        assert live.sessions == 2
    finally:
        await events.close()
