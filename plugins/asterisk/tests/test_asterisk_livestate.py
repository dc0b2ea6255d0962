"""Live call state from AMI events, as pure data (livestate.py)."""

from __future__ import annotations

from asterisk_ami_testkit import channel
from cdrstats_asterisk.livestate import LiveState


def ev(kind: str, uniqueid: str, linkedid: str, at: float, **fields: str) -> dict[str, str]:
    return {"Event": kind, "Uniqueid": uniqueid, "Linkedid": linkedid,
            "Timestamp": f"{at:.6f}", **fields}  # fmt: skip


def test_a_transfer_keeps_one_call_until_its_last_channel_hangs_up() -> None:
    state = LiveState(frozenset({"carrier"}))
    out = []
    out += state.apply(
        ev(
            "Newchannel",
            "1.1",
            "1.1",
            10,
            Channel="PJSIP/carrier-00000001",
            CallerIDNum="0612345678",
            Exten="200",
            ChannelState="4",
        )
    )
    out += state.apply(ev("Newchannel", "1.2", "1.1", 11, Channel="PJSIP/200-00000002"))
    out += state.apply(ev("DialEnd", "1.1", "1.1", 15, DialStatus="ANSWER"))
    # 200 transfers to 300: a third channel joins the same linkedid, 200 leaves
    out += state.apply(ev("Newchannel", "1.3", "1.1", 40, Channel="PJSIP/300-00000003"))
    out += state.apply(ev("Newstate", "1.3", "1.1", 45, ChannelState="6"))
    out += state.apply(ev("Hangup", "1.2", "1.1", 46, Cause="16"))
    assert [(e.kind, e.call_id) for e in out] == [("started", "1.1"), ("answered", "1.1")]
    assert out[1].at == 15 and out[1].data["direction"] == "inbound"
    assert out[1].data["trunk"] == "carrier"
    last = state.apply(ev("Hangup", "1.1", "1.1", 90, Cause="17"))
    assert last == []  # 300 still talks
    (ended,) = state.apply(ev("Hangup", "1.3", "1.1", 91, Cause="16"))
    assert (ended.kind, ended.call_id, ended.at) == ("ended", "1.1", 91)
    assert ended.data["hangup_cause"] == 17  # the cause of the call's first channel
    assert ended.data["start"] == 10 and ended.data["answer"] == 15
    assert state.calls == {} and state.channels == {}


def test_unanswered_call_and_unknown_values() -> None:
    state = LiveState()
    (started,) = state.apply(
        ev(
            "Newchannel",
            "2.1",
            "2.1",
            5,
            Channel="SIP/100-0001",
            CallerIDNum="<unknown>",
            CallerIDName="<unknown>",
            Exten="101",
        )
    )
    assert started.data["caller"] == "" and started.data["callee"] == "101"
    assert state.apply(ev("DialEnd", "2.1", "2.1", 9, DialStatus="NOANSWER")) == []
    (ended,) = state.apply(ev("Hangup", "2.1", "2.1", 30, Cause="19"))
    assert ended.data["state"] == "ringing" and ended.data["hangup_cause"] == 19
    assert "answer" not in ended.data


def test_events_for_unknown_channels_are_harmless() -> None:
    state = LiveState()
    assert state.apply(ev("Hangup", "9.9", "9.9", 1, Cause="16")) == []
    assert state.apply(ev("DialEnd", "9.9", "9.9", 1, DialStatus="ANSWER")) == []
    assert state.apply({"Event": "VarSet", "Variable": "X"}) == []
    # a Newstate for a channel we missed teaches it (started, then answered)
    kinds = [e.kind for e in state.apply(ev("Newstate", "9.8", "9.8", 2, ChannelState="6"))]
    assert kinds == ["started", "answered"]


def test_snapshot_replaces_the_state() -> None:
    state = LiveState()
    state.apply(ev("Newchannel", "old.1", "old.1", 1))
    listing = [
        {"Event": "CoreShowChannel", **channel("5.2", "PJSIP/carrier-2", linkedid="5.1",
                                               duration="00:00:30")},
        {"Event": "CoreShowChannel", **channel("5.1", "PJSIP/1000-1", duration="00:02:00")},
        {"Event": "CoreShowChannelsComplete", "EventList": "Complete", "ListItems": "2"},
    ]  # fmt: skip
    snap = state.snapshot(listing, at=1000.0)
    assert snap.kind == "snapshot"
    (call,) = snap.calls
    assert call["call_id"] == "5.1" and call["start"] == 880.0
    assert call["caller"] == "1000" and call["state"] == "answered"
    assert set(state.channels) == {"5.1", "5.2"}
    (ended,) = [e for u in ("5.2", "5.1") for e in state.apply(ev("Hangup", u, "5.1", 1001))]
    assert ended.kind == "ended" and "hangup_cause" not in ended.data
