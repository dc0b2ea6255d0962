"""Live calls from the dialog module: `dlg.list` / `dlg.stats_active` over JSON-RPC.

`calls_from_dialogs()` and `diff()` are pure: a `dlg.list` answer becomes {call_id: data}, and
two successive views become started / answered / ended events. `DialogPoller.events()` polls
at `live_interval_s`, sends a `snapshot` on (re)connect and every `snapshot_interval_s`, and
keeps retrying with backoff while Kamailio's RPC is unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from cdrstats_agent.logs import get_logger
from cdrstats_agent.plugin import LiveEvent

from .pairing import natural_key
from .records import valid_ip
from .rpc import RpcClient, RpcError, RpcUnavailable

log = get_logger("cdrstats.plugins.kamailio")

# dialog states (dialog module): 1 unconfirmed, 2 early, 3 confirmed without ACK, 4 confirmed,
# 5 deleted (ended, kept a little while in memory).
LIVE_STATES = {1: "ringing", 2: "ringing", 3: "answered", 4: "answered"}
BACKOFF_MAX_S = 30.0


def uri_user(uri: Any) -> str:
    """`1001` from `sip:1001@host:5060;transport=udp` (the whole text if it has no user)."""
    text = str(uri or "").strip().strip("<>")
    for scheme in ("sips:", "sip:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    user, at, _ = text.partition("@")
    return (user if at else text).split(";", 1)[0]


def _variables(dialog: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    items = dialog.get("variables") or []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict):
            out.update({str(k): str(v) for k, v in item.items()})
    return out


def calls_from_dialogs(dialogs: Any) -> dict[str, dict[str, Any]]:
    """Live calls by call id (Call-ID;from-tag) from a `dlg.list` result; ended ones left out."""
    calls: dict[str, dict[str, Any]] = {}
    for d in dialogs if isinstance(dialogs, list) else []:
        if not isinstance(d, dict):
            continue
        state = LIVE_STATES.get(int(d.get("state") or 0))
        callid = str(d.get("call-id") or "")
        caller = d.get("caller")
        tag = str(caller.get("tag") or "") if isinstance(caller, dict) else ""
        if state is None or not callid or not tag:
            continue
        data: dict[str, Any] = {
            "caller": uri_user(d.get("from_uri")),
            "callee": uri_user(d.get("to_uri")),
            "state": state,
            "direction": "unknown",
        }
        if d.get("init_ts"):
            data["start"] = float(d["init_ts"])
        if state == "answered" and d.get("start_ts"):
            data["answer"] = float(d["start_ts"])
        src_ip = valid_ip(_variables(d).get("src_ip", ""))
        if src_ip:
            data["src_ip"] = src_ip
        calls[natural_key(callid, tag)] = data
    return calls


def diff(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]], at: float
) -> list[LiveEvent]:
    """Events that turn the live view `before` into `after`."""
    events: list[LiveEvent] = []
    for call_id, data in after.items():
        old = before.get(call_id)
        if old is None:
            events.append(LiveEvent("started", call_id, data.get("start", at), dict(data)))
            if data["state"] == "answered":
                events.append(LiveEvent("answered", call_id, data.get("answer", at), dict(data)))
        elif old.get("state") != "answered" and data["state"] == "answered":
            events.append(LiveEvent("answered", call_id, data.get("answer", at), dict(data)))
    for call_id, data in before.items():
        if call_id not in after:
            events.append(LiveEvent("ended", call_id, at, dict(data)))
    return events


def snapshot(calls: Mapping[str, Mapping[str, Any]], at: float, stats: Any) -> LiveEvent:
    return LiveEvent(
        "snapshot",
        at=at,
        data={"stats": stats} if isinstance(stats, dict) else {},
        calls=tuple({"call_id": cid, **data} for cid, data in sorted(calls.items())),
    )


class DialogPoller:
    def __init__(
        self, source: str, rpc: RpcClient, interval_s: float, snapshot_interval_s: float
    ) -> None:
        self.source = source
        self.rpc = rpc
        self.interval_s = interval_s
        self.snapshot_interval_s = snapshot_interval_s

    async def events(self) -> AsyncIterator[LiveEvent]:
        calls: dict[str, dict[str, Any]] = {}
        synced = False
        last_snapshot = 0.0
        backoff = self.interval_s
        while True:
            try:
                stats = await self.rpc.call("dlg.stats_active")
                idle = isinstance(stats, dict) and stats.get("all") == 0
                fresh: dict[str, dict[str, Any]] = {}
                if not (idle and synced and not calls):
                    fresh = calls_from_dialogs(await self.rpc.call("dlg.list"))
            except (RpcUnavailable, RpcError) as exc:
                loud = isinstance(exc, RpcError)
                (log.error if loud else log.warning)(
                    "live_rpc_failed", source=self.source, error=str(exc), retry_s=backoff
                )
                synced = False
                await asyncio.sleep(backoff)
                backoff = BACKOFF_MAX_S if loud else min(BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = self.interval_s
            now = time.time()
            if not synced:
                log.info("live_synced", source=self.source, calls=len(fresh))
                calls = fresh
                synced = True
                last_snapshot = now
                yield snapshot(calls, now, stats)
            else:
                for event in diff(calls, fresh, now):
                    yield event
                calls = fresh
                if now - last_snapshot >= self.snapshot_interval_s:
                    last_snapshot = now
                    yield snapshot(calls, now, stats)
            await asyncio.sleep(self.interval_s)
