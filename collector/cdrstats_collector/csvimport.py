"""CSV import: a file from any switch or carrier, mapped and stored like an agent's batches.

One mapping engine: the agent's CSV plugin (`cdrstats_csv`): a profile is a set of its mapping
options (the keys of a `[[source]]` table, see plugins/csv/README.md), read with
`cdrstats_csv.config.mapping_from_options`; what the profile leaves open (encoding, delimiter,
header, decimal comma) is guessed from the file's first 64 KiB (`cdrstats_csv.detect`), and
records are cut with `cdrstats_csv.records.split_records` (quoted newlines).

The file is read in 1 MiB chunks and stored in batches of `BATCH_ROWS` CDRs through
`store.Ingestor.store_unbatched`: the same classification, dedup load (the cdr primary key
(tenant, switch, start, key) drops rows already stored: re-importing a file, or an overlapping
one, inserts nothing twice), aggregates and `NOTIFY cdr_ingest` as agent batches. Memory
stays flat whatever the file size.

Each batch's transaction also advances the `import_job` row (rows read, imported, duplicates,
rejected), keeps its rejected rows in `import_reject` (at most `MAX_REJECTS_KEPT` per job) and
sends `NOTIFY cdrstats_import` with the job's counters (payload: see docs/csv-import.md).

Imported CDRs carry `cdr.agent_id = import_agent_id(tenant)`, a per-tenant uuid5 with no
agent row (nothing can authenticate as it, and remote commands never target it); the job row
records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import io
import json
import multiprocessing
import operator
import os
import re
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full
from typing import IO, Any

import cdrstats_csv.detect as csvdetect
import psycopg
from cdrstats_agent import wire
from cdrstats_agent.errors import ConfigError
from cdrstats_csv.config import mapping_from_options
from cdrstats_csv.mapping import Mapping, Rejection
from cdrstats_csv.presets import PRESET_NAMES
from cdrstats_csv.records import RawRecord, split_records
from psycopg.types.json import Jsonb

from . import store, tenants

NOTIFY_CHANNEL = "cdrstats_import"
BATCH_ROWS = 5_000
CHUNK_BYTES = 1 << 20
MAX_REJECTS_KEPT = 10_000
"""Rejected rows kept per job (line, reason, raw text); beyond, they are only counted."""
MAX_RAW_CHARS = 1_000
"""The raw text of a rejected row is kept up to this length."""
STORE_RETRIES = 3
NOTIFY_INTERVAL_S = 0.5
NOTIFY_STEPS = 10
"""A running job sends a progress NOTIFY after a batch when NOTIFY_INTERVAL_S passed since
the last one, or when the batch reaches another 1/NOTIFY_STEPS of the file (a progress bar
moves in steps of 10 % at least, and at most a few times a second); plus one when the job
starts and one when it ends."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


WORKER_MIN_BYTES = 8 << 20
"""Files this large are mapped in child processes (smaller ones in a thread)."""
WORKERS = max(1, min(4, _usable_cpus()))
"""Mapping processes for a large file: one per core (at most 4). They map the records and
prepare the COPY rows (`Ingestor.prepare`), so this process only cuts records and stores;
measured on 2 cores, this beats mapping in a thread of this process (docs/csv-import.md)."""

BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    name: {"preset": name} for name in PRESET_NAMES if name != "freeswitch-template"
}
"""Profiles every tenant has: Asterisk Master.csv and the two stock FreeSWITCH templates."""

_IMPORT_NAMESPACE = uuid.UUID("5d0c7e2a-4b1f-5a57-9c1e-63647273696d")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_INDEX = re.compile(r"^cdrs\[(\d+)\]")


class CsvImportError(tenants.AdminError):
    """The file cannot be imported at all (empty, binary, no usable header); says why."""


def import_agent_id(tenant_id: int) -> uuid.UUID:
    """The `cdr.agent_id` of CDRs imported for a tenant (no agent row has this id)."""
    return uuid.uuid5(_IMPORT_NAMESPACE, f"import:{tenant_id}")


# --- profiles ---------------------------------------------------------------------------------


def check_profile(options: dict[str, Any]) -> None:
    """Raise ConfigError (naming the key) when `options` is not a usable mapping.

    Header presence and delimiter may be left open (guessed from each file).
    """
    trial = dict(options)
    if "preset" not in trial and "column_names" not in trial:
        trial.setdefault("header", True)
    mapping_from_options(trial, "profile")


