"""The live channel: calls in progress streamed to the collector, next to the CDR path.

    channel = LiveChannel(settings, urls=..., agent_id=..., key=..., state_dir=...)
    tasks: channel.run_source(source) for each source with live(), channel.run_sender()

Nothing here is spooled and nothing here can slow CDR collection down:

- each source's `live()` runs in its own task (`run_source`); its events are converted to the
  wire form at once (`wire.live_event_to_wire`, bad fields left out and logged) and put in a
  `LiveBuffer` without ever waiting. A `live()` that raises or ends is logged and called again
  with backoff; the CDR reading of the same source is not touched.
- the `LiveBuffer` keeps, per source, the events not sent yet, bounded by `queue_max_events`.
  A snapshot replaces everything pending for its source (it supersedes it). When events are
  lost — the queue overflowed, a message could not be delivered, `live()` failed — the source
  is marked *resync*: its events are dropped until its next snapshot, which the plugin sends
  on (re)connect and periodically. The collector's state is therefore never built from a
  stream with a hole in it.
- the sender (`run_sender`) waits until `flush_max_events` events wait or the oldest waited
  `flush_interval_s`, then posts one signed `live` message (docs/protocol.md, "Live calls")
  with the events of every source to `POST /api/v1/live`, one message at a time, on the
  collector URLs of the uplink with the same failover. Any failure loses the message (the
  sources in it go to resync) and backs off; live data is not worth retrying late.

Failed registrations (`AuthFailure`, yielded by `live()` between its events) take the same
road but not the same rules: they do not describe the calls in progress, so they are queued
apart (bounded by `queue_max_events` too, the newest dropped and counted on overflow), are
never superseded by a snapshot and are forwarded even while their source awaits one; a
message that is not delivered loses them (detection data, docs/protocol.md).

`cdrstats-agent status` reads `state_dir/live.json`, written every few seconds by the running
agent (calls in progress per source, messages sent, events dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from nacl.signing import SigningKey

from . import wire
from .config import LiveSettings
from .errors import SourceError
from .logs import get_logger
from .plugin import AuthFailure, LiveEvent, LiveSource, Source, supports_live
from .uplink import error_text

log = get_logger("cdrstats.agent.live")

LIVE_PATH = "/api/v1/live"
STATUS_FILE = "live.json"
STATUS_EVERY_S = 5.0
SEND_TIMEOUT_MAX_S = 10.0
"""A live message older than this is not worth delivering: the request gives up."""
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 10.0
RESTART_BASE_S = 1.0
PROBLEM_LOG_EVERY_S = 60.0


# --- the buffer (no I/O) -------------------------------------------------------------------------


@dataclass(slots=True)
class _SourceQueue:
    events: list[dict[str, Any]] = field(default_factory=list)
    weight: int = 0
    """Events pending, a snapshot counting as one."""
    resync: bool = False
    """Events are dropped until the next snapshot (something was lost)."""
    calls: set[str] = field(default_factory=set)
    """Calls in progress as the source last described them (for status)."""
    running: bool = False
    unavailable: bool = False
    """live() ended at once, without an event: the source has no live calls as configured."""
    dropped: int = 0
    auth_failures: int = 0
    """Failed registrations the source reported (queued or not)."""


class LiveBuffer:
    """Pending live events per source, with coalescing, bounds and resynchronisation."""

    def __init__(self, queue_max_events: int = 10000) -> None:
        self.queue_max_events = queue_max_events
        self._queues: dict[str, _SourceQueue] = {}
        self._oldest: float | None = None
        self._changed = asyncio.Event()
        self._rotation = 0
        self.dropped = 0
        """Events lost in all (overflow, undelivered messages, waiting for a snapshot)."""
        self.coalesced = 0
        """Events not sent because a later snapshot of their source replaced them."""
        self._auth: deque[dict[str, Any]] = deque()
        self.auth_dropped = 0
        """Failed registrations lost (queue full, message not delivered)."""

    def queue(self, source: str) -> _SourceQueue:
        found = self._queues.get(source)
        if found is None:
            found = self._queues[source] = _SourceQueue()
        return found

    @property
    def pending(self) -> int:
        return sum(q.weight for q in self._queues.values()) + len(self._auth)

    @property
    def pending_auth(self) -> int:
        return len(self._auth)

    def add_auth(self, source: str, failure: dict[str, Any]) -> bool:
        """Queue one failed registration (wire form); False when the queue is full."""
        self.queue(source).auth_failures += 1
        if len(self._auth) >= self.queue_max_events:
            self.auth_dropped += 1
            if self.auth_dropped == 1 or self.auth_dropped % 1000 == 0:
                log.warning(
                    "live_auth_failures_dropped",
                    source=source,
                    dropped=self.auth_dropped,
                    hint="more failed registrations than the collector takes: newest dropped",
                )
            return False
        if self.pending == 0 or self._oldest is None:
            self._oldest = time.monotonic()
        self._auth.append(failure)
        self._changed.set()
        return True

    def take_auth(self, max_count: int) -> list[dict[str, Any]]:
        """Up to `max_count` queued failed registrations, oldest first (call before `take`)."""
        n = min(max(0, max_count), len(self._auth))
        return [self._auth.popleft() for _ in range(n)]

    @property
    def oldest_at(self) -> float | None:
        """`time.monotonic()` when the oldest pending event arrived (None when none)."""
        return self._oldest if self.pending else None

    def sources(self) -> dict[str, _SourceQueue]:
        return dict(self._queues)

    def add(self, source: str, event: dict[str, Any]) -> bool:
        """Queue one wire event; False when it was dropped (overflow, or awaiting a snapshot)."""
        q = self.queue(source)
        was_empty = self.pending == 0
        kind = event["kind"]
        if kind == "snapshot":
            q.calls = {c["call_id"] for c in event["calls"]}
        elif kind == "ended":
            q.calls.discard(event["call_id"])
        else:
            q.calls.add(event["call_id"])
        if kind == "snapshot":
            self.coalesced += len(q.events)
            q.events, q.weight, q.resync = [event], 1, False
        elif q.resync:
            self._drop(q, 1)
            return False
        elif q.weight >= self.queue_max_events:
            log.warning(
                "live_overflow",
                source=source,
                pending=q.weight,
                hint="events dropped until the source's next snapshot",
            )
            self.lose(source)
            self._drop(q, 1)
            return False
        else:
            q.events.append(event)
            q.weight += 1
        if was_empty or self._oldest is None:
            self._oldest = time.monotonic()
        self._changed.set()
        return True

    def _drop(self, q: _SourceQueue, n: int) -> None:
        q.dropped += n
        self.dropped += n

    def lose(self, source: str, *, keep_snapshot: bool = False, lost: int = 0) -> None:
        """Events of `source` were lost: drop what depends on them and await a snapshot.

        `lost` counts events already taken that were lost (an undelivered message). With
        `keep_snapshot`, pending events that start with a snapshot are kept (they do not
        depend on what was lost: the snapshot replaces it).
        """
        q = self.queue(source)
        self._drop(q, lost)
        if keep_snapshot and q.events and q.events[0]["kind"] == "snapshot":
            return
        self._drop(q, len(q.events))
        q.events, q.weight, q.resync = [], 0, True

    def expect_snapshot(self, source: str) -> None:
        """Drop the source's next events until a snapshot (keeps what is already pending)."""
        self.queue(source).resync = True

    def take(self, max_events: int) -> list[wire.LiveStream]:
        """Up to `max_events` pending events (a snapshot counts as one), grouped by source.

        Sources are served in turn, starting with a different one at each call.
        """
        names = [n for n, q in self._queues.items() if q.events]
        if not names:
            return []
        start = self._rotation % len(names)
        self._rotation += 1
        budget = max(1, max_events)
        taken: list[wire.LiveStream] = []
        for name in names[start:] + names[:start]:
            if budget <= 0:
                break
            q = self._queues[name]
            part, q.events = q.events[:budget], q.events[budget:]
            q.weight -= len(part)
            budget -= len(part)
            taken.append(wire.LiveStream(name, part))
        if self.pending:
            self._oldest = 0.0  # what is left waited at least as long: due at once
        else:
            self._oldest = None
            self._changed.clear()
        return taken

    async def wait_batch(self, max_events: int, interval_s: float) -> None:
        """Return when `max_events` events wait or the oldest waited `interval_s`."""
        while True:
            pending = self.pending
            if pending >= max_events:
                return
            if pending:
                oldest = time.monotonic() if self._oldest is None else self._oldest
                left = oldest + interval_s - time.monotonic()
                if left <= 0:
                    return
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
            else:
                self._changed.clear()
                await self._changed.wait()


