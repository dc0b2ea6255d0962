"""CSV imports over HTTP: upload, preview, jobs, rejected rows, profiles (docs/csv-import.md).

    POST /api/v1/imports                  admins: upload a file, start its import (202)
    GET  /api/v1/imports                  the tenant's jobs, newest first
    GET  /api/v1/imports/{id}             one job's counters
    GET  /api/v1/imports/{id}/rejects.csv its rejected rows (line, reason, raw)
    POST /api/v1/imports/preview          the first rows as parsed, detection, guessed fields
    GET  /api/v1/import-profiles          built-in and tenant profiles
    POST /api/v1/import-profiles          admins: save a tenant profile {name, options}
    DELETE /api/v1/import-profiles/{name} admins: delete a tenant profile

Uploads are `multipart/form-data` (a `file` part and fields) or a raw body (fields in the
query string); either way the file is streamed to `<upload dir>/<job id>.csv`, never held in
memory, and deleted when its import ends. Requests authenticated by the console's session
cookie must carry `X-CSRF-Token` on POST (API tokens need none).

The import runs in a thread of its own with its own event loop and connection, so mapping a
file never stalls this process's requests; the `import_job` row (and NOTIFY cdrstats_import,
fanned out as SSE `import` events) lets any tab on any collector follow it. This process
touches the row every `HEARTBEAT_S` while the job runs; a job still `running` whose row was
not touched for `STALE_S` (its collector stopped or lost the database) is marked failed the
next time the tenant's jobs are read, with a reason saying to import the file again (the rows
already stored are then counted as duplicates). Jobs are not resumed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import dataclasses
import io
import json
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cdrstats_csv.detect as csvdetect
import psycopg
from cdrstats_agent import logs
from cdrstats_agent.errors import ConfigError
from cdrstats_csv.config import mapping_from_options
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import apidoc, audit, auth, csvimport, replies, store, tenants
from .state import get_state

log = logs.get_logger("cdrstats.collector.imports")

ADMIN_ROLES = auth.ADMIN_ROLES
MAX_FIELD_BYTES = 64 * 1024
MAX_RUNNING = 2
"""Imports running at once in one collector process; more are refused with 429."""
HEARTBEAT_S = 20.0
STALE_S = 120
"""A `running` job whose row was not touched for this long is marked failed."""
CUSTOM_PROFILE = "(custom mapping)"
"""The `import_job.profile` of an import made with an explicit mapping."""
MAX_PREVIEW_BYTES = 16 << 20
"""A preview needs the first 64 KiB; a client sending more than this is refused (413)."""
_CSRF_SESSION_KEY = "csrf"  # cdrstats_web.security keeps the session's token under this key
_SWITCH = re.compile(r"^[^\x00-\x1f]{1,100}$")


class BadRequest(HTTPException):
    """400 naming the request field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(400, f"{param}: {message}")
        self.param = param


# --- where uploads go --------------------------------------------------------------------------


def upload_dir(request: Request) -> Path:
    """`[import] upload_dir`, by default `<temp dir>/cdrstats-imports`."""
    configured = get_state(request).settings.upload_dir
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "cdrstats-imports"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def max_upload_bytes(request: Request) -> int:
    """`[import] max_upload_mb` in bytes."""
    return get_state(request).settings.max_upload_bytes


def _sweep_files(folder: Path, keep: set[str], older_than_s: float = 86400.0) -> None:
    """Remove uploads left behind by a collector that stopped (best effort)."""
    now = time.time()
    with contextlib.suppress(OSError):
        for path in folder.glob("*.csv"):
            with contextlib.suppress(OSError):
                if path.name not in keep and now - path.stat().st_mtime > older_than_s:
                    path.unlink()


# --- reading an upload ---------------------------------------------------------------------------


@dataclasses.dataclass
class Upload:
    fields: dict[str, str]
    file_name: str | None = None
    size: int = 0
    head: bytes = b""
    """The file's first `csvdetect.SAMPLE_BYTES`."""
    seen_file: bool = False