def save_profile(
    conn: psycopg.Connection[Any], tenant_id: int, name: str, options: dict[str, Any]
) -> None:
    """Create or replace a tenant's named profile (validated first)."""
    if not _PROFILE_NAME.match(name):
        raise tenants.InvalidArgument(
            f"profile name {name!r}: letters, digits, space, '.', '_', '-' (at most 64)"
        )
    if name in BUILTIN_PROFILES:
        raise tenants.InvalidArgument(f"{name!r} is a built-in profile; choose another name")
    check_profile(options)
    with conn.transaction():
        conn.execute(
            "INSERT INTO import_profile (tenant_id, name, options) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant_id, name) DO UPDATE"
            " SET options = EXCLUDED.options, updated_at = now()",
            (tenant_id, name, Jsonb(options)),
        )


def delete_profile(conn: psycopg.Connection[Any], tenant_id: int, name: str) -> bool:
    """Delete a tenant's profile; False when it has none of that name. Imports made with it
    keep their options (stored with each job)."""
    if name in BUILTIN_PROFILES:
        raise tenants.InvalidArgument(f"{name!r} is a built-in profile; it cannot be deleted")
    cur = conn.execute(
        "DELETE FROM import_profile WHERE tenant_id = %s AND name = %s", (tenant_id, name)
    )
    return cur.rowcount > 0


def list_profiles(
    conn: psycopg.Connection[Any], tenant_id: int
) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, options, built-in) of every profile the tenant can use."""
    rows = conn.execute(
        "SELECT name, options FROM import_profile WHERE tenant_id = %s ORDER BY name",
        (tenant_id,),
    ).fetchall()
    found = [(name, dict(opts), True) for name, opts in BUILTIN_PROFILES.items()]
    return found + [(str(r[0]), dict(r[1]), False) for r in rows]


async def load_profile(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, name: str
) -> dict[str, Any]:
    if name in BUILTIN_PROFILES:
        return dict(BUILTIN_PROFILES[name])
    cur = await conn.execute(
        "SELECT options FROM import_profile WHERE tenant_id = %s AND name = %s", (tenant_id, name)
    )
    row = await cur.fetchone()
    if row is None:
        known = ", ".join(BUILTIN_PROFILES)
        raise tenants.InvalidArgument(
            f"unknown import profile {name!r}: built-in ones are {known};"
            " add one with `cdrstats import-profile add`"
        )
    return dict(row[0])


def _names_columns(options: dict[str, Any]) -> bool:
    """Whether the mapping refers to a column by name (not by number)."""
    refs: list[Any] = []
    for value in (options.get("fields") or {}).values():
        refs.extend(value if isinstance(value, list) else [value])
    key = options.get("key")
    refs.extend(key if isinstance(key, list) else [key] if key is not None else [])
    return any(isinstance(ref, str) for ref in refs)


def resolve_options(
    profile: dict[str, Any],
    detected: csvdetect.Detected,
    *,
    timezone: str | None = None,
    default_timezone: str | None = None,
) -> dict[str, Any]:
    """The profile's options completed with what was detected in the file.

    The profile wins over detection. `timezone` (given for this import: the command line)
    wins over the profile's `timezone`/`usegmtime`; `default_timezone` (the tenant's)
    applies when neither says anything.
    """
    opts = dict(profile)
    if "preset" not in opts:
        opts.setdefault("delimiter", detected.delimiter)
        if "column_names" not in opts:
            # columns named in the mapping can only come from a header line
            opts.setdefault("header", detected.header or _names_columns(opts))
        if detected.decimal_comma:
            opts.setdefault("decimal_comma", True)
    opts.setdefault("encoding", detected.encoding)
    if timezone is not None:
        opts.pop("usegmtime", None)
        opts["timezone"] = timezone
    elif default_timezone is not None and "timezone" not in opts and not opts.get("usegmtime"):
        opts["timezone"] = default_timezone
    return opts


# --- preview (for the console's mapping page) -------------------------------------------------

_GUESSES: dict[str, tuple[str, ...]] = {
    # CDR field (or "key"): header names, compared lower-case without spaces, _ and -
    "start": (
        "start",
        "starttime",
        "startstamp",
        "calldate",
        "date",
        "datetime",
        "time",
        "begin",
        "setuptime",
        "dateappel",
    ),
    "answer": ("answer", "answertime", "answerstamp", "connecttime"),
    "end": ("end", "endtime", "endstamp", "hanguptime", "releasetime"),
    "duration": ("duration", "durée", "duree", "length", "secs", "seconds", "calllength"),
    "billsec": ("billsec", "billable", "billedduration", "billsecs", "talktime"),
    "caller": (
        "caller",
        "src",
        "from",
        "calling",
        "callingnumber",
        "anumber",
        "ani",
        "cli",
        "calleridnumber",
        "source",
        "appelant",
    ),
    "caller_name": ("callername", "calleridname", "clid", "name", "nom"),
    "callee": (
        "callee",
        "dst",
        "to",
        "called",
        "callednumber",
        "bnumber",
        "destination",
        "destinationnumber",
        "dialed",
        "dialednumber",
        "appelé",
        "appele",
    ),
    "disposition": ("disposition", "status", "result", "callstatus"),
    "hangup_cause": ("hangupcause", "cause", "releasecause", "q850"),
    "accountcode": ("accountcode", "account", "customer", "client"),
    "trunk": ("trunk", "gateway", "route", "carrier"),
    "key": ("uniqueid", "callid", "id", "uuid", "cdrid", "recordid", "sessionid"),
}


def guess_fields(names: tuple[str, ...]) -> dict[str, str]:
    """CDR field (and "key") -> header name, from usual column names (first match wins)."""
    normal = {n.lower().replace(" ", "").replace("_", "").replace("-", ""): n for n in names}
    found: dict[str, str] = {}
    used: set[str] = set()
    for target, candidates in _GUESSES.items():
        for candidate in candidates:
            name = normal.get(candidate)
            if name is not None and name not in used:
                found[target] = name
                used.add(name)
                break
    return found


@dataclass(frozen=True)
class PreviewRow:
    line: int
    values: list[str] | None
    """The record's values as cut with the options (None: it cannot be cut)."""
    cdr: Any | None
    """The mapped `CDR`, when a mapping was possible and the row maps."""
    reason: str | None
    """Why the row does not map (or cannot be cut)."""