# --- the channel (I/O) ------------------------------------------------------------------------


class LiveChannel:
    """Sources' `live()` → `LiveBuffer` → signed messages to the collector."""

    def __init__(
        self,
        settings: LiveSettings,
        *,
        urls: list[str],
        agent_id: str,
        key: SigningKey,
        state_dir: Path | None = None,
        timeout_s: float = 30.0,
        backoff_max_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the live channel needs at least one collector URL")
        self.settings = settings
        self.urls = [u.rstrip("/") for u in urls]
        self.agent_id = agent_id
        self.key = key
        self.state_dir = state_dir
        self.timeout_s = min(timeout_s, SEND_TIMEOUT_MAX_S)
        self.backoff_max_s = min(backoff_max_s, BACKOFF_MAX_S)
        self.restart_max_s = backoff_max_s
        self._transport = transport
        self.buffer = LiveBuffer(settings.queue_max_events)
        self.stream = secrets.token_hex(8)
        """Random per run: with `seq`, lets the collector refuse a replayed message."""
        self.seq = 0
        self._current = 0
        self.state = "starting"
        """starting | up | down | refused"""
        self.last_error = ""
        self.sent_messages = 0
        self.sent_events = 0
        self.lost_messages = 0
        self.sent_auth_failures = 0
        self._problems_logged: dict[str, float] = {}
        self._refusal: str | None = None
        """The last refusal logged (409/413/422 + reason); logged again only when it changes."""

    @property
    def url(self) -> str:
        return self.urls[self._current]

    # -- sources ----------------------------------------------------------------------------

    async def run_source(self, source: Source) -> None:
        """Consume `source.live()` forever, restarting it with backoff when it fails."""
        name = source.name
        if not supports_live(source):
            raise ValueError(f"source {name!r} has no live()")
        q = self.buffer.queue(name)
        failures = 0
        first = True
        while True:
            events: AsyncIterator[LiveEvent | AuthFailure] | None = None
            started = time.monotonic()
            yielded = False
            try:
                events = cast(LiveSource, source).live()
                q.running = True
                log.info("live_started", source=name)
                async for event in events:
                    yielded = True
                    self.accept(name, event)
                    failures = 0
                if first and not yielded:
                    # The plugin's way of saying "no live calls here" (e.g. no AMI login set).
                    q.unavailable = True
                    log.info("live_unavailable", source=name, reason="live() ended at once")
                    return
                log.warning("live_ended", source=name, after_s=round(time.monotonic() - started))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "live_failed",
                    source=name,
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=not isinstance(exc, SourceError | OSError),
                )
            finally:
                q.running = False
                first = False
                if events is not None and hasattr(events, "aclose"):
                    with contextlib.suppress(Exception):
                        await events.aclose()
            # What happens until live() is running again is unknown: wait for its snapshot.
            self.buffer.expect_snapshot(name)
            failures += 1
            cap = min(self.restart_max_s, RESTART_BASE_S * 2 ** min(failures, 30))
            delay = random.uniform(cap / 2, cap)
            log.info("live_restart", source=name, in_s=round(delay, 1))
            await asyncio.sleep(delay)

    def accept(self, source: str, event: Any) -> bool:
        """Convert one event of `source` and queue it; False when it was not queued."""
        if isinstance(event, AuthFailure):
            return self.accept_auth(source, event)
        try:
            wire_event, problems = wire.live_event_to_wire(event)
        except wire.WireError as exc:
            self._problem(source, str(exc), dropped=True)
            # An event lost: the collector's view of this call would be wrong.
            self.buffer.expect_snapshot(source)
            return False
        if problems:
            self._problem(source, "; ".join(problems), dropped=False)
        return self.buffer.add(source, wire_event)

    def accept_auth(self, source: str, failure: AuthFailure) -> bool:
        """Convert one failed registration and queue it (a bad one is logged, not fatal)."""
        try:
            doc, problems = wire.auth_failure_to_wire(source, failure)
        except wire.WireError as exc:
            self._problem(source, str(exc), dropped=True, what="live_auth_failure_dropped")
            return False  # nothing else depends on it: no resync
        if problems:
            self._problem(source, "; ".join(problems), dropped=False)
        return self.buffer.add_auth(source, doc)

    def _problem(self, source: str, text: str, *, dropped: bool, what: str = "") -> None:
        now = time.monotonic()
        last = self._problems_logged.get(source)
        if last is not None and now - last < PROBLEM_LOG_EVERY_S:
            return
        self._problems_logged[source] = now
        log.warning(
            what or ("live_event_dropped" if dropped else "live_event_fixed"),
            source=source,
            problem=text[:500],
            hint="a plugin bug; logged at most once a minute per source",
        )

    # -- sending ----------------------------------------------------------------------------

    async def run_sender(self) -> None:
        """Send pending events until cancelled."""
        settings = self.settings
        timeout = httpx.Timeout(self.timeout_s)
        failures = 0
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            while True:
                await self.buffer.wait_batch(settings.flush_max_events, settings.flush_interval_s)
                auth = self.buffer.take_auth(wire.LIVE_MAX_AUTH_FAILURES)
                streams = self.buffer.take(settings.flush_max_events)
                if not streams and not auth:
                    continue
                delivered, backoff = await self.send(client, streams, auth)
                if delivered:
                    failures = 0
                    continue
                self.lost_messages += 1
                self.buffer.auth_dropped += len(auth)
                for s in streams:
                    self.buffer.lose(s.source, keep_snapshot=True, lost=len(s.events))
                if backoff:
                    failures += 1
                    ceiling = min(self.backoff_max_s, BACKOFF_BASE_S * 2 ** min(failures - 1, 30))
                    await asyncio.sleep(random.uniform(ceiling / 4, ceiling))

    async def send(
        self,
        client: httpx.AsyncClient,
        streams: list[wire.LiveStream],
        auth_failures: list[dict[str, Any]] | None = None,
    ) -> tuple[bool, bool]:
        """Post one message; returns (delivered, back off before the next one)."""
        self.seq += 1
        url = self.url
        auth = auth_failures or []
        envelope = wire.seal_live(
            self.agent_id, self.stream, self.seq, streams, self.key, auth_failures=auth
        )
        count = sum(len(s.events) for s in streams)
        try:
            response = await client.post(
                url + LIVE_PATH, content=envelope, headers={"Content-Type": "application/msgpack"}
            )
        except httpx.HTTPError as exc:
            self._trouble("down", url, f"{type(exc).__name__}: {exc}".rstrip(": "))
            self._failover()
            return False, True
        status = response.status_code
        if status == 200:
            self._up(url)
            self._refusal = None
            self.sent_messages += 1
            self.sent_events += count
            self.sent_auth_failures += len(auth)
            log.debug("live_sent", seq=self.seq, events=count, sources=len(streams), auth=len(auth))
            return True, False
        reason = f"HTTP {status}: {error_text(response)}"
        if status in (401, 403):
            self._trouble("refused", url, reason)
            return False, True
        if status in (409, 413, 422):
            # The collector refused this message (stale, too large, malformed): it is lost,
            # the next snapshot of each source in it starts over.
            if reason != self._refusal:
                log.error("live_refused", url=url, seq=self.seq, events=count, reason=reason)
                self._refusal = reason
            else:
                log.debug("live_refused", url=url, seq=self.seq, events=count, reason=reason)
            self.last_error = f"{url}: {reason}"
            return False, status == 409
        self._trouble("down", url, reason)
        self._failover()
        return False, True

    def _failover(self) -> None:
        if len(self.urls) > 1:
            self._current = (self._current + 1) % len(self.urls)

    def _trouble(self, state: str, url: str, reason: str) -> None:
        self.last_error = f"{url}: {reason}"
        if self.state != state:
            self.state = state
            log.warning("live_collector_" + state, url=url, reason=reason)
        else:
            log.debug("live_retry", url=url, reason=reason)

    def _up(self, url: str) -> None:
        if self.state != "up":
            log.info("live_collector_up", url=url)
            self.state = "up"
            self.last_error = ""

    # -- status file ------------------------------------------------------------------------

    def status(self, *, running: bool = True) -> dict[str, Any]:
        return {
            "updated_at": time.time(),
            "running": running,
            "pid": os.getpid(),
            "collector": self.state,
            "url": self.url,
            "last_error": self.last_error,
            "sent_messages": self.sent_messages,
            "sent_events": self.sent_events,
            "lost_messages": self.lost_messages,
            "dropped_events": self.buffer.dropped,
            "coalesced_events": self.buffer.coalesced,
            "pending_events": self.buffer.pending,
            "sent_auth_failures": self.sent_auth_failures,
            "dropped_auth_failures": self.buffer.auth_dropped,
            "sources": {
                name: {
                    "calls": len(q.calls),
                    "running": q.running,
                    "resync": q.resync,
                    "unavailable": q.unavailable,
                    "dropped": q.dropped,
                    "auth_failures": q.auth_failures,
                }
                for name, q in sorted(self.buffer.sources().items())
            },
        }

    async def run_status(self) -> None:
        """Write `state_dir/live.json` every few seconds (for `cdrstats-agent status`)."""
        while True:
            await self.write_status()
            await asyncio.sleep(STATUS_EVERY_S)

    async def write_status(self, *, running: bool = True) -> None:
        if self.state_dir is None:
            return
        doc = self.status(running=running)
        try:
            await asyncio.to_thread(write_status_file, self.state_dir, doc)
        except OSError as exc:
            log.warning("live_status_not_written", error=str(exc))


def write_status_file(state_dir: Path, doc: dict[str, Any]) -> None:
    path = state_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)


def read_status_file(state_dir: Path) -> dict[str, Any] | None:
    """The running agent's live status, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