class _Sink:
    """Where the file part goes: an open file (or nothing, for a preview), with the head kept."""

    def __init__(self, out: IO[bytes] | None, limit: int, upload: Upload) -> None:
        self.out = out
        self.limit = limit
        self.upload = upload

    def write(self, data: bytes) -> None:
        up = self.upload
        up.seen_file = True
        if len(up.head) < csvdetect.SAMPLE_BYTES:
            up.head += data[: csvdetect.SAMPLE_BYTES - len(up.head)]
        up.size += len(data)
        if up.size > self.limit:
            raise HTTPException(413, f"file: larger than {self.limit >> 20} MiB")
        if self.out is not None:
            self.out.write(data)


async def read_upload(request: Request, out: IO[bytes] | None, limit: int) -> Upload:
    """Stream the request's file into `out` (None: keep only its head, e.g. for a preview).

    `multipart/form-data`: the part named `file` is the file, other parts are fields.
    Anything else: the body is the file and the query string holds the fields.
    """
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "multipart/form-data":
        up = Upload({k: v for k, v in request.query_params.items()})
        up.file_name = up.fields.get("file_name")
        sink = _Sink(out, limit, up)
        async for chunk in request.stream():
            if chunk:
                sink.write(chunk)
        up.seen_file = True
        return up
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("content-type", "multipart/form-data without a boundary")
    up = Upload({k: v for k, v in request.query_params.items() if k == "tenant"})
    sink = _Sink(out, limit, up)
    part: dict[str, Any] = {}
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        part.clear()
        part.update(name=None, filename=None, value=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].lower() == b"content-disposition":
            _, opts = parse_options_header(header["value"])
            name = opts.get(b"name")
            part["name"] = name.decode("utf-8", "replace") if name is not None else None
            filename = opts.get(b"filename")
            if filename is not None:
                part["filename"] = filename.decode("utf-8", "replace")
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("name") == "file":
            sink.write(data[start:end])
            return
        value: bytearray = part["value"]
        value += data[start:end]
        if len(value) > MAX_FIELD_BYTES:
            raise BadRequest(str(part.get("name")), f"larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        name = part.get("name")
        if name == "file":
            up.seen_file = True
            if up.file_name is None and part.get("filename"):
                up.file_name = part["filename"]
        elif name:
            up.fields[name] = bytes(part["value"]).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as exc:  # python_multipart's parse errors
        raise BadRequest("body", f"not a readable multipart/form-data body: {exc}") from None
    if "file_name" in up.fields:
        up.file_name = up.fields["file_name"]
    return up


# --- request checks ------------------------------------------------------------------------------


def check_csrf(request: Request) -> None:
    """A POST authenticated by the console's session cookie must carry X-CSRF-Token."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return
    expected = request.session.get(_CSRF_SESSION_KEY) if "session" in request.scope else None
    sent = request.headers.get("x-csrf-token", "")
    if not (
        isinstance(expected, str)
        and sent
        and secrets.compare_digest(expected.encode(), sent.encode())
    ):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def _mapping(fields: dict[str, str]) -> dict[str, Any] | None:
    text = fields.get("mapping", "").strip()
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise BadRequest("mapping", f"is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise BadRequest("mapping", "must be a JSON object of mapping options")
    return options


def check_mapping(options: dict[str, Any]) -> None:
    """BadRequest naming the option (`mapping.fields.start: is required ...`)."""
    trial = dict(options)
    if "preset" not in trial and "column_names" not in trial:
        trial.setdefault("header", True)
    try:
        mapping_from_options(trial, "mapping")
    except ConfigError as exc:
        raise BadRequest("mapping", str(exc).removeprefix("mapping: ")) from None


def _timezone(fields: dict[str, str]) -> str | None:
    zone = fields.get("timezone", "").strip() or None
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadRequest(
                "timezone", f"unknown timezone {zone!r}: use an IANA name such as Europe/Paris"
            ) from None
    return zone


async def _profile(
    conn: psycopg.AsyncConnection[Any], tenant_id: int, fields: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """(label, options) from the `profile` name or the explicit `mapping`."""
    name = fields.get("profile", "").strip()
    options = _mapping(fields)
    if name and options is not None:
        raise BadRequest("profile", "give a profile name or a mapping, not both")
    if options is not None:
        check_mapping(options)
        return CUSTOM_PROFILE, options
    if not name:
        raise BadRequest("profile", "give a profile name or a mapping")
    try:
        return name, await csvimport.load_profile(conn, tenant_id, name)
    except tenants.InvalidArgument as exc:
        raise BadRequest("profile", str(exc)) from None


def _error(exc: HTTPException) -> Response:
    extra = {"param": exc.param} if isinstance(exc, BadRequest | auth.ParamError) else {}
    return replies.error(
        exc.status_code,
        str(exc.detail),
        headers=dict(exc.headers) if exc.headers else None,
        **extra,
    )


def api_call(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HTTPException as exc:
            return _error(exc)
        except ClientDisconnect:
            log.info("upload_abandoned", path=request.url.path)
            return replies.error(400, "the client hung up before the end of the upload")
        except (psycopg.OperationalError, PoolTimeout):
            return replies.unavailable("database unavailable, retry later")

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- jobs ----------------------------------------------------------------------------------------

_JOB = (
    "SELECT j.id, j.status, j.error, j.rows_read, j.imported, j.duplicates, j.rejected,"
    " j.file_name, j.file_size, j.profile, s.name, j.created_by, j.started_at, j.updated_at,"
    " j.finished_at, j.options, j.bytes_read FROM import_job j"
    " JOIN switch s ON s.tenant_id = j.tenant_id AND s.id = j.switch_id"
)

_RUNNING: dict[uuid.UUID, threading.Thread] = {}


def _iso(d: datetime | None) -> str | None:
    return None if d is None else d.isoformat()


def _job_json(row: Any, *, options: bool = False) -> dict[str, Any]:
    job_id = row[0]
    doc = {
        "id": str(job_id),
        "status": row[1],
        "error": row[2],
        "rows_read": int(row[3]),
        "imported": int(row[4]),
        "duplicates": int(row[5]),
        "rejected": int(row[6]),
        "file_name": row[7],
        "file_size": int(row[8]),
        "profile": row[9],
        "switch": row[10],
        "created_by": row[11],
        "started_at": _iso(row[12]),
        "updated_at": _iso(row[13]),
        "finished_at": _iso(row[14]),
        "bytes_read": int(row[16]),
    }
    if options:
        doc["options"] = row[15]
    return doc


async def sweep_stale(pool: Any, tenant_id: int) -> int:
    """Mark failed the tenant's `running` jobs nobody touched for STALE_S; NOTIFY each."""
    reason = (
        f"no progress for {STALE_S} s: the collector running this import stopped or lost the"
        " database; import the file again (rows already stored are skipped as duplicates)"
    )
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE import_job SET status = 'failed', error = %s, finished_at = now(),"
            " updated_at = now() WHERE tenant_id = %s AND status = 'running'"
            " AND updated_at < now() - make_interval(secs => %s) AND NOT (id = ANY(%s))"
            " RETURNING id, rows_read, imported, duplicates, rejected",
            (reason, tenant_id, STALE_S, list(_RUNNING)),
        )
        rows = await cur.fetchall()
        for r in rows:
            payload = csvimport.Progress(
                r[0], tenant_id, "failed", int(r[1]), int(r[2]), int(r[3]), int(r[4]), reason
            ).payload()
            await conn.execute("SELECT pg_notify(%s, %s)", (csvimport.NOTIFY_CHANNEL, payload))
    return len(rows)


