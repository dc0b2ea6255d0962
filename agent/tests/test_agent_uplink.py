"""The uplink against an in-test collector peer that checks real signatures: each status's
reaction, backoff and failover, and that nothing leaves the spool without a 200."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_testkit import CollectorPeer, dead_url, identity_for, make_cdr, wait_until
from cdrstats_agent import wire
from cdrstats_agent.spool import Spool
from cdrstats_agent.uplink import CollectorError, Uplink, fetch_agent_status
from nacl.signing import SigningKey


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = await Spool.open(tmp_path / "spool.sqlite", sync="normal")
    yield s
    await s.close()


async def fill(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n, 100):
        end = min(start + n, i + 100)
        await spool.commit("src", [make_cdr(j) for j in range(i, end)], str(end))


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_uplink(spool: Spool, peer: CollectorPeer, urls: list[str], **kw: Any) -> Uplink:
    identity, key = identity_for(peer)
    settings: dict[str, Any] = {
        "batch_max_cdrs": 500,
        "batch_max_age_s": 0.05,
        "timeout_s": 5.0,
        "backoff_max_s": 0.05,
        "backoff_base_s": 0.01,
    }
    settings.update(kw)
    return Uplink(spool, urls=urls, agent_id=identity.agent_id, key=key, **settings)


async def drained(spool: Spool, within: float = 10.0) -> None:
    await wait_until(lambda: spool.unbatched_cdrs == 0 and spool.batches == 0, within, "drain")


def expect_all(peer: CollectorPeer, n: int) -> None:
    assert sorted(peer.state.cdrs) == sorted(f"call-{i}" for i in range(n))
    assert set(peer.state.cdrs.values()) == {1}


async def test_delivers_in_order_bounded_by_count(spool: Spool, peer: CollectorPeer) -> None:
    await fill(spool, 1200)
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
        await wait_until(lambda: uplink.acked_cdrs == 1200)
    expect_all(peer, 1200)
    seqs = [r.seq for r in peer.state.received]
    assert seqs == [1, 2, 3]
    assert uplink.state == "up"


async def test_age_bound_sends_a_small_batch(spool: Spool, peer: CollectorPeer) -> None:
    uplink = make_uplink(spool, peer, [peer.url], batch_max_age_s=0.2)
    async with running(uplink):
        await fill(spool, 3)
        await asyncio.sleep(0.1)
        assert peer.state.received == []  # not yet: 3 CDRs, younger than the age bound
        await drained(spool)
    expect_all(peer, 3)


async def test_401_keeps_the_batch_and_retries(
    spool: Spool, peer: CollectorPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdrstats.agent.uplink")
    await fill(spool, 100)
    peer.state.script = [401, 401, 403]
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await wait_until(lambda: len(peer.state.received) >= 2, what="two refusals")
        assert spool.batches == 1  # kept while refused
        await drained(spool)
    expect_all(peer, 100)
    assert [r.status for r in peer.state.received] == [401, 401, 403, 200]
    events = [r.getMessage() for r in caplog.records]
    assert events.count("collector_refused") == 1  # logged once, not per retry
    assert events.count("collector_up") == 1  # back after the refusals
    refused = next(r for r in caplog.records if r.getMessage() == "collector_refused")
    assert refused.levelno == logging.ERROR
    assert refused.cdrstats_fields["reason"] == "scripted 401"  # type: ignore[attr-defined]


async def test_409_renumbers_after_last_seq(spool: Spool, peer: CollectorPeer) -> None:
    peer.state.last_seq = 41  # e.g. the agent's state dir was reset
    await fill(spool, 1000)
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
    expect_all(peer, 1000)
    received = [(r.seq, r.status) for r in peer.state.received]
    assert received[0] == (1, 409)
    assert [s for s, status in received if status == 200] == [42, 43]


async def test_413_splits_the_batch(spool: Spool, peer: CollectorPeer) -> None:
    await fill(spool, 500)
    batch = await spool.form_batch(500)
    assert batch is not None
    one_batch = len(wire.seal_batch("agent-1", 1, batch.body, SigningKey.generate()))
    peer.state.max_body = one_batch * 2 // 3  # half a batch fits, a whole one does not
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
    expect_all(peer, 500)
    assert sorted(peer.state.batches) == [1, 2]


async def test_413_of_a_single_cdr_quarantines_it(spool: Spool, peer: CollectorPeer) -> None:
    await fill(spool, 1)
    peer.state.max_body = 10
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await wait_until(lambda: spool.batches == 0 and spool.unbatched_cdrs == 0)
    (q,) = await spool.quarantined()
    assert "single CDR" in q.reason


async def test_422_quarantines_and_goes_on(
    spool: Spool, peer: CollectorPeer, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(spool, 1000)
    peer.state.script = [422]
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
    (q,) = await spool.quarantined()
    assert (q.seq, q.cdrs, q.reason) == (1, 500, "scripted 422")
    assert sorted(peer.state.cdrs) == sorted(f"call-{i}" for i in range(500, 1000))
    logged = [r for r in caplog.records if r.getMessage() == "batch_quarantined"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


async def test_lost_ack_redelivers_same_body_with_fresh_sent_at(
    spool: Spool, peer: CollectorPeer
) -> None:
    await fill(spool, 200)
    peer.state.commit_then = [503]  # committed, but the agent sees a 503
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
    expect_all(peer, 200)
    first, second = peer.state.received
    assert (first.seq, first.status, second.seq, second.status) == (1, 503, 1, 200)
    assert first.body_digest == second.body_digest
    assert first.sent_at < second.sent_at


async def test_failover_to_the_second_url_and_logs_down_once(
    spool: Spool, peer: CollectorPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdrstats.agent.uplink")
    await fill(spool, 1500)
    peer.state.script = [503, 503]
    uplink = make_uplink(spool, peer, [dead_url(), peer.url])
    async with running(uplink):
        await drained(spool)
    expect_all(peer, 1500)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("collector_down") == 1
    assert events.count("collector_up") == 1
    assert uplink.url == peer.url


async def test_nothing_leaves_the_spool_without_a_200(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdrstats.agent.uplink")
    peer = CollectorPeer()  # not started yet: its URL refuses connections
    await fill(spool, 1200)
    uplink = make_uplink(spool, peer, [dead_url(), peer.url])
    async with running(uplink):
        await asyncio.sleep(0.5)
        stats = await spool.stats()
        assert stats.pending_cdrs == 1200
        assert stats.batches <= 2  # formed ahead, but still in the spool
        assert uplink.state == "down"
        downs = [r for r in caplog.records if r.getMessage() == "collector_down"]
        assert len(downs) == 1
        await peer.start()
        try:
            await drained(spool)
        finally:
            await peer.stop()
    expect_all(peer, 1200)


async def test_backoff_is_full_jitter_capped(spool: Spool, peer: CollectorPeer) -> None:
    uplink = make_uplink(spool, peer, [peer.url], backoff_max_s=0.3, backoff_base_s=0.01)
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    random.seed(1)
    original = asyncio.sleep
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for failures in range(1, 12):
            for _ in range(50):
                await uplink._backoff(failures)
    finally:
        asyncio.sleep = original
    for failures in range(1, 12):
        chunk = delays[(failures - 1) * 50 : failures * 50]
        ceiling = min(0.3, 0.01 * 2 ** (failures - 1))
        assert all(0 <= d <= ceiling for d in chunk)
        assert max(chunk) > ceiling / 2  # spread over the range, not a fixed delay
    delays.clear()
    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        await uplink._backoff(1, retry_after=5.0)
    finally:
        asyncio.sleep = original
    assert delays == [0.3]  # Retry-After is honoured up to the cap


async def test_prepares_the_next_batch_while_one_is_in_flight(
    spool: Spool, peer: CollectorPeer
) -> None:
    await fill(spool, 3000)
    uplink = make_uplink(spool, peer, [peer.url])
    seen_ahead: list[int] = []
    peer.state.delay = 0.05
    peer.state.on_ingest = lambda: seen_ahead.append(spool.batches)
    async with running(uplink):
        await drained(spool)
    expect_all(peer, 3000)
    assert max(seen_ahead) == 2  # the in-flight batch and the next one, already formed


async def test_signed_status_request(peer: CollectorPeer) -> None:
    identity, key = identity_for(peer)
    view = await fetch_agent_status(peer.url, identity.agent_id, key)
    assert view["agent_id"] == "agent-1"
    from nacl.signing import SigningKey

    with pytest.raises(CollectorError, match="does not recognise"):
        await fetch_agent_status(peer.url, identity.agent_id, SigningKey.generate())
    with pytest.raises(CollectorError, match="cannot reach"):
        await fetch_agent_status(dead_url(), identity.agent_id, key)


async def test_each_batch_reports_what_waits_besides_it(spool: Spool, peer: CollectorPeer) -> None:
    await fill(spool, 1200)
    uplink = make_uplink(spool, peer, [peer.url])
    async with running(uplink):
        await drained(spool)
    reports = [r.spool for r in peer.state.received]
    assert all(r is not None for r in reports)
    assert [r.cdrs for r in reports if r] == [700, 200, 0]
    assert reports[-1] is not None and reports[-1].batches == 0
    assert all(r.lag_s >= 0 for r in reports if r)


def test_spool_status_is_optional_and_a_bad_one_is_ignored_with_its_reason() -> None:
    key = SigningKey.generate()

    def opened(payload_spool: Any) -> wire.Batch:
        payload = {"agent": "a", "seq": 1, "sent_at": wire.now_us(), "body": b"x"}
        if payload_spool is not None:
            payload["spool"] = payload_spool
        return wire.open_batch(
            wire.unseal(wire.seal("cdr_batch", "a", payload, key), "cdr_batch"), key.verify_key
        )

    old = opened(None)  # an agent from before the spool status
    assert (old.spool, old.spool_error) == (None, None)
    good = wire.open_batch(
        wire.unseal(
            wire.seal_batch("a", 2, b"x", key, spool=wire.SpoolStatus(3, 1500, 12.5)),
            "cdr_batch",
        ),
        key.verify_key,
    )
    assert good.spool == wire.SpoolStatus(batches=3, cdrs=1500, lag_s=12.5)
    for bad, field in (
        ([1, 2], "spool must be a map"),
        ({"batches": -1, "cdrs": 0, "lag_s": 0}, "spool.batches"),
        ({"batches": 0, "cdrs": "many", "lag_s": 0}, "spool.cdrs"),
        ({"batches": 0, "cdrs": 0, "lag_s": True}, "spool.lag_s"),
        ({"batches": 0, "cdrs": 0}, "spool.lag_s"),
    ):
        batch = opened(bad)
        assert batch.spool is None and batch.body == b"x"
        assert batch.spool_error is not None and field in batch.spool_error
