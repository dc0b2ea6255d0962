"""The spool: one-transaction commits, SIGKILL safety, batches, renumber, split, quarantine,
size bound and backpressure."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from agent_testkit import keys_of_body, keys_of_packed, make_cdr
from cdrstats_agent import spool as spool_mod
from cdrstats_agent import wire
from cdrstats_agent.model import CDR
from cdrstats_agent.plugin import Rejected
from cdrstats_agent.spool import Spool, SpoolStore


def cdrs(start: int, stop: int) -> list[CDR]:
    return [make_cdr(i) for i in range(start, stop)]


def all_keys(store: SpoolStore) -> list[str]:
    """Every CDR key in the spool: formed batches in seq order, then unbatched chunks."""
    keys: list[str] = []
    for (body,) in store._db.execute("SELECT body FROM batch ORDER BY seq"):
        keys += keys_of_body(body)
    for (data,) in store._db.execute("SELECT data FROM chunk ORDER BY id"):
        keys += keys_of_packed(data)
    return keys


def test_commit_stores_cdrs_and_checkpoint_together(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    assert store.checkpoint("a") is None
    store.commit("a", cdrs(0, 10), "10")
    store.commit("a", [], "12", [Rejected("f.csv:11", "bad date"), Rejected("f.csv:12", "x")])
    assert store.checkpoint("a") == "12"
    assert all_keys(store) == [f"call-{i}" for i in range(10)]
    (state,) = store.sources()
    assert (state.read, state.rejected) == (10, 2)
    assert [r[1:] for r in state.last_rejected] == [("f.csv:12", "x"), ("f.csv:11", "bad date")]
    assert store.unbatched_cdrs == 10


def test_failed_commit_changes_nothing(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 5), "5")
    before = (store.unbatched_cdrs, store.unbatched_bytes)

    class Exploding:
        where = "x"

        @property
        def reason(self) -> str:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.commit("a", cdrs(5, 10), "10", [Exploding()])  # type: ignore[list-item]
    assert store.checkpoint("a") == "5"
    assert all_keys(store) == [f"call-{i}" for i in range(5)]
    assert (store.unbatched_cdrs, store.unbatched_bytes) == before
    store.close()
    reopened = SpoolStore(tmp_path / "s.sqlite")
    assert reopened.checkpoint("a") == "5"
    assert reopened.unbatched_cdrs == 5


def test_rejected_reasons_keep_only_the_last(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    for i in range(30):
        store.commit("a", [], str(i), [Rejected(f"line {i}", "bad")])
    (state,) = store.sources()
    assert state.rejected == 30
    assert len(state.last_rejected) == spool_mod.KEEP_REJECTED
    assert state.last_rejected[0][1] == "line 29"


def test_form_batch_takes_oldest_and_splits_a_chunk(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 7), "7")
    store.commit("a", cdrs(7, 10), "10")
    b1 = store.form_batch(5)
    assert b1 is not None and (b1.seq, b1.cdrs) == (1, 5)
    assert keys_of_body(b1.body) == [f"call-{i}" for i in range(5)]
    b2 = store.form_batch(100)
    assert b2 is not None and (b2.seq, b2.cdrs) == (2, 5)
    assert keys_of_body(b2.body) == [f"call-{i}" for i in range(5, 10)]
    assert store.form_batch(100) is None
    assert store.unbatched_cdrs == 0 and store.oldest_unbatched_at is None
    # the body is exactly what build_body makes of the packed CDRs
    assert b1.body == wire.build_body([wire.pack_cdr(c) for c in cdrs(0, 5)])


def test_batches_survive_restart_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SpoolStore(path)
    store.commit("a", cdrs(0, 50), "50")
    formed = [store.form_batch(20) for _ in range(3)]
    store.close()
    store = SpoolStore(path)
    assert store.batch_seqs() == [1, 2, 3]
    for b in formed:
        assert b is not None
        again = store.batch(b.seq)
        assert again is not None and again.body == b.body and again.cdrs == b.cdrs
    assert store.next_batch() == store.batch(1)
    assert store.stats().next_seq == 4
    assert store.batches == 3 and store.batch_cdrs == 50


def test_ack_deletes_only_that_batch(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 10), "10")
    store.form_batch(5)
    store.form_batch(5)
    assert store.ack(1, {"seq": 1, "accepted": 5, "duplicates": 0, "redelivery": False})
    assert not store.ack(1)
    assert store.batch_seqs() == [2]
    stats = store.stats()
    assert stats.last_ack_seq == 1 and stats.last_ack["accepted"] == "5"
    assert stats.pending_cdrs == 5


def test_renumber_after_last_seq(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 9), "9")
    bodies = [store.form_batch(3) for _ in range(3)]
    pairs = store.renumber(100)
    assert pairs == [(1, 101), (2, 102), (3, 103)]
    assert store.batch_seqs() == [101, 102, 103]
    for old, new in pairs:
        b = store.batch(new)
        formed = bodies[old - 1]
        assert b is not None and formed is not None and b.body == formed.body
    store.commit("a", cdrs(9, 10), "10")
    nxt = store.form_batch(3)
    assert nxt is not None and nxt.seq == 104


def test_split_keeps_order_and_shifts_later_batches(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 8), "8")
    store.form_batch(5)
    store.form_batch(3)
    halves = store.split(1)
    assert halves is not None
    first, second = halves
    assert (first.seq, first.cdrs, second.seq, second.cdrs) == (1, 2, 2, 3)
    assert store.batch_seqs() == [1, 2, 3]
    assert all_keys(store) == [f"call-{i}" for i in range(8)]
    assert store.batch_cdrs == 8 and store.batches == 3
    assert store.stats().next_seq == 4
    body_1 = store.batch(1)
    assert body_1 is not None and body_1.body == first.body
    # a single CDR cannot be split
    store.commit("a", cdrs(8, 9), "9")
    single = store.form_batch(10)
    assert single is not None and store.split(single.seq) is None


def test_quarantine_keeps_the_batch_for_inspection(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    store.commit("a", cdrs(0, 4), "4")
    b = store.form_batch(4)
    assert b is not None
    assert store.quarantine(b.seq, "cdrs[2]: start must be an integer")
    assert store.batch_seqs() == []
    (q,) = store.quarantined()
    assert (q.seq, q.cdrs, q.reason) == (1, 4, "cdrs[2]: start must be an integer")
    assert store.quarantined_body(q.id) == b.body
    stats = store.stats()
    assert (stats.quarantined, stats.quarantined_cdrs, stats.pending_cdrs) == (1, 4, 0)


def test_stats(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite", max_bytes=1 << 20)
    stats = store.stats()
    assert stats.pending_cdrs == 0 and stats.oldest_age_s is None
    store.commit("a", cdrs(0, 10), "10")
    store.form_batch(4)
    stats = store.stats()
    assert (stats.pending_cdrs, stats.unbatched_cdrs, stats.batches) == (10, 6, 1)
    assert stats.bytes == store.bytes_used > 0
    assert stats.oldest_age_s is not None and 0 <= stats.oldest_age_s < 5


def test_counters_match_a_recount(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path / "s.sqlite")
    rnd = random.Random(7)
    n = 0
    for _ in range(200):
        op = rnd.random()
        if op < 0.5:
            k = rnd.randint(0, 30)
            store.commit("a", cdrs(n, n + k), str(n + k))
            n += k
        elif op < 0.7:
            store.form_batch(rnd.randint(1, 40))
        elif op < 0.8 and store.batches:
            store.ack(store.batch_seqs()[0])
        elif op < 0.9 and store.batches:
            store.split(rnd.choice(store.batch_seqs()))
        elif store.batches:
            store.renumber(store.batch_seqs()[-1] + rnd.randint(0, 3))
    counted = (
        store.unbatched_cdrs,
        store.unbatched_bytes,
        store.batches,
        store.batch_cdrs,
        store.batch_bytes,
    )
    store._load_counters()
    assert counted == (
        store.unbatched_cdrs,
        store.unbatched_bytes,
        store.batches,
        store.batch_cdrs,
        store.batch_bytes,
    )


# --- SIGKILL at random moments --------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import random, sys
    sys.path.insert(0, {tests!r})
    from agent_testkit import make_cdr
    from cdrstats_agent.spool import SpoolStore

    store = SpoolStore({path!r}, sync="full")
    n = int(store.checkpoint("src") or 0)
    rnd = random.Random()
    print("ready", flush=True)
    while True:
        k = rnd.randint(1, 60)
        store.commit("src", [make_cdr(i) for i in range(n, n + k)], str(n + k))
        n += k
        if rnd.random() < 0.3:
            store.form_batch(rnd.randint(1, 150))
        if rnd.random() < 0.05 and store.batches > 2:
            store.renumber(store.batch_seqs()[-1] + 10)
        if rnd.random() < 0.05 and store.batches:
            store.split(store.batch_seqs()[-1])
    """
)


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    script = WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    rnd = random.Random()
    kills = 12
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(rnd.uniform(0.02, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
    store = SpoolStore(path)
    checkpoint = int(store.checkpoint("src") or 0)
    assert checkpoint > 0
    assert all_keys(store) == [f"call-{i}" for i in range(checkpoint)]
    (state,) = store.sources()
    assert state.read == checkpoint
    counted = (store.unbatched_cdrs, store.batches, store.batch_cdrs)
    assert counted[0] + counted[2] == checkpoint
    seqs = store.batch_seqs()
    assert seqs == sorted(seqs) and (not seqs or store.stats().next_seq > seqs[-1])


# --- the asyncio face: size bound, warnings, backpressure ------------------------------------


async def test_size_bound_warns_and_applies_backpressure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdrstats.agent.spool")
    one = len(wire.pack_cdrs(cdrs(0, 10)))
    spool = await Spool.open(tmp_path / "s.sqlite", max_bytes=one * 10)  # room for ~100 CDRs
    try:
        n = 0
        while not spool.full:
            await spool.commit("a", cdrs(n, n + 10), str(n + 10))
            n += 10
        assert 90 <= n <= 110
        events = [r.getMessage() for r in caplog.records]
        assert events.count("spool_high") == 1  # repeated at most once a minute
        assert events.count("spool_full") == 1
        # over the bound, a commit still succeeds: nothing read is ever dropped
        await spool.commit("a", cdrs(n, n + 10), str(n + 10))
        assert await spool.checkpoint("a") == str(n + 10)

        waiter = asyncio.create_task(spool.wait_for_room())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        batch = await spool.form_batch(10_000)
        assert batch is not None
        assert spool.full  # formed batches still count
        await spool.ack(batch.seq)
        await asyncio.wait_for(waiter, 2)
        assert not spool.full
        assert "spool_resumed" in [r.getMessage() for r in caplog.records]
    finally:
        await spool.close()


async def test_async_spool_roundtrip_and_cancelled_commit_completes(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "s.sqlite")
    try:
        task = asyncio.create_task(spool.commit("a", cdrs(0, 2000), "2000"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the transaction ran to its end: CDRs and checkpoint, or (if cancelled before it
        # started) neither; never one without the other
        checkpoint = await spool.checkpoint("a")
        assert (checkpoint, spool.unbatched_cdrs) in ((None, 0), ("2000", 2000))
        await spool.commit("b", cdrs(0, 3), "3")
        batch = await spool.form_batch(5000)
        assert batch is not None
        assert (await spool.next_batch()) == batch
        stats = await spool.stats()
        assert stats.batches == 1
        assert "b" in [s.name for s in await spool.sources()]
    finally:
        await spool.close()