@dataclasses.dataclass(frozen=True)
class JobSpec:
    database_url: str
    aggregates: bool
    tenant_id: int
    switch_id: int
    job_id: uuid.UUID
    path: Path
    label: str
    profile: dict[str, Any]
    timezone: str | None
    created_by: str
    file_name: str


async def _import(spec: JobSpec, created: concurrent.futures.Future[None]) -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(
            spec.database_url,
            autocommit=True,
            connect_timeout=10,
            application_name="cdrstats-import",
        )
    except BaseException as exc:
        if not created.done():
            created.set_exception(exc)
        raise
    async with conn:

        def job_created(_: csvimport.Progress) -> None:
            if not created.done():
                created.set_result(None)

        importer = csvimport.Importer(
            conn,
            store.Ingestor(aggregates=spec.aggregates),
            tenant_id=spec.tenant_id,
            switch_id=spec.switch_id,
            created=job_created,
        )
        try:
            job = await importer.run(
                spec.path,
                spec.label,
                options=spec.profile,
                timezone=spec.timezone,
                created_by=spec.created_by,
                job_id=spec.job_id,
                file_name=spec.file_name,
            )
            log.info(
                "import_done",
                job=str(job.job_id),
                tenant=spec.tenant_id,
                rows_read=job.rows_read,
                imported=job.imported,
                duplicates=job.duplicates,
                rejected=job.rejected,
            )
        except BaseException as exc:
            if not created.done():
                created.set_exception(exc)
            log.warning("import_failed", job=str(spec.job_id), reason=str(exc)[:300])


