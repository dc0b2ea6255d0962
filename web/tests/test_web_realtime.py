"""The realtime broker (cdrstats_collector.realtime) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from cdrstats_collector.realtime import LIVE_CHANNEL, Broker, Event, Subscriber
from cdrstats_collector.store import NOTIFY_CHANNEL


async def _notify(url: str, channel: str, payload: dict[str, Any] | str) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, text))


async def _next(sub: Subscriber, within: float = 10.0) -> Event:
    async def first() -> Event:
        async for event in sub:
            if event is not None:
                return event
        raise AssertionError("subscriber closed")

    return await asyncio.wait_for(first(), within)


async def test_notifications_reach_the_tenants_subscribers_only(database_url: str) -> None:
    broker = Broker(database_url)
    try:
        assert await broker.wait_listening(10)
        acme, globex, everyone = broker.subscribe(1), broker.subscribe(2), broker.subscribe(None)
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": 2, "switch_id": 5, "accepted": 3})
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": 1, "switch_id": 4, "accepted": 7})
        await _notify(database_url, LIVE_CHANNEL, {"tenant_id": 1, "switch_id": 4, "count": 2})
        got = await _next(acme)
        assert (got.name, got.tenant_id, got.data["accepted"]) == ("cdr", 1, 7)
        live = await _next(acme)
        assert (live.name, live.data["count"]) == ("live", 2)
        other = await _next(globex)
        assert (other.tenant_id, other.data["accepted"]) == (2, 3)
        seen = [(await _next(everyone)).tenant_id for _ in range(3)]
        assert seen == [2, 1, 1]
        assert globex.queue.empty()  # acme's events never reached globex
        assert live.encode().startswith(f"id: {live.id}\nevent: live\ndata: {{".encode())
    finally:
        await broker.close()


async def test_a_slow_subscriber_is_dropped_and_others_get_everything(database_url: str) -> None:
    broker = Broker(database_url, queue_size=4)
    try:
        assert await broker.wait_listening(10)
        slow, fast = broker.subscribe(1), broker.subscribe(1)
        received: list[int] = []
        got_one = asyncio.Event()

        async def read_fast() -> None:
            async for event in fast:
                if event is not None:
                    received.append(int(event.data["n"]))
                    got_one.set()
                    if len(received) == 20:
                        return

        reader = asyncio.create_task(read_fast())
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for n in range(20):
                payload = json.dumps({"tenant_id": 1, "n": n})
                await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
                # The fast reader keeps up (it has read event n before n+1 is sent); the slow
                # one never reads.
                await asyncio.wait_for(got_one.wait(), 10)
                got_one.clear()
        await asyncio.wait_for(reader, 10)
        assert received == list(range(20))
        assert slow.dropped and slow.closed.is_set()
        assert broker.dropped == 1 and broker.subscribers == 1
        # The dropped stream ends after what it had queued (its browser reconnects).
        drained = [e async for e in slow]
        assert [e.data["n"] for e in drained if e is not None] == [0, 1, 2, 3]
    finally:
        await broker.close()


async def test_resume_replays_missed_events_or_asks_for_a_resync(database_url: str) -> None:
    broker = Broker(database_url, ring_size=5)
    first = broker.publish("cdr", 1, {"tenant_id": 1, "n": 1})
    broker.publish("cdr", 2, {"tenant_id": 2, "n": 2})
    third = broker.publish("cdr", 1, {"tenant_id": 1, "n": 3})
    sub = broker.subscribe(1, last_event_id=first.id)
    assert [sub.queue.get_nowait().id] == [third.id] and sub.queue.empty()
    assert broker.subscribe(1, last_event_id=third.id).queue.empty()
    for bad in ("0000-1", f"{broker.boot}-99", f"{broker.boot}-x", "garbage"):
        event = broker.subscribe(1, last_event_id=bad).queue.get_nowait()
        assert event.name == "resync", bad
    for n in range(10):  # first and third fall out of the ring
        broker.publish("cdr", 1, {"tenant_id": 1, "n": n})
    assert broker.subscribe(1, last_event_id=first.id).queue.get_nowait().name == "resync"
    await broker.close()


async def test_malformed_payloads_are_skipped(database_url: str) -> None:
    broker = Broker(database_url)
    try:
        assert await broker.wait_listening(10)
        sub = broker.subscribe(None)
        await _notify(database_url, NOTIFY_CHANNEL, "not json")
        await _notify(database_url, NOTIFY_CHANNEL, {"no_tenant": 1})
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": "x"})
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": 9, "ok": True})
        event = await _next(sub)
        assert event.data == {"tenant_id": 9, "ok": True}
    finally:
        await broker.close()


async def test_two_processes_both_serve_and_a_lost_listener_resyncs(database_url: str) -> None:
    one, two = Broker(database_url, retry_s=0.1), Broker(database_url, retry_s=0.1)
    try:
        assert await one.wait_listening(10) and await two.wait_listening(10)
        a, b = one.subscribe(1), two.subscribe(1)
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": 1, "accepted": 1})
        assert (await _next(a)).data == (await _next(b)).data
        # Kill broker one's LISTEN connection: it reconnects and tells its pages to resync.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'cdrstats-realtime' AND datname = current_database()"
            )
        assert (await _next(a)).name == "resync"
        assert (await _next(b)).name == "resync"
        assert await one.wait_listening(10) and await two.wait_listening(10)
        await _notify(database_url, NOTIFY_CHANNEL, {"tenant_id": 1, "accepted": 2})
        assert (await _next(a)).data["accepted"] == 2
        assert (await _next(b)).data["accepted"] == 2
    finally:
        await one.close()
        await two.close()


async def test_heartbeat_when_nothing_happens(database_url: str) -> None:
    broker = Broker(database_url, heartbeat_s=0.05)
    sub = broker.subscribe(1)
    it = sub.__aiter__()
    assert await asyncio.wait_for(it.__anext__(), 10) is None
    broker.unsubscribe(sub)
    assert [e async for e in it] == []
    await broker.close()


async def test_end_streams_closes_every_stream_and_later_ones(database_url: str) -> None:
    broker = Broker(database_url)
    a, b = broker.subscribe(1), broker.subscribe(None)
    broker.end_streams()
    assert a.closed.is_set() and b.closed.is_set() and broker.subscribers == 0
    late = broker.subscribe(1)
    assert late.closed.is_set() and [e async for e in late] == []
    broker.publish("cdr", 1, {"tenant_id": 1})
    assert late.queue.empty()
    await broker.close()
