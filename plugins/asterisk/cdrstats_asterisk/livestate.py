"""Live calls from AMI events: pure state, no I/O (ami.py feeds it messages).

Channels are kept by `Uniqueid` and grouped into calls by `Linkedid` (Asterisk 12+; older
servers send no Linkedid, so each channel is its own call). A call is `started` with its
first channel, `answered` when one of its channels goes Up (`Newstate` ChannelState 6, or
`DialEnd` DialStatus ANSWER), and `ended` when its last channel hangs up, with the Q.850
`Cause` of the `Hangup` of its first channel (else of the last one). `CoreShowChannels`
lists rebuild the whole state (`snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdrstats_agent.normalize import channel_peer
from cdrstats_agent.plugin import LiveEvent

UP = "6"


@dataclass
class Channel:
    uniqueid: str
    call_id: str
    name: str
    caller: str = ""
    caller_name: str = ""
    exten: str = ""
    accountcode: str = ""
    up: bool = False
    cause: int | None = None


@dataclass
class Call:
    call_id: str
    start: float
    channels: dict[str, Channel] = field(default_factory=dict)
    first: str = ""
    answer: float | None = None
    cause: int | None = None


def _text(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key, "")
    if isinstance(value, list):  # a header repeated: keep the last
        value = value[-1] if value else ""
    text = str(value).strip()
    return "" if text in ("<unknown>", "<null>") else text


def _duration(text: str) -> float | None:
    """CoreShowChannel `Duration` (HH:MM:SS) in seconds."""
    parts = text.split(":")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return float(int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2]))
    return None


class LiveState:
    """Current calls of one Asterisk server."""

    def __init__(self, trunks: frozenset[str] = frozenset()) -> None:
        self.trunks = trunks
        self.calls: dict[str, Call] = {}
        self.channels: dict[str, Channel] = {}

    @staticmethod
    def when(message: Mapping[str, Any]) -> float:
        """The event's `Timestamp` (manager.conf timestampevents=yes), else now."""
        stamp = _text(message, "Timestamp")
        try:
            return float(stamp) if stamp else time.time()
        except ValueError:
            return time.time()

    # --- events -------------------------------------------------------------------------

    def apply(self, message: Mapping[str, Any]) -> list[LiveEvent]:
        """The live events one AMI event causes (usually none or one)."""
        kind = _text(message, "Event").lower()
        if kind == "newchannel":
            return self._new_channel(message)
        if kind == "newstate":
            return self._new_state(message)
        if kind == "dialend":
            if _text(message, "DialStatus").upper() == "ANSWER":
                return self._answered(_text(message, "Uniqueid"), self.when(message))
            return []
        if kind == "hangup":
            return self._hangup(message)
        return []

    def _channel_from(self, message: Mapping[str, Any]) -> Channel:
        uniqueid = _text(message, "Uniqueid")
        return Channel(
            uniqueid=uniqueid,
            call_id=_text(message, "Linkedid") or uniqueid,
            name=_text(message, "Channel"),
            caller=_text(message, "CallerIDNum"),
            caller_name=_text(message, "CallerIDName"),
            exten=_text(message, "Exten"),
            accountcode=_text(message, "AccountCode"),
            up=_text(message, "ChannelState") == UP,
        )

    def _new_channel(self, message: Mapping[str, Any]) -> list[LiveEvent]:
        channel = self._channel_from(message)
        if not channel.uniqueid or channel.uniqueid in self.channels:
            return []
        at = self.when(message)
        self.channels[channel.uniqueid] = channel
        call = self.calls.get(channel.call_id)
        events: list[LiveEvent] = []
        if call is None:
            call = Call(channel.call_id, start=at, first=channel.uniqueid)
            self.calls[call.call_id] = call
            call.channels[channel.uniqueid] = channel
            events.append(LiveEvent("started", call.call_id, at, self.describe(call)))
        else:
            call.channels[channel.uniqueid] = channel
        if channel.up and call.answer is None:
            events.extend(self._answered(channel.uniqueid, at))
        return events

    def _new_state(self, message: Mapping[str, Any]) -> list[LiveEvent]:
        channel = self.channels.get(_text(message, "Uniqueid"))
        if channel is None:
            return self._new_channel(message)  # a channel we missed: learn it now
        if _text(message, "CallerIDNum") and not channel.caller:
            channel.caller = _text(message, "CallerIDNum")
        if _text(message, "ChannelState") == UP:
            return self._answered(channel.uniqueid, self.when(message))
        return []

    def _answered(self, uniqueid: str, at: float) -> list[LiveEvent]:
        channel = self.channels.get(uniqueid)
        if channel is None:
            return []
        channel.up = True
        call = self.calls.get(channel.call_id)
        if call is None or call.answer is not None:
            return []
        call.answer = at
        return [LiveEvent("answered", call.call_id, at, self.describe(call))]

    def _hangup(self, message: Mapping[str, Any]) -> list[LiveEvent]:
        channel = self.channels.pop(_text(message, "Uniqueid"), None)
        if channel is None:
            return []
        cause = _text(message, "Cause")
        channel.cause = int(cause) if cause.isdigit() else None
        call = self.calls.get(channel.call_id)
        if call is None:
            return []
        call.channels.pop(channel.uniqueid, None)
        if channel.uniqueid == call.first or call.cause is None:
            call.cause = channel.cause if channel.cause is not None else call.cause
        if call.channels:
            return []
        del self.calls[call.call_id]
        at = self.when(message)
        data = self.describe(call, last=channel)
        if call.cause is not None:
            data["hangup_cause"] = call.cause
        return [LiveEvent("ended", call.call_id, at, data)]

    # --- snapshot -----------------------------------------------------------------------

    def snapshot(self, listing: Sequence[Mapping[str, Any]], at: float) -> LiveEvent:
        """Replace the state with a CoreShowChannels listing (CoreShowChannel events)."""
        self.calls.clear()
        self.channels.clear()
        for item in listing:
            if _text(item, "Event").lower() != "coreshowchannel":
                continue
            channel = self._channel_from(item)
            if not channel.uniqueid:
                continue
            seconds = _duration(_text(item, "Duration"))
            start = at - seconds if seconds is not None else at
            self.channels[channel.uniqueid] = channel
            call = self.calls.get(channel.call_id)
            if call is None:
                call = Call(channel.call_id, start=start, first=channel.uniqueid)
                self.calls[call.call_id] = call
            elif start < call.start or channel.uniqueid == channel.call_id:
                call.start = min(call.start, start)
                if channel.uniqueid == channel.call_id:
                    call.first = channel.uniqueid
            call.channels[channel.uniqueid] = channel
            if channel.up and call.answer is None:
                call.answer = at  # answered before we looked: the moment is unknown
        calls = tuple(
            {"call_id": call.call_id, **self.describe(call)} for call in self.calls.values()
        )
        return LiveEvent("snapshot", "", at, calls=calls)

    # --- description --------------------------------------------------------------------

    def describe(self, call: Call, last: Channel | None = None) -> dict[str, Any]:
        first = call.channels.get(call.first) or last or next(iter(call.channels.values()))
        data: dict[str, Any] = {
            "caller": first.caller,
            "caller_name": first.caller_name,
            "callee": first.exten,
            "accountcode": first.accountcode,
            "state": "answered" if call.answer is not None else "ringing",
            "start": call.start,
        }
        if call.answer is not None:
            data["answer"] = call.answer
        peers = [channel_peer(c.name) for c in call.channels.values() if c is not first]
        src_peer = channel_peer(first.name)
        direction = "unknown"
        trunk: str | None = None
        if self.trunks:
            if src_peer in self.trunks:
                direction, trunk = "inbound", src_peer
            elif any(p in self.trunks for p in peers):
                direction = "outbound"
                trunk = next(p for p in peers if p in self.trunks)
            else:
                direction = "internal"
        else:
            trunk = next((p for p in peers if p), None) or src_peer
        data["direction"] = direction
        if trunk:
            data["trunk"] = trunk
        return data
