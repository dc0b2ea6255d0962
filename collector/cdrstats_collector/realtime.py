"""Realtime broker: PostgreSQL `LISTEN` fanned out to server-sent-event subscribers.

    broker = Broker(database_url)
    sub = broker.subscribe(tenant_id=7, last_event_id=request.headers.get("last-event-id"))
    try:
        async for event in sub:          # Event | None (None: heartbeat due)
            ...
    finally:
        broker.unsubscribe(sub)

One dedicated connection per process LISTENs on the ingest channel (`store.NOTIFY_CHANNEL`,
one notification per committed batch) and on the live channel (`LIVE_CHANNEL`). Every
notification becomes one `Event` with a process-local sequence number, kept in a bounded
ring (for `Last-Event-ID` resume) and offered to every subscriber allowed to see its tenant.

Back-pressure: each subscriber has a bounded queue; the broker only ever calls `put_nowait`.
A subscriber whose queue is full (a browser that does not read) is dropped: its stream ends
and the browser's EventSource reconnects with `Last-Event-ID`. Ingest never waits for a
browser: NOTIFY is sent at commit by PostgreSQL whatever the listeners do.

Event ids are `<boot>-<seq>`, `boot` being random per broker. A reconnecting client whose id
belongs to this broker and is still in the ring gets the events it missed; any other id (the
process restarted, or the load balancer sent it to another collector, or it was away too
long) gets one `resync` event telling the page to reload its figures. The same `resync` goes
to every subscriber after the LISTEN connection was lost and re-established.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cdrstats_agent import logs

from .store import NOTIFY_CHANNEL

LIVE_CHANNEL = "cdrstats_live"
IMPORT_CHANNEL = "cdrstats_import"  # csvimport.NOTIFY_CHANNEL: an import job's counters
ALERT_CHANNEL = "cdrstats_alert"  # an alert raised, acknowledged, snoozed or resolved
CHANNELS = {
    NOTIFY_CHANNEL: "cdr",
    LIVE_CHANNEL: "live",
    IMPORT_CHANNEL: "import",
    ALERT_CHANNEL: "alert",
}
"""PostgreSQL channel -> SSE event name."""

log = logs.get_logger("cdrstats.collector.realtime")


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    seq: int
    name: str  # 'cdr' | 'live' | 'import' | 'alert' | 'resync'
    tenant_id: int | None  # None: for every subscriber (resync)
    data: dict[str, Any]

    def encode(self) -> bytes:
        """The event in SSE wire format."""
        body = json.dumps(self.data, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.name}\ndata: {body}\n\n".encode()


@dataclass(eq=False, slots=True)
class Subscriber:
    """One SSE stream. `tenant_id` None sees every tenant (a superadmin's global view)."""

    tenant_id: int | None
    queue: asyncio.Queue[Event]
    heartbeat_s: float
    dropped: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event: Event) -> bool:
        return event.tenant_id is None or self.tenant_id in (None, event.tenant_id)

    def offer(self, event: Event) -> bool:
        """Queue `event` without waiting; False (and the subscriber is dropped) when full."""
        if self.closed.is_set():
            return False
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self.closed.set()
            return False
        return True

    def __aiter__(self) -> AsyncIterator[Event | None]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event | None]:
        """Events as they come; None when `heartbeat_s` passed without one. Ends when dropped."""
        while True:
            if not self.queue.empty():
                yield self.queue.get_nowait()
                continue
            if self.closed.is_set():
                return
            getter = asyncio.ensure_future(self.queue.get())
            closer = asyncio.ensure_future(self.closed.wait())
            try:
                done, _ = await asyncio.wait(
                    {getter, closer},
                    timeout=self.heartbeat_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                closer.cancel()
                if not getter.done():
                    getter.cancel()
            if getter in done and not getter.cancelled():
                yield getter.result()
            elif not done:
                yield None


class Broker:
    """One LISTEN connection per process, fanned out to bounded subscriber queues."""

    def __init__(
        self,
        database_url: str,
        *,
        queue_size: int = 256,
        ring_size: int = 2048,
        heartbeat_s: float = 15.0,
        retry_s: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.queue_size = queue_size
        self.heartbeat_s = heartbeat_s
        self.retry_s = retry_s
        self.boot = secrets.token_hex(4)
        self._seq = 0
        self._ring: deque[Event] = deque(maxlen=ring_size)
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.dropped = 0
        """Subscribers dropped for not reading (a counter for metrics and tests)."""
        self._ending = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (idempotent; called on first use)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen_forever(), name="cdrstats-realtime")

    async def wait_listening(self, within: float) -> bool:
        """True once the LISTEN connection is up (for tests and benchmarks)."""
        self.start()
        try:
            await asyncio.wait_for(self._listening.wait(), within)
        except TimeoutError:
            return False
        return True

    def end_streams(self) -> None:
        """Server shutdown: end every stream now and every later one at once (no waiting)."""
        self._ending = True
        for sub in list(self._subscribers):
            sub.closed.set()
        self._subscribers.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sub in list(self._subscribers):
            sub.closed.set()
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, tenant_id: int | None, last_event_id: str | None = None) -> Subscriber:
        """A new subscriber; events missed since `last_event_id` are queued first."""
        sub = Subscriber(tenant_id, asyncio.Queue(self.queue_size), self.heartbeat_s)
        if self._ending:
            sub.closed.set()
            return sub
        self.start()
        if last_event_id:
            missed = self._since(last_event_id)
            if missed is None:
                sub.offer(self._make("resync", None, {"reason": "resume point unknown"}))
            else:
                for event in missed:
                    if sub.wants(event) and not sub.offer(event):
                        break
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed.set()
        self._subscribers.discard(sub)

    def _since(self, last_event_id: str) -> list[Event] | None:
        boot, _, seq_text = last_event_id.partition("-")
        if boot != self.boot or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self._seq:
            return None
        oldest = self._ring[0].seq if self._ring else self._seq + 1
        if seq + 1 < oldest:
            return None  # events were evicted from the ring: cannot replay exactly
        return [e for e in self._ring if e.seq > seq]

    # -- publishing --------------------------------------------------------------------------

    def _make(self, name: str, tenant_id: int | None, data: dict[str, Any]) -> Event:
        self._seq += 1
        return Event(f"{self.boot}-{self._seq}", self._seq, name, tenant_id, data)

    def publish(self, name: str, tenant_id: int | None, data: dict[str, Any]) -> Event:
        """Record an event and offer it to the subscribers that may see it (never waits)."""
        event = self._make(name, tenant_id, data)
        if name != "resync":
            self._ring.append(event)
        for sub in list(self._subscribers):
            if sub.wants(event) and not sub.offer(event):
                self._subscribers.discard(sub)
                self.dropped += 1
                log.info("sse_client_dropped", tenant_id=sub.tenant_id, reason="queue full")
        return event

    def handle_notification(self, channel: str, payload: str) -> Event | None:
        """Turn one NOTIFY into an event; malformed payloads are logged and skipped."""
        name = CHANNELS.get(channel)
        if name is None:
            return None
        try:
            data = json.loads(payload)
            tenant_id = int(data["tenant_id"])
        except (ValueError, TypeError, KeyError):
            log.warning("notify_payload_refused", channel=channel, payload=payload[:200])
            return None
        if not isinstance(data, dict):
            return None
        return self.publish(name, tenant_id, data)

    async def _listen_forever(self) -> None:
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    application_name="cdrstats-realtime",
                    connect_timeout=5,
                )
            except psycopg.OperationalError as exc:
                log.warning("listen_connect_failed", reason=str(exc).strip().splitlines()[0])
                await asyncio.sleep(self.retry_s)
                continue
            try:
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(f'LISTEN "{channel}"')
                    if not first:
                        # Notifications sent while we were away are lost: pages reload.
                        self.publish("resync", None, {"reason": "listener reconnected"})
                    first = False
                    self._listening.set()
                    log.info("listening", channels=",".join(CHANNELS))
                    async for note in conn.notifies():
                        self.handle_notification(note.channel, note.payload)
            except psycopg.OperationalError as exc:
                text = str(exc).strip()
                log.warning("listen_lost", reason=text.splitlines()[0] if text else repr(exc))
            finally:
                self._listening.clear()
            await asyncio.sleep(self.retry_s)
