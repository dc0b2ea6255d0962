"""The durable spool: an SQLite database (WAL) between the sources and the uplink.

The promise: a source's CDRs and the checkpoint reached after them are committed in one
transaction (`commit`), so a SIGKILL at any moment loses nothing and re-reads nothing twice.

Tables (docs/agent.md, "Spool"):
  chunk       CDRs not yet in a batch: one row per commit, the CDRs packed with `wire.pack_cdr`
              and concatenated, so that a batch body is built by concatenation, not re-encoding.
  batch       formed batches awaiting an ack: sequence number and the body exactly as it will
              be sent on every (re)delivery. A batch leaves only on a 200 ack, or into
  quarantine  batches the collector refused as malformed (422), kept for inspection.
  source      per source: checkpoint, CDRs read, rows rejected; `rejected` keeps the last
              reasons; `meta` holds the next sequence number and the last ack.

`SpoolStore` is the synchronous store (one connection, to be used from one thread at a time);
`Spool` is the asyncio face the agent uses: every call runs in one worker thread, so the event
loop never waits on SQLite, and in-memory counters answer the hot questions (`full`,
`unbatched_cdrs`, ...) without a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import wire
from .logs import get_logger
from .model import CDR
from .plugin import Rejected

T = TypeVar("T")
log = get_logger("cdrstats.agent.spool")

SPOOL_FILE = "spool.sqlite"
SCHEMA_VERSION = 1
KEEP_REJECTED = 20
"""How many of the last rejected rows are kept per source (for `cdrstats-agent status`)."""
WARN_FRACTION = 0.8
WARN_INTERVAL_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS source (
    name TEXT PRIMARY KEY,
    checkpoint TEXT,
    read_count INTEGER NOT NULL DEFAULT 0,
    rejected_count INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    at REAL NOT NULL,
    location TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_by_source ON rejected (source, id);
CREATE TABLE IF NOT EXISTS chunk (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    cdrs INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY,
    cdrs INTEGER NOT NULL,
    body BLOB NOT NULL,
    oldest_at REAL NOT NULL,
    formed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    cdrs INTEGER NOT NULL,
    body BLOB NOT NULL,
    oldest_at REAL NOT NULL,
    quarantined_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


class SpoolError(Exception):
    """The spool cannot be opened or is not in the expected state."""


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A formed batch: its sequence number and the body sent on every delivery."""

    seq: int
    cdrs: int
    body: bytes
    oldest_at: float
    """Wall-clock time the oldest of its CDRs entered the spool."""
    formed_at: float


@dataclass(frozen=True, slots=True)
class QuarantinedBatch:
    id: int
    seq: int
    cdrs: int
    bytes: int
    quarantined_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class SourceState:
    name: str
    checkpoint: str | None
    read: int
    rejected: int
    updated_at: float
    last_rejected: tuple[tuple[float, str, str], ...] = ()
    """(time, where, reason) of the last rejected rows, newest first."""


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending_cdrs: int
    """CDRs not yet acknowledged (in chunks and in formed batches)."""
    unbatched_cdrs: int
    batches: int
    batch_cdrs: int
    bytes: int
    max_bytes: int
    oldest_age_s: float | None
    quarantined: int
    quarantined_cdrs: int
    next_seq: int
    last_ack_seq: int | None
    last_ack_at: float | None
    last_ack: dict[str, Any] = field(default_factory=dict)