def _thread_main(spec: JobSpec, created: concurrent.futures.Future[None]) -> None:
    try:
        asyncio.run(_import(spec, created))
    except BaseException as exc:  # already recorded in the job row when it exists
        if not created.done():
            created.set_exception(exc)
    finally:
        with contextlib.suppress(OSError):
            spec.path.unlink()
        _RUNNING.pop(spec.job_id, None)


async def _heartbeat(pool: Any, spec: JobSpec, thread: threading.Thread) -> None:
    """Touch the job row while its thread runs (so sweep_stale leaves it alone)."""
    while thread.is_alive():
        await asyncio.sleep(HEARTBEAT_S)
        if not thread.is_alive():
            break
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE import_job SET updated_at = now() WHERE tenant_id = %s"
                    " AND id = %s AND status = 'running'",
                    (spec.tenant_id, spec.job_id),
                )


_TASKS: set[asyncio.Task[None]] = set()


def _busy() -> HTTPException:
    return HTTPException(
        429,
        f"{MAX_RUNNING} imports are running on this collector: retry when one ends",
        headers={"Retry-After": "10"},
    )


async def start_import(request: Request, spec: JobSpec) -> None:
    """Start the job's thread; returns once its job row exists (or raises why it cannot)."""
    if len(_RUNNING) >= MAX_RUNNING:  # checked again: uploads may have arrived meanwhile
        raise _busy()
    created: concurrent.futures.Future[None] = concurrent.futures.Future()
    thread = threading.Thread(
        target=_thread_main, args=(spec, created), name=f"cdrstats-import-{spec.job_id}"
    )
    thread.daemon = True  # a stopping collector does not wait: the job is swept as stale
    _RUNNING[spec.job_id] = thread
    thread.start()
    await asyncio.wrap_future(created)
    task = asyncio.create_task(_heartbeat(get_state(request).pool, spec, thread))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


# --- endpoints -----------------------------------------------------------------------------------


async def _tenant(request: Request, roles: tuple[str, ...] | None = None) -> tuple[Any, int]:
    who = await auth.require(request, roles=roles)
    return who, auth.tenant_scope(who, request.query_params.get("tenant"))


async def _ensure_switch(pool: Any, tenant_id: int, name: str) -> int:
    if not _SWITCH.match(name) or not name.strip():
        raise BadRequest("switch", "the name of the switch or source these CDRs come from")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO switch (tenant_id, name) VALUES (%s, %s)"
            " ON CONFLICT (tenant_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            (tenant_id, name.strip()),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