@dataclass(frozen=True)
class Preview:
    detected: csvdetect.Detected
    options: dict[str, Any]
    """The options the import would use (profile, or guesses, plus detection)."""
    header: tuple[str, ...] | None
    guesses: dict[str, str]
    rows: list[PreviewRow]
    problem: str | None
    """Why no row can be mapped with these options (e.g. no start column), else None."""


def preview(
    sample: bytes,
    profile: dict[str, Any] | None = None,
    *,
    complete: bool = False,
    timezone: str = "UTC",
    limit: int = 20,
) -> Preview:
    """The first `limit` records of a file as the import would read them.

    `sample` is the file's first bytes (`csvdetect.SAMPLE_BYTES`; `complete` if that is the
    whole file). Without a profile, fields are guessed from the header names. Raises
    `csvdetect.NotText` for an empty or binary file.
    """
    detected = csvdetect.detect(sample, complete=complete)
    body = sample[3:] if detected.bom else sample
    base = dict(profile) if profile is not None else {}
    syntax = resolve_options(base, detected, default_timezone=timezone)
    names: tuple[str, ...] | None = None
    split = split_records(body, quote=0x22, final=complete)
    records = split.records[: limit + 1]
    if syntax.get("header") and records:
        cut = records[0].data.decode(syntax["encoding"], errors="replace")
        with contextlib.suppress(ValueError):
            names = tuple(
                v.strip() for v in next(csv.reader([cut], delimiter=syntax.get("delimiter", ",")))
            )
    guesses = guess_fields(names) if names else {}
    if profile is None:
        fields = {k: v for k, v in guesses.items() if k != "key"}
        base = {"fields": fields, "header": bool(names)}
        if "key" in guesses:
            base["key"] = guesses["key"]
    options = resolve_options(base, detected, default_timezone=timezone)
    mapping = None
    problem = None
    try:
        mapping = mapping_from_options(options, "profile")
    except ConfigError as exc:
        problem = str(exc)
    rows: list[PreviewRow] = []
    header: tuple[str, ...] | None = None
    for i, record in enumerate(records):
        if mapping is None:
            rows.append(PreviewRow(record.line, None, None, problem))
            continue
        if mapping.header and i == 0:
            parsed = mapping.parse_header(record.data)
            header = None if isinstance(parsed, Rejection) else parsed
            continue
        try:
            values: list[str] | None = mapping.split(record.data)
        except ValueError:
            values = None
        result = mapping.map_record(record.data, header)
        if isinstance(result, Rejection):
            rows.append(PreviewRow(record.line, values, None, result.reason))
        else:
            rows.append(PreviewRow(record.line, values, result, None))
    return Preview(detected, options, header or names, guesses, rows[:limit], problem)


