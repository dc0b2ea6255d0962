"""Helpers for the CSV import tests: a tenant, an import run, the rows it stored."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from cdrstats_collector import csvimport, store, tenants
from psycopg.rows import dict_row

REFERENCE = (Path(__file__).resolve().parents[2] / "../shared/reference").resolve()


def tenant(database_url: str, name: str = "acme", timezone: str = "UTC") -> tuple[int, int]:
    """(tenant id, switch id of its switch 'sw1'), created."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tid = tenants.add_tenant(conn, name, timezone)
        sid = tenants.ensure_switch(conn, tid, "sw1")
    return tid, sid


def save_profile(database_url: str, tid: int, name: str, options: dict[str, Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        csvimport.save_profile(conn, tid, name, options)


async def run_import(
    database_url: str,
    tid: int,
    sid: int,
    path: Path,
    profile: str,
    *,
    timezone: str | None = None,
    notes: list[dict[str, Any]] | None = None,
) -> csvimport.Progress:
    """Import `path`; with `notes`, the cdrstats_import and cdr_ingest NOTIFYs are collected."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        listener = None
        if notes is not None:
            listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
            await listener.execute(f"LISTEN {csvimport.NOTIFY_CHANNEL}")
            await listener.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        try:
            importer = csvimport.Importer(conn, store.Ingestor(), tenant_id=tid, switch_id=sid)
            job = await importer.run(path, profile, timezone=timezone)
        finally:
            if listener is not None and notes is not None:
                async for note in listener.notifies(timeout=0.5):
                    notes.append({"channel": note.channel, **json.loads(note.payload)})
                await listener.close()
    return job


def cdrs(database_url: str, tid: int) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM cdr WHERE tenant_id = %s ORDER BY start_time, key", (tid,))
        return cur.fetchall()


def job_row(database_url: str, tid: int, job_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM import_job WHERE tenant_id = %s AND id = %s", (tid, job_id))
        row: dict[str, Any] | None = cur.fetchone()
    assert row is not None
    return row


def rejects(database_url: str, tid: int, job_id: uuid.UUID) -> list[tuple[int, str]]:
    with psycopg.connect(database_url) as conn:
        found: list[tuple[int, str]] = csvimport.first_rejects(conn, tid, job_id, limit=1000)
    return found