@api_call
async def create_endpoint(request: Request) -> Response:
    """`POST /api/v1/imports`: upload a file and start its import."""
    who, tenant_id = await _tenant(request, ADMIN_ROLES)
    check_csrf(request)
    state = get_state(request)
    if len(_RUNNING) >= MAX_RUNNING:
        raise _busy()
    folder = upload_dir(request)
    job_id = uuid.uuid4()
    path = folder / f"{job_id}.csv"
    _sweep_files(folder, {f"{j}.csv" for j in _RUNNING})
    started = False
    try:
        out = await asyncio.to_thread(path.open, "wb")
        with out:
            up = await read_upload(request, out, max_upload_bytes(request))
        if not up.seen_file:
            raise BadRequest("file", "no file in the request (a multipart part named `file`)")
        try:
            csvdetect.detect(up.head, complete=up.size <= len(up.head))
        except csvdetect.NotText as exc:
            raise BadRequest("file", str(exc)) from None
        switch = up.fields.get("switch", "").strip()
        timezone = _timezone(up.fields)
        async with state.pool.connection() as conn:
            label, profile = await _profile(conn, tenant_id, up.fields)
        switch_id = await _ensure_switch(state.pool, tenant_id, switch)
        name = (up.file_name or "upload.csv").replace("/", "_")[-200:]
        spec = JobSpec(
            state.settings.database_url,
            state.settings.aggregates,
            tenant_id,
            switch_id,
            job_id,
            path,
            label,
            profile,
            timezone,
            f"web:{who.username}",
            name,
        )
        try:
            await start_import(request, spec)
        except ConfigError as exc:
            raise BadRequest(
                "mapping" if label == CUSTOM_PROFILE else "profile", str(exc)
            ) from None
        except csvimport.CsvImportError as exc:
            raise BadRequest("file", str(exc)) from None
        started = True
    finally:
        if not started:
            with contextlib.suppress(OSError):
                path.unlink()
    log.info("import_started", job=str(job_id), tenant=tenant_id, size=up.size, user=who.username)
    async with auth.tenant_connection(state.pool, tenant_id) as conn:
        cur = await conn.execute(
            _JOB + " WHERE j.tenant_id = %s AND j.id = %s", (tenant_id, job_id)
        )
        row = await cur.fetchone()
    doc = _job_json(row) if row else {"id": str(job_id), "status": "running"}
    return JSONResponse(
        {**doc, "tenant_id": tenant_id, "url": f"/api/v1/imports/{job_id}"},
        status_code=202,
        headers={"Location": f"/api/v1/imports/{job_id}?tenant={tenant_id}"},
    )


def _job_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["job"])
    except ValueError:
        raise HTTPException(404, "no such import") from None


@api_call
async def list_endpoint(request: Request) -> Response:
    """`GET /api/v1/imports`: the tenant's jobs, newest first (`limit`, default 50)."""
    _who, tenant_id = await _tenant(request)
    try:
        limit = max(1, min(500, int(request.query_params.get("limit", "50"))))
    except ValueError:
        raise auth.ParamError("limit", "must be an integer") from None
    state = get_state(request)
    await sweep_stale(state.pool, tenant_id)
    async with auth.tenant_connection(state.pool, tenant_id) as conn:
        cur = await conn.execute(
            _JOB + " WHERE j.tenant_id = %s ORDER BY j.started_at DESC LIMIT %s",
            (tenant_id, limit),
        )
        rows = await cur.fetchall()
    return JSONResponse({"tenant_id": tenant_id, "imports": [_job_json(r) for r in rows]})


@api_call
async def job_endpoint(request: Request) -> Response:
    """`GET /api/v1/imports/{id}`: one job's counters (and the options it used)."""
    _who, tenant_id = await _tenant(request)
    job_id = _job_id(request)
    state = get_state(request)
    await sweep_stale(state.pool, tenant_id)
    async with auth.tenant_connection(state.pool, tenant_id) as conn:
        cur = await conn.execute(
            _JOB + " WHERE j.tenant_id = %s AND j.id = %s", (tenant_id, job_id)
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, "no such import")
    return JSONResponse({"tenant_id": tenant_id, **_job_json(row, options=True)})


