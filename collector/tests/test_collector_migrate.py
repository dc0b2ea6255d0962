"""Migrations: in order, once, idempotent, safe when several collectors start together."""

from __future__ import annotations

import threading

import psycopg
import pytest
from cdrstats_collector import migrate, partitions


def test_upgrade_then_nothing_to_do(empty_database_url: str) -> None:
    ran = migrate.upgrade(empty_database_url)
    assert [m.version for m in ran] == [m.version for m in migrate.available()]
    assert migrate.upgrade(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        assert migrate.pending(conn) == []
        assert conn.execute("SELECT count(*) FROM collector_key").fetchone() == (1,)
        current = partitions.current_month()
        expected = [partitions.partition_name(partitions.add_months(current, n)) for n in range(3)]
        assert partitions.existing(conn) == expected


def test_concurrent_upgrades_apply_each_migration_once(empty_database_url: str) -> None:
    barrier = threading.Barrier(4)
    results: list[list[migrate.Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate.upgrade(empty_database_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [m.version for ran in results for m in ran]
    assert sorted(applied) == [m.version for m in migrate.available()]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM collector_key").fetchone() == (1,)


def test_changed_migration_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = '\\x00' WHERE version = 1")
    with pytest.raises(migrate.MigrationError, match="was changed after it was applied"):
        migrate.upgrade(database_url)


def test_cdr_columns_match_the_wire_fields(database_url: str) -> None:
    from cdrstats_collector import store

    with psycopg.connect(database_url) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'cdr'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ).fetchall()
        ]
    assert set(store.COPY_COLUMNS) | {"received_at"} == set(cols)