class SpoolStore:
    """The synchronous spool over one SQLite connection (use from one thread at a time)."""

    def __init__(self, path: str | Path, *, max_bytes: int = 512 << 20, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.executescript(_SCHEMA)
            with self._tx():
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?), ('next_seq', 1)",
                    (SCHEMA_VERSION,),
                )
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot open the spool: {exc}") from None
        version = self._meta("schema_version")
        if version != SCHEMA_VERSION:
            raise SpoolError(
                f"{self.path}: spool schema {version}, this agent needs {SCHEMA_VERSION}"
            )
        self._load_counters()

    # --- in-memory counters (exact: every change goes through this object) ------------------

    def _load_counters(self) -> None:
        q = self._db.execute
        self.unbatched_cdrs, self.unbatched_bytes = q(
            "SELECT coalesce(sum(cdrs), 0), coalesce(sum(length(data)), 0) FROM chunk"
        ).fetchone()
        self.batches, self.batch_cdrs, self.batch_bytes = q(
            "SELECT count(*), coalesce(sum(cdrs), 0), coalesce(sum(length(body)), 0) FROM batch"
        ).fetchone()
        self.oldest_unbatched_at: float | None = self._first_chunk_time()

    def _first_chunk_time(self) -> float | None:
        row = self._db.execute("SELECT created_at FROM chunk ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    @property
    def bytes_used(self) -> int:
        """Bytes of pending CDRs (chunks and formed batches), the quantity `max_bytes` bounds."""
        return int(self.unbatched_bytes + self.batch_bytes)

    @property
    def full(self) -> bool:
        return self.bytes_used >= self.max_bytes

    @property
    def usage(self) -> float:
        return self.bytes_used / self.max_bytes

    # --- helpers ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()

    # --- sources ----------------------------------------------------------------------------

    def checkpoint(self, source: str) -> str | None:
        row = self._db.execute("SELECT checkpoint FROM source WHERE name = ?", (source,)).fetchone()
        return None if row is None else row[0]

    def commit(
        self,
        source: str,
        cdrs: Sequence[CDR],
        checkpoint: str,
        rejected: Sequence[Rejected] = (),
    ) -> None:
        """Store CDRs and the source's new checkpoint in one transaction."""
        self.commit_packed(source, wire.pack_cdrs(cdrs), len(cdrs), checkpoint, rejected)

    def commit_packed(
        self,
        source: str,
        packed: bytes,
        count: int,
        checkpoint: str,
        rejected: Sequence[Rejected] = (),
    ) -> None:
        """`commit` for CDRs already packed and concatenated (`wire.pack_cdrs`)."""
        now = time.time()
        with self._tx() as db:
            if count:
                db.execute(
                    "INSERT INTO chunk (source, cdrs, data, created_at) VALUES (?, ?, ?, ?)",
                    (source, count, packed, now),
                )
            db.execute(
                "INSERT INTO source (name, checkpoint, read_count, rejected_count, updated_at)"
                " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET"
                " checkpoint = ?2, read_count = read_count + ?3,"
                " rejected_count = rejected_count + ?4, updated_at = ?5",
                (source, checkpoint, count, len(rejected), now),
            )
            if rejected:
                db.executemany(
                    "INSERT INTO rejected (source, at, location, reason) VALUES (?, ?, ?, ?)",
                    [(source, now, r.where, r.reason) for r in rejected[-KEEP_REJECTED:]],
                )
                db.execute(
                    "DELETE FROM rejected WHERE source = ?1 AND id <= (SELECT id FROM rejected"
                    " WHERE source = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    (source, KEEP_REJECTED),
                )
        if count:
            self.unbatched_cdrs += count
            self.unbatched_bytes += len(packed)
            if self.oldest_unbatched_at is None:
                self.oldest_unbatched_at = now

    def sources(self) -> list[SourceState]:
        out = []
        rows = self._db.execute(
            "SELECT name, checkpoint, read_count, rejected_count, updated_at FROM source"
            " ORDER BY name"
        ).fetchall()
        for name, checkpoint, read, rejected, updated in rows:
            last = self._db.execute(
                "SELECT at, location, reason FROM rejected WHERE source = ? ORDER BY id DESC",
                (name,),
            ).fetchall()
            out.append(SourceState(name, checkpoint, read, rejected, updated, tuple(last)))
        return out

    # --- batches ----------------------------------------------------------------------------

    def form_batch(self, max_cdrs: int) -> PendingBatch | None:
        """Take up to `max_cdrs` of the oldest unbatched CDRs into a new batch (next seq)."""
        if max_cdrs < 1:
            raise ValueError("max_cdrs must be at least 1")
        now = time.time()
        with self._tx() as db:
            cur = db.execute("SELECT id, cdrs, data, created_at FROM chunk ORDER BY id")
            parts: list[bytes] = []
            total, last_id, oldest, remainder = 0, None, None, None
            while total < max_cdrs:
                row = cur.fetchone()
                if row is None:
                    break
                chunk_id, n, data, created = row
                oldest = created if oldest is None else oldest
                if total + n <= max_cdrs:
                    parts.append(data)
                    total += n
                    last_id = chunk_id
                else:
                    take = max_cdrs - total
                    head, tail = wire.split_rows(data, take)
                    parts.append(head)
                    total += take
                    remainder = (chunk_id, n - take, tail)
            cur.close()
            if total == 0:
                return None
            if last_id is not None:
                db.execute("DELETE FROM chunk WHERE id <= ?", (last_id,))
            if remainder is not None:
                chunk_id, left, tail = remainder
                db.execute(
                    "UPDATE chunk SET cdrs = ?, data = ? WHERE id = ?", (left, tail, chunk_id)
                )
            seq = int(self._meta("next_seq"))
            body = wire.build_body(parts, total)
            db.execute(
                "INSERT INTO batch (seq, cdrs, body, oldest_at, formed_at) VALUES (?, ?, ?, ?, ?)",
                (seq, total, body, oldest, now),
            )
            self._set_meta("next_seq", seq + 1)
            first = self._first_chunk_time()
        self.unbatched_cdrs -= total
        self.unbatched_bytes -= sum(map(len, parts))
        self.oldest_unbatched_at = first
        self.batches += 1
        self.batch_cdrs += total
        self.batch_bytes += len(body)
        assert oldest is not None
        return PendingBatch(seq, total, body, float(oldest), now)

    def next_batch(self) -> PendingBatch | None:
        """The formed batch with the lowest sequence number (the one to send)."""
        row = self._db.execute(
            "SELECT seq, cdrs, body, oldest_at, formed_at FROM batch ORDER BY seq LIMIT 1"
        ).fetchone()
        return None if row is None else PendingBatch(*row)

    def batch_seqs(self) -> list[int]:
        return [r[0] for r in self._db.execute("SELECT seq FROM batch ORDER BY seq")]

    def batch(self, seq: int) -> PendingBatch | None:
        row = self._db.execute(
            "SELECT seq, cdrs, body, oldest_at, formed_at FROM batch WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else PendingBatch(*row)

    def ack(self, seq: int, ack: dict[str, Any] | None = None) -> bool:
        """The collector committed batch `seq`: delete it. False if it was not pending."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT cdrs, length(body) FROM batch WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM batch WHERE seq = ?", (seq,))
            self._set_meta("last_ack_seq", seq)
            self._set_meta("last_ack_at", now)
            if ack is not None:
                self._set_meta(
                    "last_ack",
                    " ".join(f"{k}={v}" for k, v in ack.items() if isinstance(v, int | bool)),
                )
        self.batches -= 1
        self.batch_cdrs -= row[0]
        self.batch_bytes -= row[1]
        return True

    def renumber(self, after_seq: int) -> list[tuple[int, int]]:
        """Give the pending batches, in order, the numbers after `after_seq` (409 reaction).

        Returns (old, new) pairs. The bodies are unchanged.
        """
        with self._tx() as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM batch ORDER BY seq")]
            pairs = [(old, after_seq + 1 + i) for i, old in enumerate(seqs)]
            db.execute("UPDATE batch SET seq = -seq")
            db.executemany("UPDATE batch SET seq = ? WHERE seq = ?", [(n, -o) for o, n in pairs])
            next_seq = max(int(self._meta("next_seq")), after_seq + 1 + len(seqs))
            self._set_meta("next_seq", next_seq)
        return pairs

    def split(self, seq: int) -> tuple[PendingBatch, PendingBatch] | None:
        """Split batch `seq` in two (413 reaction): the first half keeps `seq`, the second
        takes `seq + 1` and the later pending batches move up by one. None if it holds a
        single CDR (it cannot be split) or is not pending."""
        with self._tx() as db:
            row = db.execute(
                "SELECT cdrs, body, oldest_at, formed_at FROM batch WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None or row[0] < 2:
                return None
            cdrs, body, oldest, formed = row
            head, tail = wire.split_body(body)
            first = PendingBatch(seq, cdrs // 2, head, oldest, formed)
            second = PendingBatch(seq + 1, cdrs - cdrs // 2, tail, oldest, formed)
            db.execute("UPDATE batch SET seq = -(seq + 1) WHERE seq > ?", (seq,))
            db.execute("UPDATE batch SET seq = -seq WHERE seq < 0")
            db.execute("UPDATE batch SET cdrs = ?, body = ? WHERE seq = ?", (first.cdrs, head, seq))
            db.execute(
                "INSERT INTO batch (seq, cdrs, body, oldest_at, formed_at) VALUES (?, ?, ?, ?, ?)",
                (second.seq, second.cdrs, tail, oldest, formed),
            )
            top = db.execute("SELECT max(seq) FROM batch").fetchone()[0]
            self._set_meta("next_seq", max(int(self._meta("next_seq")), top + 1))
        self.batches += 1
        self.batch_bytes += len(head) + len(tail) - len(body)
        return first, second

    def quarantine(self, seq: int, reason: str) -> bool:
        """Move batch `seq` to the quarantine table with the collector's reason (422)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT cdrs, length(body) FROM batch WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT INTO quarantine (seq, cdrs, body, oldest_at, quarantined_at, reason)"
                " SELECT seq, cdrs, body, oldest_at, ?, ? FROM batch WHERE seq = ?",
                (now, reason, seq),
            )
            db.execute("DELETE FROM batch WHERE seq = ?", (seq,))
        self.batches -= 1
        self.batch_cdrs -= row[0]
        self.batch_bytes -= row[1]
        return True

    def quarantined(self) -> list[QuarantinedBatch]:
        rows = self._db.execute(
            "SELECT id, seq, cdrs, length(body), quarantined_at, reason FROM quarantine ORDER BY id"
        ).fetchall()
        return [QuarantinedBatch(*r) for r in rows]

    def quarantined_body(self, id_: int) -> bytes | None:
        row = self._db.execute("SELECT body FROM quarantine WHERE id = ?", (id_,)).fetchone()
        return None if row is None else bytes(row[0])

    # --- stats ------------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        q = self._db.execute
        oldest = [
            t
            for t in (
                q("SELECT min(oldest_at) FROM batch").fetchone()[0],
                q("SELECT min(created_at) FROM chunk").fetchone()[0],
            )
            if t is not None
        ]
        quarantined, quarantined_cdrs = q(
            "SELECT count(*), coalesce(sum(cdrs), 0) FROM quarantine"
        ).fetchone()
        last_ack_at = self._meta("last_ack_at")
        last_ack = {}
        for item in str(self._meta("last_ack") or "").split():
            k, _, v = item.partition("=")
            last_ack[k] = v
        return SpoolStats(
            pending_cdrs=self.unbatched_cdrs + self.batch_cdrs,
            unbatched_cdrs=self.unbatched_cdrs,
            batches=self.batches,
            batch_cdrs=self.batch_cdrs,
            bytes=self.bytes_used,
            max_bytes=self.max_bytes,
            oldest_age_s=max(0.0, time.time() - min(oldest)) if oldest else None,
            quarantined=quarantined,
            quarantined_cdrs=quarantined_cdrs,
            next_seq=int(self._meta("next_seq")),
            last_ack_seq=self._meta("last_ack_seq"),
            last_ack_at=None if last_ack_at is None else float(last_ack_at),
            last_ack=last_ack,
        )


class _Notifier:
    """Wakes every coroutine waiting for "something changed in the spool"."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, max_wait: float | None = None) -> None:
        event = self._event
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await event.wait()


class Spool:
    """The spool for asyncio code: each call runs in the spool's own worker thread.

        spool = await Spool.open(state_dir / "spool.sqlite", max_bytes=..., sync="full")
        await spool.commit("pbx1", cdrs, checkpoint, rejected)
        batch = await spool.form_batch(5000)
        await spool.ack(batch.seq)
        await spool.close()

    A call cancelled while its transaction runs still completes the transaction (the thread
    is not interrupted), so cancelling a coroutine never leaves half a commit.
    """

    def __init__(self, store: SpoolStore, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self._executor = executor
        self._changed = _Notifier()
        self._last_warning = -WARN_INTERVAL_S
        self._was_full = False

    @classmethod
    async def open(
        cls, path: str | Path, *, max_bytes: int = 512 << 20, sync: str = "full"
    ) -> Spool:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(
                executor, lambda: SpoolStore(path, max_bytes=max_bytes, sync=sync)
            )
        except BaseException:
            executor.shutdown(wait=True)
            raise
        return cls(store, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Let the transaction finish before the cancellation goes on: nothing half-done.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await future
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)

    # --- counters (no I/O) ------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.store.full

    @property
    def unbatched_cdrs(self) -> int:
        return int(self.store.unbatched_cdrs)

    @property
    def oldest_unbatched_at(self) -> float | None:
        return self.store.oldest_unbatched_at

    @property
    def batches(self) -> int:
        return int(self.store.batches)

    @property
    def pending_cdrs(self) -> int:
        """CDRs not yet acknowledged (in formed batches and not yet batched)."""
        return int(self.store.unbatched_cdrs + self.store.batch_cdrs)

    @property
    def bytes_used(self) -> int:
        return self.store.bytes_used

    async def wait_changed(self, max_wait: float | None = None) -> None:
        """Return when the spool changed (commit, batch formed, ack, ...) or after `max_wait`."""
        await self._changed.wait(max_wait)

    async def wait_for_room(self) -> None:
        """Return when the spool is below its size bound (backpressure for the sources)."""
        while self.store.full:
            await self._changed.wait(1.0)

    def _after_change(self) -> None:
        self._changed.notify()
        usage = self.store.usage
        full = self.store.full
        if full != self._was_full:
            self._was_full = full
            if full:
                log.warning(
                    "spool_full",
                    used_mb=round(self.store.bytes_used / 1048576, 1),
                    max_mb=round(self.store.max_bytes / 1048576, 1),
                    action="sources paused until the collector acknowledges batches",
                )
            else:
                log.info("spool_resumed", used_pct=round(usage * 100, 1))
        if usage >= WARN_FRACTION:
            now = time.monotonic()
            if now - self._last_warning >= WARN_INTERVAL_S:
                self._last_warning = now
                log.warning(
                    "spool_high",
                    used_pct=round(usage * 100, 1),
                    used_mb=round(self.store.bytes_used / 1048576, 1),
                    max_mb=round(self.store.max_bytes / 1048576, 1),
                    pending_cdrs=self.store.unbatched_cdrs + self.store.batch_cdrs,
                )

    # --- calls ------------------------------------------------------------------------------

    async def checkpoint(self, source: str) -> str | None:
        return await self._run(self.store.checkpoint, source)

    async def commit(
        self, source: str, cdrs: Sequence[CDR], checkpoint: str, rejected: Sequence[Rejected] = ()
    ) -> None:
        """Store CDRs and the source's checkpoint in one transaction (packing in the thread)."""
        try:
            await self._run(self.store.commit, source, cdrs, checkpoint, rejected)
        finally:
            self._after_change()

    async def form_batch(self, max_cdrs: int) -> PendingBatch | None:
        batch = await self._run(self.store.form_batch, max_cdrs)
        self._after_change()
        return batch

    async def next_batch(self) -> PendingBatch | None:
        return await self._run(self.store.next_batch)

    async def ack(self, seq: int, ack: dict[str, Any] | None = None) -> bool:
        try:
            return await self._run(self.store.ack, seq, ack)
        finally:
            self._after_change()

    async def renumber(self, after_seq: int) -> list[tuple[int, int]]:
        try:
            return await self._run(self.store.renumber, after_seq)
        finally:
            self._after_change()

    async def split(self, seq: int) -> tuple[PendingBatch, PendingBatch] | None:
        try:
            return await self._run(self.store.split, seq)
        finally:
            self._after_change()

    async def quarantine(self, seq: int, reason: str) -> bool:
        try:
            return await self._run(self.store.quarantine, seq, reason)
        finally:
            self._after_change()

    async def stats(self) -> SpoolStats:
        return await self._run(self.store.stats)

    async def sources(self) -> list[SourceState]:
        return await self._run(self.store.sources)

    async def quarantined(self) -> list[QuarantinedBatch]:
        return await self._run(self.store.quarantined)