@api_call
async def rejects_endpoint(request: Request) -> Response:
    """`GET /api/v1/imports/{id}/rejects.csv`: line, reason, raw of each rejected row kept."""
    _who, tenant_id = await _tenant(request)
    job_id = _job_id(request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason", "raw"])
    async with auth.tenant_connection(get_state(request).pool, tenant_id) as conn:
        cur = await conn.execute(
            "SELECT file_name FROM import_job WHERE tenant_id = %s AND id = %s",
            (tenant_id, job_id),
        )
        job = await cur.fetchone()
        if job is None:
            raise HTTPException(404, "no such import")
        async with conn.cursor(name="import_rejects") as rc:
            await rc.execute(
                "SELECT line, reason, raw FROM import_reject WHERE tenant_id = %s AND job_id = %s"
                " ORDER BY line",
                (tenant_id, job_id),
            )
            async for line, reason, raw in rc:
                writer.writerow([line, reason, raw])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(job[0])).stem)[:80] or "import"
    return Response(
        out.getvalue().encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{stem}-rejected.csv"'},
    )


def _cdr_json(cdr: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(cdr):
        value = getattr(cdr, f.name)
        if f.name == "extra":
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif hasattr(value, "value") and not isinstance(value, int | str):
            value = value.value
        doc[f.name] = value
    return doc


@api_call
async def preview_endpoint(request: Request) -> Response:
    """`POST /api/v1/imports/preview`: the file's first rows as the import would read them.

    Send the file's first 64 KiB (or the whole file) as `file`; `complete=true` when that is
    the whole file. With `profile` or `mapping` the rows are mapped with it, else with the
    fields guessed from the header names.
    """
    _who, tenant_id = await _tenant(request)
    check_csrf(request)
    up = await read_upload(request, None, MAX_PREVIEW_BYTES)
    sample = up.head
    complete = up.fields.get("complete", "").lower() in ("1", "true", "yes", "on")
    complete = complete and up.size <= len(sample)
    state = get_state(request)
    profile: dict[str, Any] | None = None
    async with state.pool.connection() as conn:
        if up.fields.get("profile", "").strip() or up.fields.get("mapping", "").strip():
            _label, profile = await _profile(conn, tenant_id, up.fields)
        cur = await conn.execute("SELECT timezone FROM tenant WHERE id = %s", (tenant_id,))
        row = await cur.fetchone()
    zone = _timezone(up.fields) or (str(row[0]) if row else "UTC")
    if profile is not None and up.fields.get("timezone"):
        profile = {k: v for k, v in profile.items() if k != "usegmtime"} | {"timezone": zone}
    try:
        found = await asyncio.to_thread(
            csvimport.preview, sample, profile, complete=complete, timezone=zone
        )
    except csvdetect.NotText as exc:
        raise BadRequest("file", str(exc)) from None
    d = found.detected
    return JSONResponse(
        {
            "tenant_id": tenant_id,
            "detected": {
                "encoding": d.encoding,
                "bom": d.bom,
                "delimiter": d.delimiter,
                "header": d.header,
                "decimal_comma": d.decimal_comma,
                "columns": d.columns,
            },
            "options": found.options,
            "header": list(found.header) if found.header else None,
            "guesses": found.guesses,
            "problem": found.problem,
            "rows": [
                {
                    "line": r.line,
                    "values": r.values,
                    "cdr": _cdr_json(r.cdr) if r.cdr is not None else None,
                    "reason": r.reason,
                }
                for r in found.rows
            ],
        }
    )


@api_call
async def profiles_endpoint(request: Request) -> Response:
    """`GET /api/v1/import-profiles`: the built-in profiles and the tenant's own."""
    _who, tenant_id = await _tenant(request)
    async with auth.tenant_connection(get_state(request).pool, tenant_id) as conn:
        cur = await conn.execute(
            "SELECT name, options, updated_at FROM import_profile WHERE tenant_id = %s"
            " ORDER BY name",
            (tenant_id,),
        )
        rows = await cur.fetchall()
    found = [
        {"name": n, "builtin": True, "options": o} for n, o in csvimport.BUILTIN_PROFILES.items()
    ]
    found += [
        {"name": r[0], "builtin": False, "options": r[1], "updated_at": _iso(r[2])} for r in rows
    ]
    return JSONResponse({"tenant_id": tenant_id, "profiles": found})


@api_call
async def save_profile_endpoint(request: Request) -> Response:
    """`POST /api/v1/import-profiles` {name, options}: create or replace a tenant profile."""
    who, tenant_id = await _tenant(request, ADMIN_ROLES)
    check_csrf(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send the profile as Content-Type: application/json")
    body = await request.body()
    if len(body) > MAX_FIELD_BYTES:
        raise HTTPException(413, f"body larger than {MAX_FIELD_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest("body", f"is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body", "must be a JSON object {name, options}")
    name, options = doc.get("name"), doc.get("options")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("name", "the profile's name is required")
    if not isinstance(options, dict):
        raise BadRequest("options", "must be a JSON object of mapping options")
    check_mapping(options)
    url = get_state(request).settings.database_url

    def save() -> None:
        with psycopg.connect(url, connect_timeout=10) as conn, conn.transaction():
            csvimport.save_profile(conn, tenant_id, name.strip(), options)
            audit.record_sync(
                conn, tenant_id, who.user_id, who.username, "import_profile.save", name.strip()
            )

    try:
        await asyncio.to_thread(save)
    except tenants.InvalidArgument as exc:
        raise BadRequest("name", str(exc)) from None
    except ConfigError as exc:
        raise BadRequest("options", str(exc)) from None
    return JSONResponse(
        {"tenant_id": tenant_id, "name": name.strip(), "options": options}, status_code=201
    )


@api_call
async def delete_profile_endpoint(request: Request) -> Response:
    """`DELETE /api/v1/import-profiles/{name}`: delete a tenant profile (audited)."""
    who, tenant_id = await _tenant(request, ADMIN_ROLES)
    check_csrf(request)
    name = request.path_params["name"]
    url = get_state(request).settings.database_url

    def delete() -> bool:
        with psycopg.connect(url, connect_timeout=10) as conn, conn.transaction():
            gone = csvimport.delete_profile(conn, tenant_id, name)
            if gone:
                audit.record_sync(
                    conn, tenant_id, who.user_id, who.username, "import_profile.delete", name
                )
            return gone

    try:
        gone = await asyncio.to_thread(delete)
    except tenants.InvalidArgument as exc:
        raise BadRequest("name", str(exc)) from None
    if not gone:
        raise HTTPException(404, f"no import profile {name!r} in tenant {tenant_id}")
    return JSONResponse({"tenant_id": tenant_id, "name": name, "deleted": True})


def routes() -> list[BaseRoute]:
    """The import routes, to mount in the collector app (before the console)."""
    return [
        Route("/api/v1/imports", create_endpoint, methods=["POST"]),
        Route("/api/v1/imports", list_endpoint, methods=["GET"]),
        Route("/api/v1/imports/preview", preview_endpoint, methods=["POST"]),
        Route("/api/v1/imports/{job}", job_endpoint, methods=["GET"]),
        Route("/api/v1/imports/{job}/rejects.csv", rejects_endpoint, methods=["GET"]),
        Route("/api/v1/import-profiles", profiles_endpoint, methods=["GET"]),
        Route("/api/v1/import-profiles", save_profile_endpoint, methods=["POST"]),
        Route("/api/v1/import-profiles/{name}", delete_profile_endpoint, methods=["DELETE"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """The import routes in the OpenAPI document (`openapi.py` adds them)."""
    errors = apidoc.errors

    common = dict(
        _401="no or invalid credentials",
        _404="another tenant, or no such import",
        _503="PostgreSQL is unavailable",
    )
    tenant = {
        "name": "tenant",
        "in": "query",
        "required": False,
        "schema": {"type": "integer"},
        "description": "superadmins: the tenant id",
    }
    job = {"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}
    obj = {"type": "object"}
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
    upload_fields = {
        "file": {"type": "string", "format": "binary", "description": "the CSV file"},
        "profile": {"type": "string", "description": "a profile name (or give `mapping`)"},
        "mapping": {
            "type": "string",
            "description": "JSON object of mapping options (docs/csv-import.md)",
        },
        "switch": {"type": "string", "description": "the switch or source of these CDRs"},
        "timezone": {"type": "string", "description": "IANA zone of local times"},
        "file_name": {"type": "string"},
    }

    def ok(code: str, text: str, media: str = "application/json") -> dict[str, Any]:
        return {code: {"description": text, "content": {media: {"schema": obj}}}}

    return {
        "/api/v1/imports": {
            "post": {
                "operationId": "create_import",
                "summary": "Upload a CSV file and import it in the background",
                "tags": ["imports"],
                "parameters": [tenant],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {"type": "object", "properties": upload_fields}
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    **ok("202", "the job, running"),
                    **errors(
                        _400="a field is wrong (`param` names it): profile, mapping, switch,"
                        " timezone, file (empty, binary)",
                        _403="not an admin, or no X-CSRF-Token with a session cookie",
                        _413="file too large",
                        _429="too many imports running",
                        **common,
                    ),
                },
                "security": security,
            },
            "get": {
                "operationId": "list_imports",
                "summary": "The tenant's import jobs, newest first",
                "tags": ["imports"],
                "parameters": [tenant],
                "responses": {**ok("200", "jobs"), **errors(**common)},
                "security": security,
            },
        },
        "/api/v1/imports/preview": {
            "post": {
                "operationId": "preview_import",
                "summary": "The first rows of a file as parsed, detection and guessed fields",
                "tags": ["imports"],
                "parameters": [tenant],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    **upload_fields,
                                    "complete": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": {**ok("200", "the preview"), **errors(_400="bad field", **common)},
                "security": security,
            },
        },
        "/api/v1/imports/{job}": {
            "get": {
                "operationId": "get_import",
                "summary": "One import job's counters",
                "tags": ["imports"],
                "parameters": [job, tenant],
                "responses": {**ok("200", "the job"), **errors(**common)},
                "security": security,
            }
        },
        "/api/v1/imports/{job}/rejects.csv": {
            "get": {
                "operationId": "import_rejects",
                "summary": "The rejected rows of an import (line, reason, raw) as CSV",
                "tags": ["imports"],
                "parameters": [job, tenant],
                "responses": {**ok("200", "CSV", "text/csv"), **errors(**common)},
                "security": security,
            }
        },
        "/api/v1/import-profiles": {
            "get": {
                "operationId": "list_import_profiles",
                "summary": "Built-in and tenant import profiles",
                "tags": ["imports"],
                "parameters": [tenant],
                "responses": {**ok("200", "profiles"), **errors(**common)},
                "security": security,
            },
            "post": {
                "operationId": "save_import_profile",
                "summary": "Create or replace a tenant import profile",
                "tags": ["imports"],
                "parameters": [tenant],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name", "options"],
                                "properties": {"name": {"type": "string"}, "options": obj},
                            }
                        }
                    },
                },
                "responses": {
                    **ok("201", "saved"),
                    **errors(
                        _400="bad name or options (`param` names it)",
                        _403="not an admin, or no X-CSRF-Token with a session cookie",
                        _415="not application/json",
                        **common,
                    ),
                },
                "security": security,
            },
        },
        "/api/v1/import-profiles/{name}": {
            "delete": {
                "operationId": "delete_import_profile",
                "summary": "Delete a tenant import profile (built-in ones cannot be)",
                "tags": ["imports"],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    tenant,
                ],
                "responses": {
                    **ok("200", "deleted"),
                    **errors(
                        **common,
                        _400="a built-in profile",
                        _403="not an admin, or no X-CSRF-Token with a session cookie",
                    ),
                },
                "security": security,
            }
        },
    }
