"""`make demo` (cdrstats_collector.demo) runs the whole product: collector, agents, traffic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.fix_db import free_port


def test_demo_runs_and_stops_by_itself(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CDRSTATS_DATABASE_URL": database_url}
    env.pop("CDRSTATS_CONFIG", None)
    args = [sys.executable, "-m", "cdrstats_collector.demo", "--var", str(tmp_path)]
    args += ["--port", str(free_port()), "--backfill-days", "1", "--rate", "120"]
    done = subprocess.run(
        [*args, "--duration", "12"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "CDR-Stats demo is running" in done.stdout
    assert "login: admin / " in done.stdout
    with psycopg.connect(database_url) as conn:
        cdrs = conn.execute("SELECT count(*) FROM cdr").fetchone()
        switches = conn.execute("SELECT count(*) FROM agent WHERE revoked_at IS NULL").fetchone()
        rules = conn.execute("SELECT name FROM rule ORDER BY id").fetchall()
    assert cdrs is not None and cdrs[0] > 0, done.stdout[-2000:]
    assert switches == (3,)
    assert len(rules) == 4
    # A second run continues with the same data: no rule added twice, nothing loaded twice.
    again = subprocess.run(
        [*args, "--duration", "3"], env=env, capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM rule").fetchone() == (4,)
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM cdr GROUP BY switch_id, key HAVING count(*) > 1) d"
        ).fetchone()
    assert doubled == (0,)
