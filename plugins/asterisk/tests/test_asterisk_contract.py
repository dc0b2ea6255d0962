"""The agent's plugin contract kit (cdrstats_agent.testing) run on the asterisk plugin.

One feed per store: Master.csv (with live calls from an AMI peer running in a thread),
the reference MariaDB table (time cursor, and id cursor), the reference PostgreSQL table, and
a cdr_sqlite3_custom file.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asterisk_ami_testkit import AmiPeer, channel
from asterisk_testkit import (
    COLUMNS_21,
    REFERENCE,
    MySQLDatabase,
    create_reference_mysql_cdr,
    create_sqlite_custom,
    csv_line,
    mysql_database,
    row,
    sql_statements,
    sqlite_insert,
    sqlite_row,
)
from cdrstats_agent.testing import SourceContract
from cdrstats_asterisk.plugin import AsteriskPlugin

from tests.fix_db import create_database, drop_database, with_dbname

pytestmark = pytest.mark.timeout(300)
_serial = itertools.count(1)


def _call(n: int) -> dict[str, Any]:
    minute, second = divmod(n, 60)
    stamp = f"2026-03-02 10:{minute % 60:02d}:{second:02d}"
    return row(f"17724456{n:02d}.{n}", sequence=n, start=stamp, answer=stamp, end=stamp,
               duration=0, billsec=0)  # fmt: skip


class ThreadedPeer:
    """An AmiPeer on its own event loop in a thread (the contract runs its own loops)."""

    def __init__(self) -> None:
        self.peer = AmiPeer()
        self.peer.channels = [channel("1764000000.1", "PJSIP/1000-00000001")]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.peer.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class CsvFeed:
    def __init__(self, workdir: Path, ami_port: int) -> None:
        self.path = workdir / "Master.csv"
        self.path.write_text("")
        self.ami_port = ami_port
        self.n = 0

    def options(self) -> dict[str, Any]:
        ami = {"port": self.ami_port, "username": "cdrstats", "secret": "s3cret"}
        return {"store": "csv", "path": str(self.path), "usegmtime": True, "interval": 0.01,
                "chunk_cdrs": 4, "ami": ami}  # fmt: skip

    def append(self, n: int) -> list[str]:
        calls = [_call(self.n + i + 1) for i in range(n)]
        self.n += n
        with self.path.open("a") as fh:
            fh.writelines(csv_line(c) for c in calls)
        return [f"{c['uniqueid']}:{c['sequence']}" for c in calls]

    def append_bad(self) -> None:
        with self.path.open("a") as fh:
            fh.write(csv_line(_call(0) | {"end": "not a date"}))


class TestCsvContract(SourceContract):
    plugin = AsteriskPlugin()

    @pytest.fixture(autouse=True)
    def _ami(self) -> Iterator[None]:
        self.threaded = ThreadedPeer()
        try:
            yield
        finally:
            self.threaded.stop()

    def feed(self, workdir: Path) -> CsvFeed:
        return CsvFeed(workdir, self.threaded.peer.port)


class MySQLFeed:
    def __init__(self, db: MySQLDatabase, id_column: bool) -> None:
        self.db = db
        for table in ("cdr", "alembic_version"):
            db.execute(f"DROP TABLE IF EXISTS `{table}`")
        create_reference_mysql_cdr(db)
        if id_column:
            db.execute("ALTER TABLE cdr ADD id BIGINT AUTO_INCREMENT PRIMARY KEY")
        self.id_column = id_column
        self.n = 0

    def options(self) -> dict[str, Any]:
        extra = {"id_column": "id"} if self.id_column else {}
        return self.db.options(timezone="UTC", interval=0.01, chunk_cdrs=4, **extra)

    def append(self, n: int) -> list[str]:
        calls = [_call(self.n + i + 1) for i in range(n)]
        self.n += n
        self.db.insert(calls)
        return [f"{c['uniqueid']}:{c['sequence']}" for c in calls]

    def append_bad(self) -> None:  # an answer before the start
        self.db.insert([_call(0) | {"answer": "2026-03-02 09:00:00"}])


@pytest.fixture(scope="module")
def contract_mysql() -> Iterator[MySQLDatabase]:
    with mysql_database() as db:
        yield db


class TestMySQLTimeCursorContract(SourceContract):
    plugin = AsteriskPlugin()
    id_column = False

    @pytest.fixture(autouse=True)
    def _db(self, contract_mysql: MySQLDatabase) -> None:
        self.db = contract_mysql

    def feed(self, workdir: Path) -> MySQLFeed:
        return MySQLFeed(self.db, self.id_column)


class TestMySQLIdCursorContract(TestMySQLTimeCursorContract):
    id_column = True


class PostgresFeed:
    def __init__(self, url: str) -> None:
        self.url = url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS cdr")
            conn.execute("DROP TABLE IF EXISTS alembic_version")
            for stmt in sql_statements(REFERENCE / "contrib_realtime_postgresql_cdr.sql"):
                conn.execute(stmt)
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {"store": "pgsql", "conninfo": self.url, "timezone": "UTC", "interval": 0.01,
                "chunk_cdrs": 4}  # fmt: skip

    def _insert(self, calls: list[dict[str, Any]]) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for c in calls:
                cols = list(c)
                conn.execute(
                    "INSERT INTO cdr ({}) VALUES ({})".format(
                        ", ".join(f'"{k}"' for k in cols), ", ".join(["%s"] * len(cols))
                    ),
                    [c[k] for k in cols],
                )

    def append(self, n: int) -> list[str]:
        calls = [_call(self.n + i + 1) for i in range(n)]
        self.n += n
        self._insert(calls)
        return [f"{c['uniqueid']}:{c['sequence']}" for c in calls]

    def append_bad(self) -> None:  # an answer before the start
        self._insert([_call(0) | {"answer": "2026-03-02 09:00:00"}])


@pytest.fixture(scope="module")
def contract_pg(pg_admin_url: str) -> Iterator[str]:
    name = create_database(pg_admin_url)
    try:
        yield with_dbname(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


class TestPostgresContract(SourceContract):
    plugin = AsteriskPlugin()

    @pytest.fixture(autouse=True)
    def _db(self, contract_pg: str) -> None:
        self.url = contract_pg

    def feed(self, workdir: Path) -> PostgresFeed:
        return PostgresFeed(self.url)


class SQLiteFeed:
    def __init__(self, workdir: Path) -> None:
        self.path = workdir / f"master-{next(_serial)}.db"
        create_sqlite_custom(self.path)
        self.n = 0

    def options(self) -> dict[str, Any]:
        return {"store": "sqlite", "path": str(self.path), "timezone": "UTC", "interval": 0.01,
                "chunk_cdrs": 4}  # fmt: skip

    def append(self, n: int) -> list[str]:
        calls = [_call(self.n + i + 1) for i in range(n)]
        self.n += n
        sqlite_insert(self.path, [sqlite_row(c) for c in calls])
        return [c["uniqueid"] for c in calls]

    def append_bad(self) -> None:
        sqlite_insert(self.path, [sqlite_row(_call(0) | {"start": "yesterday"})])


class TestSQLiteContract(SourceContract):
    plugin = AsteriskPlugin()

    def feed(self, workdir: Path) -> SQLiteFeed:
        return SQLiteFeed(workdir)


def test_columns_constant_matches_the_preset() -> None:
    from cdrstats_csv.presets import ASTERISK_21

    assert COLUMNS_21 == ASTERISK_21
