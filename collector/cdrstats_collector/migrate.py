"""Schema migrations: numbered SQL files applied in order, once, under an advisory lock.

    migrations/0001_initial.sql, 0002_....sql   (NNNN_name.sql)

Each file runs in its own transaction together with its row in `schema_migrations`, so a
failed migration leaves nothing half-applied. A session-level advisory lock serialises
collectors that start at the same time: the second waits, then finds nothing left to do.
A file changed after it was applied is an error (its checksum is recorded).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import psycopg

from . import keys, partitions

MIGRATION_LOCK = (1128551251, 1)
"""Advisory lock key ('CDRS', 1) held while migrating."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The schema cannot be brought up to date; the text says why."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> bytes:
        return hashlib.sha256(self.sql.encode()).digest()


def available() -> list[Migration]:
    """The migrations shipped with this collector, in order."""
    found: list[Migration] = []
    for entry in resources.files("cdrstats_collector").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    bytea NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def applied(conn: psycopg.Connection[Any]) -> dict[int, bytes]:
    """Version → checksum of the migrations recorded in the database (empty if none)."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return {}
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(v): bytes(c) for v, c in rows}


def pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    done = applied(conn)
    return [m for m in available() if m.version not in done]


def upgrade(database_url: str, *, months_ahead: int = 2) -> list[Migration]:
    """Bring the schema up to date; returns the migrations applied by this call.

    Also creates the collector's signing key if there is none and the cdr partitions for the
    current month and `months_ahead` months after it.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
        try:
            conn.execute(_CREATE_TABLE)
            done = applied(conn)
            ran: list[Migration] = []
            for migration in available():
                recorded = done.get(migration.version)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name}.sql was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    try:
                        conn.execute(migration.sql.encode())
                    except psycopg.Error as exc:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name}.sql failed: "
                            f"{str(exc).strip().splitlines()[0]}"
                        ) from exc
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                ran.append(migration)
            keys.ensure_collector_key(conn)
            partitions.create_ahead(conn, months_ahead)
            return ran
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATION_LOCK)
