"""Each Asterisk store -> real agent process -> real collector process -> PostgreSQL, once.

The same three calls (a quoted caller name, a non-ASCII unanswered call, a transferred leg)
are written to Master.csv, MariaDB, PostgreSQL and SQLite; the agent runs the asterisk
plugin on that store; the collector's `cdr` rows are compared field by field. The agent is
then restarted and one more call written: it arrives, and nothing is stored twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asterisk_testkit import (
    REFERENCE,
    create_reference_mysql_cdr,
    create_sqlite_custom,
    csv_line,
    mysql_database,
    row,
    sql_statements,
    sqlite_insert,
    sqlite_row,
)
from psycopg.rows import dict_row

from tests.fix_agent import AgentFactory, AgentProcess, key_difference, stored_keys, wait_for
from tests.fix_db import CollectorServer, create_database, drop_database, with_dbname

pytestmark = pytest.mark.timeout(300)

CALLS = [
    row("1772445600.1", clid='"Doe, John "JD"" <1000>', linkedid="1772445600.1", sequence=1,
        userfield="203.0.113.9"),
    row("1772445601.2", clid='"Zoë 李" <2000>', src="2000", disposition="NO ANSWER", answer="",
        billsec=0, duration=20, end="2026-03-02 10:00:20", sequence=2),
    row("1772445600.3", dst="300", linkedid="1772445600.1", sequence=3,
        channel="PJSIP/200-00000002", end="2026-03-02 10:01:06"),
]  # fmt: skip
LATER = row("1772449200.4", start="2026-03-02 11:00:00", answer="2026-03-02 11:00:02",
            end="2026-03-02 11:00:12", duration=12, billsec=10, sequence=4)  # fmt: skip

Writer = Callable[[list[dict[str, Any]]], None]


def utc(hour: int, minute: int, sec: int) -> datetime:
    return datetime(2026, 3, 2, hour, minute, sec, tzinfo=UTC)


@contextlib.contextmanager
def store(kind: str, tmp_path: Path, pg_admin_url: str) -> Iterator[tuple[str, Writer]]:
    """The store's [[source]] lines (without the common ones) and a function writing rows."""
    if kind == "csv":
        master = tmp_path / "cdr-csv" / "Master.csv"
        master.parent.mkdir()
        master.write_text("")

        def write_csv(rows: list[dict[str, Any]]) -> None:
            with master.open("a", encoding="utf-8") as fh:
                fh.writelines(csv_line(r) for r in rows)

        yield f'store = "csv"\npath = "{master.parent}"\n', write_csv
    elif kind == "mysql":
        with mysql_database() as db:
            create_reference_mysql_cdr(db)
            yield (
                f'store = "mysql"\nhost = "127.0.0.1"\nuser = "root"\ndatabase = "{db.name}"\n',
                db.insert,
            )
    elif kind == "pgsql":
        name = create_database(pg_admin_url)
        url = with_dbname(pg_admin_url, name)
        with psycopg.connect(url, autocommit=True) as conn:
            for stmt in sql_statements(REFERENCE / "contrib_realtime_postgresql_cdr.sql"):
                conn.execute(stmt)

        def write_pg(rows: list[dict[str, Any]]) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                for r in rows:
                    cols = list(r)
                    conn.execute(
                        "INSERT INTO cdr ({}) VALUES ({})".format(
                            ", ".join(f'"{c}"' for c in cols), ", ".join(["%s"] * len(cols))
                        ),
                        [None if c in ("answer",) and r[c] == "" else r[c] for c in cols],
                    )

        try:
            yield f'store = "pgsql"\nconninfo = "{url}"\n', write_pg
        finally:
            drop_database(pg_admin_url, name)
    else:
        db_path = tmp_path / "master.db"
        create_sqlite_custom(db_path)
        yield (
            f'store = "sqlite"\npath = "{db_path}"\n',
            lambda rows: sqlite_insert(db_path, [sqlite_row(r) for r in rows]),
        )


def run_agent(
    agent_factory: AgentFactory, tmp_path: Path, server: CollectorServer, source: str
) -> AgentProcess:
    agent = agent_factory(tmp_path / "agent", tmp_path, server.url)
    text = agent.config_path.read_text()
    agent.config_path.write_text(
        text[: text.index("[[source]]")]
        + '[[source]]\nname = "pbx"\nplugin = "asterisk"\ntimezone = "UTC"\n'
        + 'src_ip_field = "userfield"\ntrunks = ["carrier"]\ninterval = 0.05\n'
        + source
    )
    agent.enroll(server.url, server.create_token("acme", "pbx-ast"))
    agent.start()
    return agent


def rows_of(database_url: str, agent_id: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        found = cur.execute(
            "SELECT *, host(src_ip) AS src_host FROM cdr WHERE agent_id = %s", (agent_id,)
        ).fetchall()
    return {r["key"]: r for r in found}


@pytest.mark.parametrize("kind", ["csv", "mysql", "pgsql", "sqlite"])
def test_each_store_arrives_once_field_by_field(
    kind: str,
    tmp_path: Path,
    agent_factory: AgentFactory,
    collector_server: CollectorServer,
    pg_admin_url: str,
) -> None:
    with store(kind, tmp_path, pg_admin_url) as (source, write):
        write(CALLS)
        agent = run_agent(agent_factory, tmp_path, collector_server, source)
        with_seq = kind != "sqlite"  # cdr_sqlite3_custom's sample has no sequence column
        keys = {f"{r['uniqueid']}:{r['sequence']}" if with_seq else r["uniqueid"]
                for r in CALLS}  # fmt: skip
        db = collector_server.database_url

        def arrived(expected: set[str]) -> Callable[[], bool]:
            return lambda: set(stored_keys(db, agent.agent_id)) >= expected

        wait_for(arrived(keys), timeout=60, what=f"{kind} CDRs in PostgreSQL",
                 diagnostics=agent.log_tail)  # fmt: skip
        got = rows_of(db, agent.agent_id)
        first = got["1772445600.1:1" if with_seq else "1772445600.1"]
        assert (first["start_time"], first["answer_time"], first["end_time"]) == (
            utc(10, 0, 0), utc(10, 0, 5), utc(10, 1, 5),
        )  # fmt: skip
        assert (first["duration"], first["billsec"], first["disposition"]) == (65, 60, "ANSWERED")
        assert (first["caller"], first["caller_name"]) == ("1000", 'Doe, John "JD"')
        assert (first["trunk"], first["direction"]) == ("carrier", "outbound")
        assert first["src_host"] == "203.0.113.9"
        assert first["accountcode"] == "acme"
        missed = got["1772445601.2:2" if with_seq else "1772445601.2"]
        assert (missed["caller_name"], missed["answer_time"], missed["disposition"]) == (
            "Zoë 李", None, "NO_ANSWER",
        )  # fmt: skip
        if kind != "sqlite":
            assert {r["call_group"] for r in got.values()} == {"1772445600.1", "1772445601.2"}

        agent.stop()
        write([LATER])
        agent.start()
        keys.add("1772449200.4:4" if with_seq else "1772449200.4")
        wait_for(arrived(keys), timeout=60, what="the call written while the agent was down",
                 diagnostics=agent.log_tail)  # fmt: skip
        agent.stop()
        found = stored_keys(db, agent.agent_id)
        assert sorted(found) == sorted(keys), key_difference(found, keys)