@dataclass(slots=True)
class Progress:
    """A job's counters (as in its `import_job` row and NOTIFY payloads)."""

    job_id: uuid.UUID
    tenant_id: int
    status: str = "running"
    rows_read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None
    rejects_kept: int = 0
    bytes_read: int = 0
    """Bytes of the file read up to the last row counted (for a percentage)."""
    bytes_total: int = 0
    """The file's size."""
    notified_at: float = 0.0
    """When the last progress NOTIFY was sent (monotonic clock)..."""
    notified_step: int = 0
    """...and the step of the file (NOTIFY_STEPS) it had reached."""

    def payload(self) -> str:
        return json.dumps(
            {
                "tenant_id": self.tenant_id,
                "job_id": str(self.job_id),
                "status": self.status,
                "rows_read": self.rows_read,
                "imported": self.imported,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
                "error": self.error,
                "bytes_read": self.bytes_read,
                "bytes_total": self.bytes_total,
            }
        )


@dataclass(slots=True)
class _Batch:
    rows: list[list[Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    read: int = 0
    offset: int = 0
    """File position after the batch's last record (0: unknown)."""
    prepared: store.Prepared | None = None
    """`rows` already turned into COPY rows (`Ingestor.prepare`, done by a mapping process)."""


_PROGRESS = (
    "UPDATE import_job SET rows_read = %(read)s, imported = %(imported)s,"
    " duplicates = %(duplicates)s, rejected = %(rejected)s, status = %(status)s,"
    " error = %(error)s, bytes_read = %(bytes)s, updated_at = now(),"
    " finished_at = CASE WHEN %(status)s = 'running' THEN NULL ELSE now() END"
    " WHERE tenant_id = %(tenant)s AND id = %(job)s"
)


def _head(path: Path) -> tuple[int, bytes]:
    """(size, first SAMPLE_BYTES) of a file."""
    with open(path, "rb") as fh:
        return os.fstat(fh.fileno()).st_size, fh.read(csvdetect.SAMPLE_BYTES)


def _raw_text(data: bytes, mapping: Mapping) -> str:
    text = data.decode(mapping.encoding, errors="replace").replace("\x00", "\ufffd")
    return text[:MAX_RAW_CHARS]


class Importer:
    """Imports one file for one tenant and switch (see the module doc)."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        ingestor: store.Ingestor,
        *,
        tenant_id: int,
        switch_id: int,
        progress: Callable[[Progress], None] | None = None,
        created: Callable[[Progress], None] | None = None,
    ) -> None:
        self.conn = conn
        self.ingestor = ingestor
        self.tenant_id = tenant_id
        self.switch_id = switch_id
        self.ref = store.AgentRef(import_agent_id(tenant_id), tenant_id, switch_id)
        self.on_progress = progress
        self.on_created = created
        """Called once the job's row is committed (the HTTP API answers 202 then)."""
        self._inflight: asyncio.Task[None] | None = None

    async def _tenant_timezone(self) -> str:
        cur = await self.conn.execute(
            "SELECT timezone FROM tenant WHERE id = %s", (self.tenant_id,)
        )
        row = await cur.fetchone()
        return str(row[0]) if row else "UTC"

    async def run(
        self,
        path: Path,
        profile_name: str,
        *,
        timezone: str | None = None,
        created_by: str = "",
        job_id: uuid.UUID | None = None,
        file_name: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> Progress:
        """Import `path`; returns the finished job's counters.

        `options` (a mapping given directly, e.g. from the console's mapping page) replaces
        the profile; `profile_name` is then only the label kept in the job row.
        Raises ConfigError / InvalidArgument for a bad or unknown profile (no job is created),
        CsvImportError when the file cannot be read as CSV at all (the job is recorded as
        failed with the same message).
        """
        if options is not None:
            profile = dict(options)
        else:
            profile = await load_profile(self.conn, self.tenant_id, profile_name)
        tenant_zone = await self._tenant_timezone()
        size, sample = await asyncio.to_thread(_head, path)
        job = Progress(job_id or uuid.uuid4(), self.tenant_id)
        name = file_name or path.name
        try:
            detected = csvdetect.detect(sample, complete=len(sample) >= size)
        except csvdetect.NotText as exc:
            await self._create_job(job, profile_name, profile, name, size, created_by)
            await self._fail(job, f"{name}: {exc}")
            raise CsvImportError(f"{name}: {exc}") from None
        options = resolve_options(
            profile, detected, timezone=timezone, default_timezone=tenant_zone
        )
        mapping_from_options(options, "profile")  # a bad profile: ConfigError, no job
        await self._create_job(job, profile_name, options, name, size, created_by)
        try:
            await self._stream(path, options, detected.bom, size, job)
        except CsvImportError as exc:
            await self._fail(job, str(exc))
            raise
        except BaseException as exc:
            await self._fail(job, f"import stopped: {type(exc).__name__}: {exc}")
            raise
        job.status = "done"
        await self._update(job, _Batch())
        return job

    async def _create_job(
        self,
        job: Progress,
        profile: str,
        options: dict[str, Any],
        name: str,
        size: int,
        created_by: str,
    ) -> None:
        async with self.conn.transaction():
            await self.conn.execute(
                "INSERT INTO import_job (tenant_id, id, switch_id, agent_id, profile, options,"
                " file_name, file_size, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    self.tenant_id,
                    job.job_id,
                    self.switch_id,
                    self.ref.id,
                    profile,
                    Jsonb(options),
                    name,
                    size,
                    created_by,
                ),
            )
            job.bytes_total = size
            job.notified_at = time.monotonic()
            await self.conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, job.payload()))
        if self.on_created is not None:
            self.on_created(job)

    async def _fail(self, job: Progress, message: str) -> None:
        job.status, job.error = "failed", message
        try:
            await self._update(job, _Batch())
        except psycopg.Error:
            pass  # the connection is gone: the job stays 'running' (its updated_at tells)

    async def _write_progress(self, job: Progress, batch: _Batch) -> None:
        """Inside a transaction: the job row, the kept rejects, the NOTIFY."""
        keep = batch.rejects[: max(0, MAX_REJECTS_KEPT - job.rejects_kept)]
        if keep:
            async with self.conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO import_reject (tenant_id, job_id, line, reason, raw)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(self.tenant_id, job.job_id, line, why, raw) for line, why, raw in keep],
                )
        await self.conn.execute(
            _PROGRESS,
            {
                "read": job.rows_read,
                "imported": job.imported,
                "duplicates": job.duplicates,
                "rejected": job.rejected,
                "status": job.status,
                "error": job.error,
                "bytes": job.bytes_read,
                "tenant": self.tenant_id,
                "job": job.job_id,
            },
        )
        now = time.monotonic()
        step = job.bytes_read * NOTIFY_STEPS // job.bytes_total if job.bytes_total else 0
        if (
            job.status != "running"
            or now - job.notified_at >= NOTIFY_INTERVAL_S
            or step > job.notified_step
        ):
            job.notified_at, job.notified_step = now, step
            await self.conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, job.payload()))
        job.rejects_kept += len(keep)

    async def _update(self, job: Progress, batch: _Batch) -> None:
        job.rows_read += batch.read
        job.rejected += len(batch.rejects)
        job.bytes_read = max(job.bytes_read, batch.offset)
        async with self.conn.transaction():
            await self._write_progress(job, batch)
        if self.on_progress is not None:
            self.on_progress(job)

    async def _flush(self, job: Progress, batch: _Batch) -> None:
        if not batch.rows:
            if batch.read or batch.rejects:
                await self._update(job, batch)
            return
        prepared = batch.prepared or self.ingestor.prepare(self.ref, batch.rows, wire.now_us())
        lines = batch.lines
        for attempt in range(STORE_RETRIES + len(prepared.rows)):
            counted = len(prepared.rows)

            async def finish(accepted: int, counted: int = counted) -> None:
                job.rows_read += batch.read
                job.rejected += len(batch.rejects)
                job.imported += accepted
                job.duplicates += counted - accepted
                before, job.bytes_read = job.bytes_read, max(job.bytes_read, batch.offset)
                try:
                    await self._write_progress(job, batch)
                except BaseException:
                    job.bytes_read = before
                    job.rows_read -= batch.read
                    job.rejected -= len(batch.rejects)
                    job.imported -= accepted
                    job.duplicates -= counted - accepted
                    raise

            try:
                await self.ingestor.store_unbatched(self.conn, self.ref, prepared, finish)
            except store.BadRows as exc:
                # One row the database refuses: reject it, store the others.
                match = _INDEX.match(str(exc))
                if match is None or int(match[1]) >= len(prepared.rows):
                    raise CsvImportError(f"a batch was refused by the database: {exc}") from None
                i = int(match[1])
                reason = str(exc)[match.end() :].lstrip(": ")
                batch.rejects.append((lines[i], f"refused by the database: {reason}", ""))
                del prepared.rows[i]
                del lines[i]
                continue
            except store.StoreUnavailable:
                if attempt >= STORE_RETRIES:
                    raise
                continue
            if self.on_progress is not None:
                self.on_progress(job)
            return
        raise CsvImportError("a batch could not be stored (too many refused rows)")

    async def _submit(self, job: Progress, batch: _Batch) -> None:
        """Store `batch` in the background once the batch before it is stored.

        One batch is in flight while the next one is mapped: the database works on batch N
        while batch N+1 is mapped. Batches commit in file order.
        """
        await self._drain()
        self._inflight = asyncio.create_task(self._flush(job, batch))

    async def _drain(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _stream(
        self, path: Path, options: dict[str, Any], bom: bool, size: int, job: Progress
    ) -> None:
        self._inflight = None
        job.bytes_total = size
        try:
            if size >= WORKER_MIN_BYTES:
                await self._stream_worker(path, options, bom, job)
            else:
                await self._stream_thread(path, options, bom, job)
            await self._drain()
            job.bytes_read = size
        finally:
            task, self._inflight = self._inflight, None
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _stream_thread(
        self, path: Path, options: dict[str, Any], bom: bool, job: Progress
    ) -> None:
        """Map in a thread while the event loop stores: PostgreSQL works on batch N (COPY,
        aggregates) while batch N+1 is mapped."""
        batches = map_batches(path, options, bom, BATCH_ROWS)
        try:
            while True:
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    return
                await self._submit(job, batch)
        finally:
            with contextlib.suppress(ValueError):  # still running in its thread: it ends alone
                batches.close()

    async def _stream_worker(
        self, path: Path, options: dict[str, Any], bom: bool, job: Progress
    ) -> None:
        """Map in `WORKERS` child processes while this one cuts records and stores.

        This process reads the file and cuts it into records (`_records`), sends them
        `BATCH_ROWS` at a time to the workers (`_map_worker`) through a bounded queue, puts
        the mapped batches back in file order and stores them (one in flight). Queues are
        bounded, so memory stays flat.
        """
        ctx = multiprocessing.get_context("spawn")
        n = max(1, WORKERS)
        tasks: Any = ctx.Queue(maxsize=2 * n)
        results: Any = ctx.Queue(maxsize=2 * n)
        workers = [
            ctx.Process(
                target=_map_worker,
                args=(options, tasks, results, self.ref),
                name=f"cdrstats-csv-map-{i}",
                daemon=True,
            )
            for i in range(n)
        ]
        for worker in workers:
            worker.start()
        stop = threading.Event()
        producer = asyncio.create_task(self._produce(path, options, bom, tasks, n, stop))
        try:
            pending: dict[int, _Batch] = {}
            next_seq = 0
            while not (producer.done() and next_seq >= producer.result()):
                kind, seq, value = await asyncio.to_thread(_receive, results, workers, stop)
                if kind == "error":
                    raise CsvImportError(value)
                if kind == "batch":
                    pending[seq] = value
                    while next_seq in pending:
                        await self._submit(job, pending.pop(next_seq))
                        next_seq += 1
        finally:
            stop.set()
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
            for worker in workers:
                await asyncio.to_thread(worker.join, 10)
            tasks.close()
            results.close()

    async def _produce(
        self,
        path: Path,
        options: dict[str, Any],
        bom: bool,
        tasks: Any,
        workers: int,
        stop: threading.Event,
    ) -> int:
        """Send the file's records to the workers; returns how many batches were sent."""
        mapping = mapping_from_options(options, "profile")
        sent = 0
        header: tuple[str, ...] | None = None
        records: list[RawRecord] = []
        offset = 0
        chunks = _records(path, mapping, bom)
        while True:
            got = await asyncio.to_thread(next, chunks, None)
            if got is None:
                break
            header, split, base = got
            i = 0
            while i < len(split):
                part = split[i : i + BATCH_ROWS - len(records)]
                records += part
                i += len(part)
                offset = base + part[-1].end
                if len(records) >= BATCH_ROWS:
                    task = (sent, header, *_pack(records), offset)
                    await asyncio.to_thread(_put, tasks, task, stop)
                    sent, records = sent + 1, []
        task = (sent, header, *_pack(records), offset)
        await asyncio.to_thread(_put, tasks, task, stop)
        for _ in range(workers):
            await asyncio.to_thread(_put, tasks, None, stop)
        return sent + 1


def _pack(records: list[RawRecord]) -> tuple[array[int], array[int], bytes]:
    """Records as (line numbers, sizes, their bytes end to end): a few objects to pickle
    for the mapping processes instead of thousands."""
    return (
        array("q", map(_LINE_OF, records)),
        array("q", [len(data) for data in map(_DATA_OF, records)]),
        b"".join(map(_DATA_OF, records)),
    )


def _unpack(lines: array[int], sizes: array[int], blob: bytes) -> Iterator[tuple[int, bytes]]:
    """(line, record bytes) of what `_pack` made."""
    pos = 0
    for line, size in zip(lines, sizes, strict=True):
        yield line, blob[pos : pos + size]
        pos += size


_LINE_OF = operator.attrgetter("line")
_DATA_OF = operator.attrgetter("data")


def _put(queue: Any, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            queue.put(item, timeout=0.5)
            return
        except Full:
            continue
    raise CsvImportError("import stopped")


def _receive(queue: Any, workers: list[Any], stop: threading.Event) -> tuple[str, int, Any]:
    """The next message from the workers: ("batch", seq, _Batch), ("error", -1, message), or
    ("idle", -1, None) after half a second without one (the caller checks the producer)."""
    try:
        got: tuple[str, int, Any] = queue.get(timeout=0.5)
        return got
    except Empty:
        for worker in workers:
            if worker.exitcode not in (None, 0):
                return "error", -1, f"a mapping process stopped (exit code {worker.exitcode})"
        return "idle", -1, None


def _map_worker(options: dict[str, Any], tasks: Any, results: Any, ref: store.AgentRef) -> None:
    """Child process: map (seq, header, *`_pack`ed records, offset) tasks until None; put
    ("batch", seq, _Batch) or ("error", -1, message) on `results`.

    The rows are also prepared for COPY here (`Ingestor.prepare`: less for the storing
    process to do, and cheaper to send back than the mapped rows).
    """
    # Mapping allocates a few containers per row and keeps no cycles: collecting garbage less
    # often saves ~10 % of this process's CPU (its own process: nothing else is affected).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        mapping = mapping_from_options(options, "profile")
        limits = (store.MIN_START_US, wire.now_us() + store.MAX_FUTURE_US)
        ingestor = store.Ingestor()
        while True:
            task = tasks.get()
            if task is None:
                return
            seq, header, lines, sizes, blob, offset = task
            records = list(_unpack(lines, sizes, blob))
            batch = _Batch(offset=offset)
            for line, data in records:
                _map_one(mapping, header, line, data, batch, limits)
            if batch.rows:
                try:
                    batch.prepared = ingestor.prepare(ref, batch.rows, wire.now_us())
                except store.BadRows:  # mapped again, left to the storing process (it
                    batch = _Batch(offset=offset)  # rejects the row the database refuses)
                    for line, data in records:
                        _map_one(mapping, header, line, data, batch, limits)
            results.put(("batch", seq, batch))
    except Exception as exc:  # reported to the parent, which fails the job with it
        results.put(("error", -1, f"mapping failed: {type(exc).__name__}: {exc}"))


def _records(
    path: Path, mapping: Mapping, bom: bool
) -> Iterator[tuple[tuple[str, ...] | None, list[RawRecord], int]]:
    """(header, records, base) per `CHUNK_BYTES` chunk of the file; the header line is
    consumed. `base + record.end` is the file position after a record.

    Raises CsvImportError when the header line is unusable or missing.
    """
    header: tuple[str, ...] | None = None
    want_header = mapping.header
    line = 1
    buf = b""
    base = 3 if bom else 0
    with open(path, "rb") as fh:
        if bom:
            fh.read(3)
        while True:
            chunk = fh.read(CHUNK_BYTES)
            final = not chunk
            buf = buf + chunk if buf else chunk
            split = split_records(
                buf,
                first_line=line,
                quote=mapping.quote_byte,
                max_lines=mapping.max_record_lines,
                final=final,
                accept=mapping.plausible,
            )
            buf = buf[split.consumed :]
            line += split.lines
            records = split.records
            if want_header and header is None and records:
                parsed = mapping.parse_header(records[0].data)
                if isinstance(parsed, Rejection):
                    raise CsvImportError(f"line {records[0].line}: {parsed.reason}")
                header, records = parsed, records[1:]
            if records:
                yield header, records, base
            base += split.consumed
            if final:
                break
    if want_header and header is None:
        raise CsvImportError(f"{path.name}: no header line (the file holds no records)")


def _map_one(
    mapping: Mapping,
    header: tuple[str, ...] | None,
    line: int,
    data: bytes,
    batch: _Batch,
    limits: tuple[int, int],
) -> None:
    """Map one record into `batch` (a row, or a reject with its reason)."""
    batch.read += 1
    if b"\x00" in data:
        batch.rejects.append((line, "holds a NUL byte (binary data)", _raw_text(data, mapping)))
        return
    row = mapping.map_row(data, header)
    if isinstance(row, Rejection):
        batch.rejects.append((line, row.reason, _raw_text(data, mapping)))
        return
    start = row[1]
    if start < limits[0] or start > limits[1]:
        when = wire.from_us(start).isoformat()
        why = (
            f"start {when} is before 2000"
            if start < limits[0]
            else f"start {when} is more than a day in the future"
        )
        batch.rejects.append((line, why, _raw_text(data, mapping)))
        return
    batch.rows.append(row)
    batch.lines.append(line)


def map_batches(
    path: Path, options: dict[str, Any], bom: bool, batch_rows: int
) -> Generator[_Batch, None, None]:
    """The file's records mapped to wire rows (and rejects), `batch_rows` CDRs at a time.

    Reads `CHUNK_BYTES` at a time (flat memory); the last batch may be empty. Raises
    CsvImportError when the header line is unusable.
    """
    mapping = mapping_from_options(options, "profile")
    limits = (store.MIN_START_US, wire.now_us() + store.MAX_FUTURE_US)
    batch = _Batch()
    for header, records, base in _records(path, mapping, bom):
        for record in records:
            _map_one(mapping, header, record.line, record.data, batch, limits)
            if len(batch.rows) >= batch_rows:
                batch.offset = base + record.end
                yield batch
                batch = _Batch()
        batch.offset = base + records[-1].end
        if len(batch.rejects) >= batch_rows:
            yield batch
            batch = _Batch()
    yield batch


# --- reports ----------------------------------------------------------------------------------


def write_reject_report(
    conn: psycopg.Connection[Any], tenant_id: int, job_id: uuid.UUID, out: IO[str]
) -> int:
    """The rejected rows of a job as CSV (line, reason, raw); returns how many were written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason", "raw"])
    n = 0
    with conn.transaction(), conn.cursor(name="import_rejects") as cur:
        cur.execute(
            "SELECT line, reason, raw FROM import_reject WHERE tenant_id = %s AND job_id = %s"
            " ORDER BY line",
            (tenant_id, job_id),
        )
        for line, reason, raw in cur:
            writer.writerow([line, reason, raw])
            n += 1
    return n


def reject_report(conn: psycopg.Connection[Any], tenant_id: int, job_id: uuid.UUID) -> str:
    buf = io.StringIO()
    write_reject_report(conn, tenant_id, job_id, buf)
    return buf.getvalue()


def first_rejects(
    conn: psycopg.Connection[Any], tenant_id: int, job_id: uuid.UUID, limit: int = 10
) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT line, reason FROM import_reject WHERE tenant_id = %s AND job_id = %s"
        " ORDER BY line LIMIT %s",
        (tenant_id, job_id, limit),
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def profile_options_text(options: dict[str, Any]) -> str:
    return json.dumps(options, ensure_ascii=False, sort_keys=True)


def profile_from_toml(text: str, source: str) -> dict[str, Any]:
    """A profile's options from TOML text (top-level keys, as in a [[source]] table)."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"is not valid TOML: {exc}") from None
    return doc


__all__ = [
    "BUILTIN_PROFILES",
    "CsvImportError",
    "Importer",
    "Progress",
    "check_profile",
    "import_agent_id",
    "list_profiles",
    "load_profile",
    "reject_report",
    "save_profile",
    "write_reject_report",
]
